"""The baseline of bench/throughput.py: a bare uvicorn + FastAPI app doing the same work.

GET /notice verifies the bearer JWT (ES256, the platform's public key, the same
checks as the edge: alg, aud, iss, exp) and reads one Redis key. Run as
``python bench/bare_app.py PORT`` with NEXUS_REDIS_URL and NEXUS_BENCH_PUBLIC_KEY
(PEM) in the environment.
"""

import os
import sys

import jwt
import redis.asyncio as aioredis
import uvicorn
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI, Header, HTTPException

PUBLIC_KEY = load_pem_public_key(os.environ["NEXUS_BENCH_PUBLIC_KEY"].encode())
ISSUER = os.environ.get("NEXUS_JWT_ISSUER", "https://nexus.local")
AUDIENCE = os.environ.get("NEXUS_JWT_AUDIENCE", "nexus-api")
r = aioredis.Redis.from_url(os.environ["NEXUS_REDIS_URL"])
app = FastAPI()


@app.get("/notice")
async def notice(authorization: str = Header("")):
    try:
        claims = jwt.decode(authorization.removeprefix("Bearer "), PUBLIC_KEY, algorithms=["ES256"],
                            audience=AUDIENCE, issuer=ISSUER)
    except jwt.PyJWTError:
        raise HTTPException(401) from None
    if "platform:gateway:read" not in claims["scope"].split() and "*" not in claims["scope"].split():
        raise HTTPException(403)
    raw = await r.get("nexus:platform:notice")
    return {"notice": raw.decode() if raw else None}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
