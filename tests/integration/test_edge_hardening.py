"""Unauthenticated floods at the edge, on the real stores: refused credentials count against the client address.

Every kind of refused credential counts against a budget of its own per address
(rate_limit_auth_failures_per_address); past it the address gets 429 with Retry-After, and its
credentials are refused without being checked, valid ones included, until the window ends. The
count lives in Redis (shared by the replicas); each replica also remembers the addresses over it.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import jwt
import pytest

from nexus_ray.config import get_settings
from nexus_ray.deployments.specialized import keys
from nexus_ray.deployments.specialized.keys import crypto
from nexus_ray.edge import ratelimit, revocations, tokens
from nexus_ray.exceptions import RateLimited, Unauthorized
from nexus_ray.stores.cache import redis_client

pytestmark = pytest.mark.integration

GUARDED = "/specialized/v1/keys/signing-keys"
SCOPE = "specialized:keys:admin"
BUDGET = 5


class _FrozenWindow:
    """The rate limiter's clock held in the middle of one window, so a test never straddles two."""

    def __init__(self) -> None:
        self.now = (int(time.time()) // ratelimit.WINDOW_S) * ratelimit.WINDOW_S + ratelimit.WINDOW_S / 2

    monotonic = staticmethod(time.monotonic)

    def time(self) -> float:
        return self.now


@pytest.fixture
def from_address(monkeypatch):
    """Headers that make a request come from a fresh client address, with a budget of BUDGET failures.

    The in-process client's peer (203.0.113.7) is made a trusted proxy for the test, so that each
    test names client addresses of its own through X-Forwarded-For and spends no one else's budget.
    """
    s = get_settings()
    monkeypatch.setattr(s, "trusted_proxies", ["203.0.113.7"])
    monkeypatch.setattr(s, "rate_limit_auth_failures_per_address", BUDGET)
    monkeypatch.setattr(ratelimit, "time", _FrozenWindow())

    def make() -> dict[str, str]:
        return {"X-Forwarded-For": f"2001:db8:{secrets.token_hex(2)}::{secrets.token_hex(2)}"}

    return make


async def _refused_credentials() -> list[dict[str, str]]:
    """One of each kind of credential the edge refuses."""
    s = get_settings()
    signer = await keys.current_signer("ES256")
    now = int(time.time())
    claims = {"iss": s.jwt_issuer, "aud": s.jwt_audience, "sub": "mallory", "scope": SCOPE, "iat": now,
              "exp": now + 60}

    def signed(key, kid, **over) -> dict[str, str]:
        token = jwt.encode({**claims, **over}, key, algorithm="ES256", headers={"kid": kid})
        return {"Authorization": f"Bearer {token}"}

    return [
        signed(crypto.generate("ES256").private_key, signer.kid),  # bad signature
        signed(signer.private_key, signer.kid, iat=now - 900, exp=now - 600),  # expired
        signed(signer.private_key, f"made-up-{secrets.token_hex(4)}"),  # unknown kid
        {"X-API-Key": f"nxk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"},  # unknown API key
        {"Authorization": f"Bearer nxs_{secrets.token_urlsafe(32)}"},  # unknown legacy session token
    ]


async def test_refused_credentials_count_against_the_address(client, bearer, from_address):
    me, other = from_address(), from_address()
    refused = await _refused_credentials()
    assert len(refused) == BUDGET
    for credential in refused:
        r = await client.get(GUARDED, headers={**me, **credential})
        assert r.status_code == 401, (credential, r.text)
    r = await client.get(GUARDED, headers={**me, **refused[0]})
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert 0 < int(r.headers["retry-after"]) <= ratelimit.WINDOW_S + 1
    assert r.json()["limit_scope"] == "address (failed authentications)"
    # From now on the address's credentials are not checked at all, valid ones included ...
    assert (await client.get(GUARDED, headers={**me, **bearer(SCOPE)})).status_code == 429
    # ... while another address, and the same credential from it, are untouched.
    assert (await client.get(GUARDED, headers={**other, **bearer(SCOPE)})).status_code == 200
    assert (await client.get(GUARDED, headers={**other, **refused[0]})).status_code == 401


async def test_requests_without_credentials_are_not_counted(client, bearer, from_address):
    me = from_address()
    for _ in range(BUDGET * 2):
        assert (await client.get(GUARDED, headers=me)).status_code == 401
    assert (await client.get(GUARDED, headers={**me, **bearer(SCOPE)})).status_code == 200


async def test_the_count_is_shared_by_replicas(client, bearer, from_address):
    me = from_address()
    bad = (await _refused_credentials())[0]
    for _ in range(BUDGET + 1):
        await client.get(GUARDED, headers={**me, **bad})
    ratelimit._failing.clear()  # another replica: it has not seen this address go over
    assert (await client.get(GUARDED, headers={**me, **bearer(SCOPE)})).status_code == 200
    assert (await client.get(GUARDED, headers={**me, **bad})).status_code == 429  # Redis says over
    assert (await client.get(GUARDED, headers={**me, **bearer(SCOPE)})).status_code == 429  # and now it knows


async def test_a_flood_of_made_up_kids_is_cut_to_the_budget(client, migrated, from_address):
    me = from_address()
    signer = await keys.current_signer("ES256")
    await tokens.ring().refresh()
    claims = tokens.access_claims("attacker", [SCOPE], ttl_s=60)
    statuses = []
    for i in range(BUDGET * 4):
        forged = jwt.encode(claims, signer.private_key, algorithm="ES256", headers={"kid": f"bogus{i}"})
        statuses.append((await client.get(GUARDED, headers={**me, "Authorization": f"Bearer {forged}"})).status_code)
    assert statuses == [401] * BUDGET + [429] * (BUDGET * 3)


async def test_a_nul_character_in_a_stored_text_is_a_422_and_nothing_is_written(client, bearer):
    """PostgreSQL keeps no NUL in text or JSON: the fuzzer's NUL in a notification preference used to be a 500."""
    from nexus_ray.stores import postgres

    headers = bearer("platform:notifications:*", subject="nul-tester")
    user = f"nul-{secrets.token_hex(4)}"
    for body in ({"email": "a\u0000@example.com"}, {"channels": {"orders\u0000": ["email"]}},
                 {"push": [{"endpoint": "https://push.example", "keys": {"auth": "a\u0000"}}]}):
        r = await client.put(f"/platform/v1/notifications/users/{user}/preferences", json=body, headers=headers)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert r.json()["errors"][0]["type"] == "unstorable_character"
    pg = await postgres.pool()
    assert await pg.fetchval("SELECT count(*) FROM notif_contacts WHERE user_id = $1", user) == 0
    assert await pg.fetchval("SELECT count(*) FROM notif_preferences WHERE user_id = $1", user) == 0


async def test_admissions_asked_at_one_moment_share_a_redis_call_and_each_is_counted_and_answered(
        stores, monkeypatch):
    """A replica's concurrent requests are admitted in one script run: each is still counted against its own
    limits, answered on its own (20 of 30 pass a limit of 20; the 10 over it get their seconds to wait), and a
    revoked token among them is refused before it is counted."""
    clock = _FrozenWindow()
    monkeypatch.setattr(ratelimit, "time", clock)
    sizes: list[int] = []
    write = ratelimit._admissions.write

    async def recorded(key, batch):
        sizes.append(len(batch))
        return await write(key, batch)

    monkeypatch.setattr(ratelimit._admissions, "write", recorded)
    who, jti = f"batch-{secrets.token_hex(4)}", secrets.token_hex(8)
    await revocations.revoke_token(jti)
    limits = [("principal", who, 20)]
    outcomes = await asyncio.gather(*(ratelimit.admit(limits) for _ in range(30)),
                                    ratelimit.admit(limits, revocation_keys=[revocations.token_key(jti)]),
                                    return_exceptions=True)
    assert sizes == [1, 30]  # the first goes at once; the rest, which came while it was out, together
    limited = [o for o in outcomes[:30] if isinstance(o, RateLimited)]
    assert outcomes[:30].count(None) == 20 and len(limited) == 10
    assert all(0 < o.extra["retry_after"] <= ratelimit.WINDOW_S + 1 for o in limited)
    assert isinstance(outcomes[30], Unauthorized)
    count = await redis_client().get(f"nexus:rl:principal:{who}:{int(clock.now) // ratelimit.WINDOW_S}")
    assert int(count) == 30  # the revoked token's request was not counted
