"""The baseline of bench/throughput.py: a bare uvicorn + FastAPI app doing the same work.

GET /notice verifies the bearer JWT (the platform's public keys from its JWKS, the
same checks as the edge: kid, alg, aud, iss, exp, scope) and reads one Redis key.
Run as ``python bench/bare_app.py PORT`` with NEXUS_REDIS_URL and NEXUS_BENCH_JWKS
(the JWKS document) in the environment.
"""

import json
import os
import sys

import jwt
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Header, HTTPException

KEYS = {k["kid"]: jwt.PyJWK(k) for k in json.loads(os.environ["NEXUS_BENCH_JWKS"])["keys"]}
from nexus_ray.config import get_settings  # noqa: E402  (issuer and audience as the platform has them)

ISSUER = get_settings().jwt_issuer
AUDIENCE = get_settings().jwt_audience
r = aioredis.Redis.from_url(os.environ["NEXUS_REDIS_URL"])
app = FastAPI()


@app.get("/notice")
async def notice(authorization: str = Header("")):
    token = authorization.removeprefix("Bearer ")
    try:
        key = KEYS[jwt.get_unverified_header(token)["kid"]]
        claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=AUDIENCE, issuer=ISSUER)
    except (jwt.PyJWTError, KeyError):
        raise HTTPException(401) from None
    if "platform:gateway:read" not in claims["scope"].split() and "*" not in claims["scope"].split():
        raise HTTPException(403)
    raw = await r.get("nexus:platform:notice")
    return {"notice": raw.decode() if raw else None}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
