"""The edge refuses revoked access tokens: by token, by sign-in (grant) and by subject, in one Redis call."""

import time
import uuid

import pytest

from nexus_ray.edge import revocations, tokens

pytestmark = pytest.mark.integration

URL = "/platform/v1/gateway/notice"
SCOPE = ["platform:gateway:read"]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_one_revoked_token_is_refused_and_others_are_not(client, bearer):
    subject = f"u-{uuid.uuid4().hex[:8]}"
    doomed = tokens.issue(subject, SCOPE)
    other = tokens.issue(subject, SCOPE)
    assert (await client.get(URL, headers=_auth(doomed))).status_code == 200
    claims = await tokens.verify(doomed)
    await revocations.revoke_token(claims["jti"], expires_at=claims["exp"])
    r = await client.get(URL, headers=_auth(doomed))
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"
    assert r.headers["content-type"] == "application/problem+json"
    assert (await client.get(URL, headers=_auth(other))).status_code == 200


async def test_revoked_grant_refuses_every_token_of_the_sign_in(client, bearer):
    gid = str(uuid.uuid4())
    first = tokens.issue("u-grant", SCOPE, extra={"gid": gid})
    second = tokens.issue("u-grant", SCOPE, extra={"gid": gid})
    unrelated = tokens.issue("u-grant", SCOPE, extra={"gid": str(uuid.uuid4())})
    await revocations.revoke_grant(gid)
    for t in (first, second):
        assert (await client.get(URL, headers=_auth(t))).status_code == 401
    assert (await client.get(URL, headers=_auth(unrelated))).status_code == 200


async def test_revoked_subject_refuses_tokens_issued_before_only(client, bearer):
    subject = f"u-{uuid.uuid4().hex[:8]}"
    before = tokens.issue(subject, SCOPE)
    await revocations.revoke_subject(subject)
    assert (await client.get(URL, headers=_auth(before))).status_code == 401
    # A token issued after the revocation (a new sign-in) works; iat has one-second resolution.
    later = tokens.issue(subject, SCOPE, extra={"iat": int(time.time()) + 2})
    assert (await client.get(URL, headers=_auth(later))).status_code == 200
    assert (await client.get(URL, headers=_auth(tokens.issue("someone-else", SCOPE)))).status_code == 200


async def test_entries_live_no_longer_than_the_tokens_they_refuse(migrated):
    from nexus_ray.config import get_settings
    from nexus_ray.stores.cache import redis_client

    await revocations.revoke_token("jti-short", expires_at=time.time() + 60)
    assert 55 <= await redis_client().ttl(revocations.token_key("jti-short")) <= 62 + get_settings().jwt_leeway_s
    await revocations.revoke_grant("gid-x")
    longest = get_settings().token_max_ttl_s + get_settings().jwt_leeway_s
    assert longest - 5 <= await redis_client().ttl(revocations.grant_key("gid-x")) <= longest
