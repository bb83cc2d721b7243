"""Token verification against a key ring: only a valid token from a trusted key, by that key's own algorithm.

No store here: the ring is filled from keys generated in the test (the integration tests in
tests/integration/test_tokens_jwks.py read them from key-service in PostgreSQL).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from nexus_ray.config import get_settings
from nexus_ray.deployments.specialized.keys import crypto
from nexus_ray.edge import tokens
from nexus_ray.edge.tokens import KeyRing
from nexus_ray.exceptions import Unauthorized

KEYS = {alg: crypto.generate(alg) for alg in crypto.ALGORITHMS}


def _row(key: crypto.GeneratedKey, retires_at: float | None = None) -> dict:
    return {"kid": key.kid, "alg": key.alg, "public_jwk": key.jwk, "retires_at": retires_at}


def _ring(*rows) -> KeyRing:
    async def load():
        return list(rows)

    ring = KeyRing(load)
    ring.replace(rows or [_row(k) for k in KEYS.values()])
    return ring


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _claims(**over):
    s = get_settings()
    now = int(time.time())
    return {"iss": s.jwt_issuer, "aud": s.jwt_audience, "sub": "u1", "scope": "a:b", "iat": now, "exp": now + 60,
            **over}


def _sign(key: crypto.GeneratedKey, claims=None, *, alg=None, kid=None) -> str:
    return jwt.encode(claims or _claims(), key.private_key, algorithm=alg or key.alg, headers={"kid": kid or key.kid})


@pytest.mark.parametrize("alg", crypto.ALGORITHMS)
def test_each_algorithm_round_trips(alg):
    ring = _ring()
    claims = ring.check(_sign(KEYS[alg]))
    assert claims["sub"] == "u1" and claims["scope"] == "a:b"


def test_expired_refused():
    with pytest.raises(Unauthorized, match="expired"):
        _ring().check(_sign(KEYS["ES256"], _claims(exp=int(time.time()) - 120)))


def test_alg_none_refused():
    t = _b64({"alg": "none", "typ": "JWT", "kid": KEYS["ES256"].kid}) + "." + _b64(_claims()) + "."
    with pytest.raises(Unauthorized, match="algorithm"):
        _ring().check(t)


@pytest.mark.parametrize("alg", ["HS256", "HS512"])
def test_hmac_with_public_key_as_secret_refused(alg):
    key = KEYS["RS256"]
    secret = json.dumps(key.jwk).encode()
    header = _b64({"alg": alg, "typ": "JWT", "kid": key.kid})
    body = _b64(_claims())
    digest = hashlib.sha256 if alg == "HS256" else hashlib.sha512
    sig = base64.urlsafe_b64encode(hmac.new(secret, f"{header}.{body}".encode(), digest).digest()).rstrip(b"=")
    with pytest.raises(Unauthorized, match="algorithm"):
        _ring().check(f"{header}.{body}.{sig.decode()}")


def test_alg_and_key_mismatch_refused():
    # An RS256 token that names the ES256 key: refused before any signature check.
    t = _sign(KEYS["RS256"], kid=KEYS["ES256"].kid)
    with pytest.raises(Unauthorized, match="does not match"):
        _ring().check(t)


def test_other_key_under_a_known_kid_refused():
    other = crypto.generate("ES256")
    with pytest.raises(Unauthorized, match="invalid"):
        _ring().check(_sign(other, kid=KEYS["ES256"].kid))


def test_unknown_kid_refused():
    with pytest.raises(Unauthorized, match="unknown key"):
        _ring().check(_sign(crypto.generate("ES256")))


@pytest.mark.parametrize("kid", [None, "", "../../etc", "x" * 200, 7])
def test_unusable_kid_refused(kid):
    header = {"alg": "ES256", "typ": "JWT"} | ({"kid": kid} if kid is not None else {})
    body = _b64(_claims())
    with pytest.raises(Unauthorized):
        _ring().check(f"{_b64(header)}.{body}.AAAA")


def test_wrong_audience_and_issuer_refused():
    for over, reason in (({"aud": "other-api"}, "audience"), ({"iss": "https://evil"}, "issuer")):
        with pytest.raises(Unauthorized, match=reason):
            _ring().check(_sign(KEYS["ES256"], _claims(**over)))


@pytest.mark.parametrize("missing", ["exp", "sub", "aud", "iss", "iat"])
def test_required_claims(missing):
    claims = _claims()
    del claims[missing]
    with pytest.raises(Unauthorized):
        _ring().check(_sign(KEYS["EdDSA"], claims))


def test_tampered_payload_refused():
    head, _body, sig = _sign(KEYS["ES256"]).split(".")
    with pytest.raises(Unauthorized, match="invalid"):
        _ring().check(f"{head}.{_b64(_claims(sub='mallory', scope='*'))}.{sig}")


def test_garbage_refused():
    for garbage in ("not-a-token", "abc.def", "a.b.c", ""):
        with pytest.raises(Unauthorized, match="malformed"):
            _ring().check(garbage)


def test_retired_key_refused_and_retiring_key_accepted():
    key = KEYS["ES256"]
    token = _sign(key)
    assert _ring(_row(key, retires_at=time.time() + 60)).check(token)["sub"] == "u1"
    with pytest.raises(Unauthorized, match="retired"):
        _ring(_row(key, retires_at=time.time() - 1)).check(token)


def test_replace_keeps_parsed_keys_and_drops_removed_ones():
    es, rs = KEYS["ES256"], KEYS["RS256"]
    ring = _ring(_row(es), _row(rs))
    parsed = ring._keys[es.kid].jwk
    ring.replace([_row(es, retires_at=time.time() + 5)])
    assert ring._keys[es.kid].jwk is parsed  # no re-parse per refresh
    assert ring.kids == {es.kid}


class GatedLoad:
    """A key loader whose reads can be held open: ``rows`` as they are when a read ends."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.started: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> list[dict]:
        self.started.append(time.monotonic())
        await self.gate.wait()
        return list(self.rows)


async def test_unknown_kid_refused_at_once_then_learnt_in_the_background(until):
    es, fresh = KEYS["ES256"], crypto.generate("EdDSA")
    load = GatedLoad([_row(es)])
    ring = KeyRing(load)
    await ring.refresh()
    load.rows.append(_row(fresh))  # made current elsewhere after this replica read its keys
    load.gate.clear()  # the read it causes cannot finish: the request must not be waiting on it
    token = _sign(fresh)
    with pytest.raises(Unauthorized, match="unknown key"):
        await ring.verify(token)
    await until(lambda: len(load.started) == 2)  # ... but it started one
    load.gate.set()
    await until(lambda: fresh.kid in ring.kids)
    claims = await ring.verify(token)  # the same token, sent again, gets through
    assert claims["sub"] == "u1" and ring.reads == 2


async def test_a_replica_that_never_read_its_keys_waits_for_the_first_read():
    # A fresh replica knows no key id yet: its first token is not "unknown", it waits for the read.
    load = GatedLoad([_row(KEYS["ES256"])])
    ring = KeyRing(load)
    results = await asyncio.gather(*(ring.verify(_sign(KEYS["ES256"])) for _ in range(5)))
    assert all(r["sub"] == "u1" for r in results) and ring.reads == 1
    with pytest.raises(Unauthorized, match="unknown key"):  # once read, made-up kids are refused as before
        await ring.verify(_sign(KEYS["ES256"], kid="made-up"))


async def test_made_up_kids_are_refused_at_once_and_share_one_read_per_interval(monkeypatch, until):
    monkeypatch.setattr(get_settings(), "jwks_refresh_min_s", 0.3)
    load = GatedLoad([_row(KEYS["ES256"])])
    ring = KeyRing(load)
    await ring.refresh()
    load.gate.clear()  # every later read hangs: any request waiting on one would never return
    bogus = [_sign(KEYS["ES256"], kid=f"made-up-{i}") for i in range(50)]
    results = await asyncio.gather(*(ring.verify(t) for t in bogus), return_exceptions=True)
    assert all(isinstance(r, Unauthorized) and "unknown key" in r.detail for r in results)
    await until(lambda: len(load.started) == 2)  # one read for all 50, after its turn came
    assert load.started[1] - load.started[0] >= 0.29
    more = await asyncio.gather(*(ring.verify(t) for t in bogus), return_exceptions=True)
    assert all(isinstance(r, Unauthorized) for r in more)
    assert len(load.started) == 2  # still that one read, under way
    load.gate.set()
    await until(lambda: ring._background.done())
    # Verification of known kids never reads.
    for _ in range(20):
        await ring.verify(_sign(KEYS["ES256"]))
    assert len(load.started) == 2


async def test_failed_read_keeps_the_keys():
    es = KEYS["ES256"]
    state = {"fail": False}

    async def load():
        if state["fail"]:
            raise ConnectionError("postgres away")
        return [_row(es)]

    ring = KeyRing(load)
    assert await ring.refresh()
    state["fail"] = True
    assert not await ring.refresh()
    assert ring.check(_sign(es))["sub"] == "u1"


async def test_stale_ring_refreshes_in_the_background(monkeypatch, until):
    s = get_settings()
    monkeypatch.setattr(s, "jwks_cache_s", 10.0)
    monkeypatch.setattr(s, "jwks_refresh_min_s", 0.0)
    now = [1000.0]
    es = KEYS["ES256"]
    rows = [_row(es)]

    async def load():
        return list(rows)

    ring = KeyRing(load, clock=lambda: now[0])
    await ring.refresh()
    rows[0] = _row(es, retires_at=time.time() - 1)  # rotated and retired elsewhere
    token = _sign(es)
    assert (await ring.verify(token))["sub"] == "u1"  # still fresh: no read
    assert ring.reads == 1
    now[0] += 11
    await ring.verify(token)  # served from the ring; a read starts in the background
    await until(lambda: ring.reads == 2, within_s=5)
    with pytest.raises(Unauthorized, match="retired"):
        await ring.verify(token)


def test_access_claims_shape():
    c = tokens.access_claims("alice", ["a:b", "c:d"], ttl_s=60, kind="service", extra={"client_id": "x"})
    s = get_settings()
    assert c["sub"] == "alice" and c["scope"] == "a:b c:d" and c["kind"] == "service"
    assert c["iss"] == s.jwt_issuer and c["aud"] == s.jwt_audience and c["exp"] - c["iat"] == 60
    assert c["client_id"] == "x" and len(c["jti"]) == 32


def _counting_ring(rows: list[dict]):
    """A ring that reads ``rows`` (changeable by the test) and counts full signature checks."""

    async def load():
        return list(rows)

    ring = KeyRing(load)
    ring.replace(rows)
    return ring


def test_verified_token_is_remembered_until_its_key_goes(monkeypatch):
    key = KEYS["ES256"]
    rows = [_row(key)]
    ring = _counting_ring(rows)
    token = _sign(key)
    checks = {"n": 0}
    real = tokens._decode

    def counting(*a, **k):
        checks["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(tokens, "_decode", counting)
    first = asyncio.run(ring.verify(token))
    again = asyncio.run(ring.verify(token))
    assert again == first and checks["n"] == 1  # the second call checked no signature
    again["sub"] = "mallory"  # callers get a copy: the remembered claims cannot be changed
    assert asyncio.run(ring.verify(token))["sub"] == "u1"
    rows[:] = [_row(KEYS["RS256"])]  # the key is revoked: it leaves key-service's JWKS
    ring.replace(rows)
    with pytest.raises(Unauthorized, match="unknown key"):
        asyncio.run(ring.verify(token))


def test_remembered_token_rechecked_after_its_expiry_and_refused_after_retirement(monkeypatch):
    key = KEYS["ES256"]
    rows = [_row(key)]
    ring = _counting_ring(rows)
    token = _sign(key)
    asyncio.run(ring.verify(token))
    kid, expires, claims = ring._verified[token]
    assert expires == claims["exp"] + get_settings().jwt_leeway_s
    checks = {"n": 0}
    real = tokens._decode

    def counting(*a, **k):
        checks["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(tokens, "_decode", counting)
    ring._verified[token] = (kid, time.time() - 1, claims)  # its remembered lifetime is over
    asyncio.run(ring.verify(token))
    assert checks["n"] == 1  # checked in full again, not served from memory
    rows[:] = [_row(key, retires_at=time.time() - 1)]
    ring.replace(rows)
    with pytest.raises(Unauthorized, match="retired"):
        asyncio.run(ring.verify(token))
