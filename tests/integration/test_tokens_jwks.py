"""The edge verifies platform tokens against key-service's live JWKS, on the real stores.

Rotation keeps tokens of the previous key valid until that key retires (rotation time +
token_max_ttl_s) and no longer; a replica learns of new keys on an unknown kid and of
rotations within jwks_cache_s; made-up kids cannot make it read PostgreSQL per request, and are
refused without waiting for a read (so the first tokens of a new key may be refused by a replica
that has not read it yet; the read they start lets them in).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time

import jwt
import pytest

from nexus_ray.config import get_settings
from nexus_ray.deployments.specialized import keys
from nexus_ray.deployments.specialized.keys import crypto
from nexus_ray.deployments.specialized.keys import service as key_service
from nexus_ray.edge import tokens
from nexus_ray.edge.tokens import KeyRing
from nexus_ray.exceptions import Unauthorized
from nexus_ray.stores import postgres

pytestmark = pytest.mark.integration

GUARDED = "/specialized/v1/keys/signing-keys"  # any guarded route will do
SCOPE = "specialized:keys:admin"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def accepted(client, token: str, until) -> None:
    """Wait until the edge accepts ``token``; before that it may only be refused as signed by an unknown key.

    That is what a replica answers, at once, to the first tokens of a key it has not read yet (a key
    created or rotated since its last read); the read they start lets the same token in.
    """

    async def ok() -> bool:
        r = await client.get(GUARDED, headers=_auth(token))
        assert r.status_code == 200 or (r.status_code == 401 and "unknown key" in r.json()["detail"]), r.text
        return r.status_code == 200

    await until(ok)


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.fixture
def short_lived(monkeypatch):
    """Token lifetimes of seconds, and replicas that re-read keys often, for this test."""
    s = get_settings()
    monkeypatch.setattr(s, "token_max_ttl_s", 3)
    monkeypatch.setattr(s, "jwks_cache_s", 0.5)
    monkeypatch.setattr(s, "jwks_refresh_min_s", 0.1)
    monkeypatch.setattr(s, "jwt_leeway_s", 0)
    return s


@pytest.mark.parametrize("alg", crypto.ALGORITHMS)
async def test_edge_accepts_tokens_signed_by_key_service(client, migrated, alg, until):
    token = await keys.sign(tokens.access_claims("svc-a", [SCOPE], ttl_s=60), alg=alg, actor="test")
    assert jwt.get_unverified_header(token)["alg"] == alg
    await accepted(client, token, until)  # the first use of an algorithm creates its key


async def test_bearer_fixture_and_issue_use_the_live_key(client, bearer):
    r = await client.get(GUARDED, headers=bearer(SCOPE))
    assert r.status_code == 200
    kid = jwt.get_unverified_header(bearer(SCOPE)["Authorization"][7:])["kid"]
    assert kid in [k["kid"] for k in (await keys.jwks())["keys"]]


async def test_rotation_keeps_old_tokens_until_expiry_only(client, migrated, short_lived, until):
    old = await keys.current_signer("EdDSA")
    old_token = await keys.sign(tokens.access_claims("holder", [SCOPE], ttl_s=3), alg="EdDSA")
    # What sign() never issues: a token of the old key that outlives the overlap. It must stop
    # verifying when the key retires, although its own exp is far off.
    long_lived = jwt.encode(tokens.access_claims("forger", [SCOPE], ttl_s=600), old.private_key,
                            algorithm="EdDSA", headers={"kid": old.kid})
    await accepted(client, long_lived, until)

    rotated = await keys.rotate("EdDSA", actor="test-rotation")
    assert rotated["previous"]["kid"] == old.kid
    new_token = await keys.sign(tokens.access_claims("holder", [SCOPE], ttl_s=3), alg="EdDSA")
    assert jwt.get_unverified_header(new_token)["kid"] == rotated["current"]["kid"]

    # Overlap: both keys are published and both tokens verify (the new one once this replica read
    # its key: until then it is refused at once, as an unknown key).
    kids = [k["kid"] for k in (await client.get("/specialized/v1/keys/jwks")).json()["keys"]]
    assert old.kid in kids and rotated["current"]["kid"] in kids
    assert (await client.get(GUARDED, headers=_auth(old_token))).status_code == 200
    await accepted(client, new_token, until)

    # After rotated_at + token_max_ttl_s the old key leaves the JWKS ...
    async def old_key_gone() -> bool:
        jwks = (await client.get("/specialized/v1/keys/jwks")).json()
        return old.kid not in [k["kid"] for k in jwks["keys"]]

    await until(old_key_gone)
    # ... and nothing it signed verifies any more: the old token (expired by now too) and the
    # long-lived one (not expired, but its key retired).
    r = await client.get(GUARDED, headers=_auth(long_lived))
    assert r.status_code == 401 and "retired" in r.json()["detail"]
    r = await client.get(GUARDED, headers=_auth(old_token))
    assert r.status_code == 401
    fresh = await keys.sign(tokens.access_claims("holder", [SCOPE], ttl_s=3), alg="EdDSA")
    await accepted(client, fresh, until)


async def test_another_replica_learns_of_rotation(migrated, short_lived, until):
    """A second ring (another replica) that read its keys before a rotation done elsewhere."""
    replica = KeyRing(tokens.load_platform_keys)
    assert await replica.refresh()
    old = await keys.current_signer("ES256")
    held_before = jwt.encode(tokens.access_claims("x", [], ttl_s=600), old.private_key, algorithm="ES256",
                             headers={"kid": old.kid})
    rotated = await keys.rotate("ES256", actor="elsewhere")
    token = tokens.issue("after-rotation", [SCOPE], ttl_s=3)  # the in-process signer follows the rotation
    assert jwt.get_unverified_header(token)["kid"] == rotated["current"]["kid"]
    # Unknown kid: refused at once, and the replica reads the keys again in the background; then the
    # same token is accepted.
    reads = replica.reads
    with pytest.raises(Unauthorized, match="unknown key"):
        await replica.verify(token)
    await until(lambda: rotated["current"]["kid"] in replica.kids)
    assert (await replica.verify(token))["sub"] == "after-rotation"
    assert replica.reads > reads
    # Within jwks_cache_s it also learns when the old key retires, and refuses its tokens after.
    async def refused() -> bool:
        try:
            await replica.verify(held_before)
        except Exception as exc:
            return "retired" in str(exc) or "unknown key" in str(exc)
        return False

    await until(refused)


async def test_sign_notices_a_rotation_done_in_another_replica(migrated):
    stale = await keys.current_signer("RS256")
    rotated = await keys.rotate("RS256", actor="other-replica")
    key_service._signers[("platform", "RS256")] = stale  # as a replica that loaded before the rotation
    token = await keys.sign(tokens.access_claims("u", [], ttl_s=60), alg="RS256")
    assert jwt.get_unverified_header(token)["kid"] == rotated["current"]["kid"]
    assert (await keys.current_signer("RS256")).kid == rotated["current"]["kid"]


async def test_synchronous_issue_follows_a_rotation_done_elsewhere(client, migrated, until):
    stale = await keys.current_signer("ES256")
    rotated = await keys.rotate("ES256", actor="other-replica")
    key_service._signers[("platform", "ES256")] = stale
    token = tokens.issue("u", [SCOPE], ttl_s=60)  # still the stale key: verifies during the overlap
    assert jwt.get_unverified_header(token)["kid"] == stale.kid
    await accepted(client, token, until)
    assert (await tokens.verify(token))["sub"] == "u"
    await keys.flush_audit()  # its audit write reports the current key: the signer reloads
    await until(lambda: key_service._signers[("platform", "ES256")].kid == rotated["current"]["kid"])
    assert jwt.get_unverified_header(tokens.issue("u", [SCOPE]))["kid"] == rotated["current"]["kid"]


async def test_refused_tokens(client, migrated, until):
    s = get_settings()
    signer = await keys.current_signer("ES256")
    rs = await keys.current_signer("RS256")
    now = int(time.time())
    base = {"iss": s.jwt_issuer, "aud": s.jwt_audience, "sub": "u1", "scope": SCOPE, "iat": now, "exp": now + 60}

    def es(claims, kid=signer.kid, key=signer.private_key, alg="ES256"):
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    good = es(base)
    head, body, sig = good.split(".")
    public_pem = jwt.algorithms.RSAAlgorithm.to_jwk(rs.private_key.public_key()).encode()
    hs_head = _b64({"alg": "HS256", "typ": "JWT", "kid": rs.kid})
    hs_sig = base64.urlsafe_b64encode(
        hmac.new(public_pem, f"{hs_head}.{body}".encode(), hashlib.sha256).digest()
    ).rstrip(b"=").decode()
    refused = {
        "tampered payload": f"{head}.{_b64({**base, 'sub': 'root', 'scope': '*'})}.{sig}",
        "tampered signature": f"{head}.{body}.{sig[:-6]}AAAAAA",
        "expired": es({**base, "iat": now - 900, "exp": now - 600}),
        "wrong audience": es({**base, "aud": "someone-else"}),
        "wrong issuer": es({**base, "iss": "https://evil.example"}),
        "alg none": _b64({"alg": "none", "kid": signer.kid}) + "." + body + ".",
        "wrong key, known kid": es(base, key=crypto.generate("ES256").private_key),
        "unknown kid": es(base, kid="not-a-platform-key"),
        "alg/key mismatch": es(base, kid=signer.kid, key=rs.private_key, alg="RS256"),
        "hmac with public key": f"{hs_head}.{body}.{hs_sig}",
        "no kid": jwt.encode(base, signer.private_key, algorithm="ES256"),
    }
    await accepted(client, good, until)
    for name, token in refused.items():
        r = await client.get(GUARDED, headers=_auth(token))
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "Bearer"


async def test_verification_reads_no_store_per_request(client, bearer, migrated):
    headers = bearer(SCOPE)
    await client.get(GUARDED, headers=headers)
    reads = tokens.ring().reads
    for _ in range(30):
        assert (await client.get(GUARDED, headers=headers)).status_code == 200
    assert tokens.ring().reads == reads


async def test_made_up_kids_cannot_hammer_the_database(client, migrated, monkeypatch):
    monkeypatch.setattr(get_settings(), "jwks_refresh_min_s", 0.5)
    signer = await keys.current_signer("ES256")
    await tokens.ring().refresh()
    reads = tokens.ring().reads
    claims = tokens.access_claims("attacker", [SCOPE], ttl_s=60)
    forged = [jwt.encode(claims, signer.private_key, algorithm="ES256", headers={"kid": f"bogus{i}"})
              for i in range(40)]
    started = time.monotonic()
    responses = await asyncio.gather(*(client.get(GUARDED, headers=_auth(t)) for t in forged))
    assert all(r.status_code == 401 for r in responses)
    elapsed = time.monotonic() - started
    # One shared read per interval, however many made-up kids arrive in it.
    assert tokens.ring().reads - reads <= 1 + int(elapsed / 0.5) + 1


async def test_pv_access_keys_are_not_platform_tokens(client, bearer, migrated):
    from nexus_ray.deployments.specialized import pv_keys

    await pv_keys.register_asset(asset_id="edge-probe-asset", owner="u-edge")
    issued = await pv_keys.issue(asset_id="edge-probe-asset", holder="u-edge", permissions=["enter"])
    r = await client.get(GUARDED, headers=_auth(issued["access_key"]))
    assert r.status_code == 401


async def _nexus(*args: str) -> tuple[int, str, str]:
    s = get_settings()
    env = {**os.environ, "NEXUS_POSTGRES_URL": s.postgres_url, "NEXUS_REDIS_URL": s.redis_url,
           "NEXUS_MONGO_URL": s.mongo_url, "NEXUS_KAFKA_BOOTSTRAP": s.kafka_bootstrap}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus_ray.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_token_mints_a_verifiable_audited_token(client, migrated):
    code, out, err = await _nexus("token", "operator-7", "-s", SCOPE, "--ttl", "120")
    assert code == 0, err[-2000:]
    token = out.strip().splitlines()[-1]
    r = await client.get(GUARDED, headers=_auth(token))
    assert r.status_code == 200, r.text
    claims = await tokens.verify(token)
    assert claims["sub"] == "operator-7" and claims["kind"] == "operator"
    pg = await postgres.pool()
    assert await pg.fetchval(
        "SELECT count(*) FROM key_audit WHERE action = 'sign' AND actor = 'cli' AND detail->>'jti' = $1",
        claims["jti"],
    ) == 1
    code, out, _err = await _nexus("token", "x", "--ttl", str(10 * 86400))
    assert code == 2 and "exp" in out
