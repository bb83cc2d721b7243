"""auth-service (legacy login) on the real stores, through the in-process platform: login, lockout and
its release, per-address throttling, logout, password change, exchange for v2 tokens, and the edge
accepting legacy tokens. Passwords and tokens the tests handle never reach a log."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from nexus_ray.deployments.auth.auth import lockout, sessions
from nexus_ray.deployments.auth.auth.service import session_principal
from nexus_ray.deployments.auth.auth.settings import settings as auth_settings
from nexus_ray.edge.security import api_routes, route_guard
from nexus_ray.stores.cache import redis_client

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("captured_logs")]

AUTH = "/auth/v1/auth"
USERS = "/auth/v1/users"
SECRETS: list[str] = []


@pytest.fixture
def settings(monkeypatch):
    """auth-service's settings, for tests that shorten windows (restored afterwards)."""
    s = auth_settings()
    yield lambda **values: [monkeypatch.setattr(s, k, v) for k, v in values.items()]


@pytest.fixture
async def from_address(apps):
    """Clients of the auth app seen from a given address (the shared ``client`` is always 203.0.113.7)."""
    opened: list[httpx.AsyncClient] = []

    def make(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=apps["auth"], root_path="/auth", client=(address, 50000))
        c = httpx.AsyncClient(transport=transport, base_url="http://nexus.test")
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


def an_address() -> str:
    """A documentation-range address of its own, so one test's failed logins do not throttle another's."""
    n = uuid.uuid4().int
    return f"198.51.{n % 100 + 100}.{(n >> 8) % 250 + 1}"


async def new_user(client) -> tuple[dict, str]:
    username = f"a{uuid.uuid4().hex[:10]}"
    password = f"tr0ub4dor & {uuid.uuid4().hex[:8]}"
    r = await client.post(USERS, json={"username": username, "email": f"{username}@example.org", "password": password})
    assert r.status_code == 201, r.text
    SECRETS.append(password)
    return r.json(), password


async def login(client, username: str, password: str, device: str = "laptop") -> httpx.Response:
    r = await client.post(f"{AUTH}/login", json={"username": username, "password": password, "device": device},
                          headers={"User-Agent": "pytest-agent/1.0"})
    if r.status_code == 200:
        SECRETS.append(r.json()["session_token"])
    return r


def bearer_of(r: httpx.Response) -> dict[str, str]:
    return {"Authorization": f"Bearer {r.json()['session_token']}"}


async def test_every_route_is_guarded(apps, client, bearer):
    """No credential: 401; a token without the route's scope: 403 (public routes excepted)."""
    checked = 0
    for r in api_routes(apps["auth"].routes):
        if not r.path.startswith(("/v1/auth/", "/v1/users")):
            continue
        kind, scopes = route_guard(r)
        if kind == "public":
            continue
        path = "/auth" + r.path.replace("{user_id}", str(uuid.uuid4())).replace("{session_id}", "0" * 72)
        path = path.replace("{username}", "someone").replace("{role}", "user").replace("{name}", "user")
        path = path.replace("{key_id}", "0" * 16)
        for method in r.methods - {"HEAD"}:
            assert (await client.request(method, path)).status_code == 401, path
            assert (await client.request(method, path, headers={"Authorization": "Bearer nxs_" + "x" * 43})
                    ).status_code == 401, path
            denied = await client.request(method, path, headers=bearer("nothing:useful"))
            assert denied.status_code == 403 and denied.json()["required_scopes"] == list(scopes), path
            checked += 1
    assert checked >= 20


async def test_login_gives_an_opaque_session_the_edge_accepts(client):
    user, password = await new_user(client)
    r = await login(client, user["username"].upper(), password)  # usernames are case-insensitive
    assert r.status_code == 200, r.text
    body = r.json()
    token = body["session_token"]
    assert token.startswith("nxs_") and token.count(".") == 0 and body["token_type"] == "session"
    assert body["user_id"] == user["user_id"] and body["idle_timeout_s"] == auth_settings().auth_session_idle_s

    me = await client.get(f"{USERS}/me", headers=bearer_of(r))
    assert me.status_code == 200 and me.json()["user_id"] == user["user_id"]
    principal = await session_principal(token)
    assert principal.subject == user["user_id"] and principal.can("auth:users:read")
    assert not principal.can("auth:users:admin")

    # Redis holds a keyed hash of the token, never the token.
    client_redis = redis_client()
    keys = [k async for k in client_redis.scan_iter("nexus:auth:*")]
    assert all(token.encode() not in k for k in keys)
    stored = await client_redis.hgetall(f"nexus:auth:session:{body['session_id']}")
    assert stored and all(token.encode() not in v for v in stored.values())

    listed = await client.get(f"{AUTH}/sessions", headers=bearer_of(r))
    assert listed.status_code == 200
    (session,) = listed.json()
    assert session["current"] is True and session["device"] == "laptop" and session["ip"] == "203.0.113.7"
    assert session["user_agent"] == "pytest-agent/1.0"


async def test_wrong_password_and_unknown_user_are_refused_alike(client):
    user, _ = await new_user(client)
    wrong = await login(client, user["username"], "not the password at all")
    unknown = await login(client, f"nobody{uuid.uuid4().hex[:8]}", "not the password at all")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.headers["content-type"] == "application/problem+json"
    assert wrong.json()["detail"] == unknown.json()["detail"] == "invalid username or password"
    r = await client.post(f"{AUTH}/login", json={"username": "", "password": "x"})
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["username"]
    r = await client.post(f"{AUTH}/login", json={"username": "someone"})
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["password"]


async def test_lockout_engages_and_releases(client, bearer, settings, from_address, until):
    settings(auth_lockout_threshold=3, auth_lockout_window_s=60, auth_lockout_duration_s=2)
    user, password = await new_user(client)
    attacker = from_address(an_address())
    codes = [(await login(attacker, user["username"], f"guess number {i}")).status_code for i in range(3)]
    assert codes == [401, 401, 423]
    locked = await login(client, user["username"], password)  # the account is locked, whoever asks
    assert locked.status_code == 423 and locked.headers["content-type"] == "application/problem+json"
    assert 1 <= int(locked.headers["retry-after"]) <= 2 and "locked" in locked.json()["detail"]
    status = await client.get(f"{AUTH}/lockouts/{user['username']}", headers=bearer("auth:auth:admin"))
    assert status.status_code == 200 and status.json()["locked"] is True

    # Attempts while locked are refused without counting; once the window passes the right password works.
    released = await until(lambda: _logged_in(client, user["username"], password), within_s=15)
    assert released.status_code == 200
    # A success resets the count: the threshold applies afresh.
    assert [(await login(attacker, user["username"], "wrong again 1")).status_code for _ in range(2)] == [401, 401]
    assert (await login(client, user["username"], password)).status_code == 200


async def _logged_in(client, username: str, password: str) -> httpx.Response | None:
    r = await login(client, username, password)
    assert r.status_code in (200, 423), r.text
    return r if r.status_code == 200 else None


async def test_concurrent_guesses_get_no_more_than_the_threshold(client, settings, from_address):
    settings(auth_lockout_threshold=3, auth_lockout_window_s=60, auth_lockout_duration_s=60)
    user, password = await new_user(client)
    attacker = from_address(an_address())
    results = await asyncio.gather(*(login(attacker, user["username"], f"parallel guess {i}") for i in range(12)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(401) <= 2 and codes.count(401) + codes.count(423) == 12  # 3 verified at most, the 3rd locks
    assert (await login(client, user["username"], password)).status_code == 423


async def test_admin_lifts_a_lockout(client, bearer, settings, from_address):
    settings(auth_lockout_threshold=2, auth_lockout_duration_s=600)
    user, password = await new_user(client)
    attacker = from_address(an_address())
    await login(attacker, user["username"], "first wrong guess")
    assert (await login(attacker, user["username"], "second wrong guess")).status_code == 423
    r = await client.delete(f"{AUTH}/lockouts/{user['username']}", headers=bearer("auth:auth:admin"))
    assert r.status_code == 204
    assert (await login(client, user["username"], password)).status_code == 200
    assert await lockout.locked_for(username=user["username"]) == 0


async def test_failed_logins_are_throttled_per_address(client, from_address, settings, until):
    # The window opens at the first failure and must outlast four argon2 checks on a loaded 2-core CI.
    settings(auth_address_max_failures=4, auth_address_window_s=10, auth_lockout_threshold=100)
    attacker = from_address(an_address())
    user, password = await new_user(client)
    for i in range(4):  # four different accounts: no single account comes near its lockout
        r = await login(attacker, f"victim{i}{uuid.uuid4().hex[:6]}", "a guess that fails")
        assert r.status_code == 401
    throttled = await login(attacker, user["username"], password)
    assert throttled.status_code == 429 and 1 <= int(throttled.headers["retry-after"]) <= 10
    assert throttled.json()["limit_scope"] == "login-address"
    assert (await login(client, user["username"], password)).status_code == 200  # other addresses are unaffected

    async def attacker_may_try_again():
        r = await login(attacker, user["username"], password)
        assert r.status_code in (200, 429)
        return r.status_code == 200

    await until(attacker_may_try_again, within_s=30)


async def test_logout_ends_the_session_and_is_idempotent(client):
    user, password = await new_user(client)
    r = await login(client, user["username"], password)
    headers = bearer_of(r)
    assert (await client.post(f"{AUTH}/logout", headers=headers)).status_code == 204
    assert (await client.get(f"{USERS}/me", headers=headers)).status_code == 401
    assert (await client.post(f"{AUTH}/logout", headers=headers)).status_code == 204
    assert (await client.post(f"{AUTH}/logout")).status_code == 401


async def test_sessions_end_when_idle(client, settings, until):
    settings(auth_session_idle_s=1)
    user, password = await new_user(client)
    r = await login(client, user["username"], password)
    key = f"nexus:auth:session:{r.json()['session_id']}"

    async def gone():
        return not await redis_client().exists(key)

    await until(gone, within_s=15)  # watched without using it: each use would renew it
    assert (await client.get(f"{USERS}/me", headers=bearer_of(r))).status_code == 401
    assert await sessions.list_for(user_id=user["user_id"]) == []


async def test_sessions_are_listed_and_revoked_one_by_one(client):
    user, password = await new_user(client)
    phone = await login(client, user["username"], password, device="phone")
    laptop = await login(client, user["username"], password, device="laptop")
    listed = (await client.get(f"{AUTH}/sessions", headers=bearer_of(phone))).json()
    assert sorted(s["device"] for s in listed) == ["laptop", "phone"]
    r = await client.delete(f"{AUTH}/sessions/{laptop.json()['session_id']}", headers=bearer_of(phone))
    assert r.status_code == 204
    assert (await client.get(f"{USERS}/me", headers=bearer_of(laptop))).status_code == 401
    assert (await client.get(f"{USERS}/me", headers=bearer_of(phone))).status_code == 200
    r = await client.delete(f"{AUTH}/sessions/not-an-id", headers=bearer_of(phone))
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["session_id"]


async def test_another_users_session_cannot_be_ended_by_its_id(client, bearer):
    """Used to answer 204 and end the victim's session; now 404, as for an unknown id, and nothing ends."""
    victim, victim_password = await new_user(client)
    attacker, attacker_password = await new_user(client)
    theirs = await login(client, victim["username"], victim_password)
    mine = await login(client, attacker["username"], attacker_password)
    r = await client.delete(f"{AUTH}/sessions/{theirs.json()['session_id']}", headers=bearer_of(mine))
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    unknown = await client.delete(f"{AUTH}/sessions/{'0' * len(theirs.json()['session_id'])}", headers=bearer_of(mine))
    assert unknown.status_code == 404 and unknown.json()["detail"] == r.json()["detail"]
    assert (await client.get(f"{USERS}/me", headers=bearer_of(theirs))).status_code == 200
    # An administrator may end it, if it holds every scope of the owner (a lesser one may not).
    lesser = bearer("auth:auth:admin", "auth:auth:write", subject="admin-1")
    r = await client.delete(f"{AUTH}/sessions/{theirs.json()['session_id']}", headers=lesser)
    assert r.status_code == 403 and [e["field"] for e in r.json()["errors"]] == ["user_id"]
    r = await client.delete(f"{AUTH}/sessions/{theirs.json()['session_id']}",
                            headers=bearer("auth:*", "platform:*", "commerce:*", subject="admin-2"))
    assert r.status_code == 204
    assert (await client.get(f"{USERS}/me", headers=bearer_of(theirs))).status_code == 401


async def credentials_of(client, user: dict, password: str) -> dict[str, dict[str, str]]:
    """One credential of each kind the account can hold: two legacy sessions, a v2 token, an API key."""
    here = await login(client, user["username"], password, device="here")
    there = await login(client, user["username"], password, device="there")
    v2 = (await client.post(f"{AUTH}/exchange", json={"session_token": there.json()["session_token"]})).json()
    SECRETS.append(v2["access_token"])
    r = await client.post(f"{USERS}/{user['user_id']}/api-keys", json={"name": "ci", "scopes": ["auth:users:read"]},
                          headers=bearer_of(here))
    assert r.status_code == 201, r.text
    SECRETS.append(r.json()["key"])
    creds = {"here": bearer_of(here), "there": bearer_of(there),
             "v2": {"Authorization": f"Bearer {v2['access_token']}"}, "api key": {"X-API-Key": r.json()["key"]}}
    for name, headers in creds.items():
        assert (await client.get(f"{USERS}/{user['user_id']}", headers=headers)).status_code == 200, name
    return creds


async def still_working(client, user: dict, creds: dict) -> list[str]:
    return [name for name, headers in creds.items()
            if (await client.get(f"{USERS}/{user['user_id']}", headers=headers)).status_code != 401]


async def test_password_change_ends_every_credential_and_signs_in_anew(client):
    """Used to end only the other legacy sessions: v2 tokens and API keys kept working after the change."""
    user, password = await new_user(client)
    creds = await credentials_of(client, user, password)
    new_password = f"a new passphrase {uuid.uuid4().hex[:6]}"
    SECRETS.append(new_password)

    here = creds["here"]
    r = await client.post(f"{AUTH}/password", json={"current_password": "wrong one entirely", "new_password":
                                                    new_password}, headers=here)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["current_password"]
    r = await client.post(f"{AUTH}/password", json={"current_password": password, "new_password": "short"},
                          headers=here)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["new_password"]
    r = await client.post(f"{AUTH}/password", json={"current_password": password, "new_password": password},
                          headers=here)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["new_password"]
    assert await still_working(client, user, creds) == list(creds)  # refused changes end nothing

    r = await client.post(f"{AUTH}/password", json={"current_password": password, "new_password": new_password},
                          headers=here)
    assert r.status_code == 200, r.text
    body = r.json()
    SECRETS.append(body["session"]["session_token"])
    assert (body["sessions_revoked"], body["api_keys_revoked"], body["grants_revoked"]) == (2, 1, 0)
    assert await still_working(client, user, creds) == []  # the session that made the change too

    # The caller was signed in anew: its new session works, and so does a v2 token exchanged from it at once.
    fresh = {"Authorization": f"Bearer {body['session']['session_token']}"}
    assert (await client.get(f"{USERS}/me", headers=fresh)).status_code == 200
    v2 = await client.post(f"{AUTH}/exchange", json={"session_token": body["session"]["session_token"]})
    SECRETS.append(v2.json()["access_token"])
    assert (await client.get(f"{USERS}/me", headers={"Authorization": f"Bearer {v2.json()['access_token']}"})
            ).status_code == 200
    assert (await login(client, user["username"], password)).status_code == 401
    assert (await login(client, user["username"], new_password)).status_code == 200


async def test_admin_reset_ends_every_credential_if_the_admin_outranks_the_account(client, bearer):
    """An auth:auth:admin holder used to reset anyone's password, a platform administrator's included."""
    user, password = await new_user(client)
    creds = await credentials_of(client, user, password)
    new_password = f"set by an admin {uuid.uuid4().hex[:6]}"
    SECRETS.append(new_password)
    lesser = bearer("auth:auth:admin", subject="admin-1")  # holds none of the account's own scopes
    r = await client.put(f"{AUTH}/users/{user['user_id']}/password", json={"new_password": new_password},
                         headers=lesser)
    assert r.status_code == 403 and [e["field"] for e in r.json()["errors"]] == ["user_id"]
    assert await still_working(client, user, creds) == list(creds)

    admin = bearer("auth:*", "platform:*", "commerce:*", subject="admin-2")
    r = await client.put(f"{AUTH}/users/{user['user_id']}/password", json={"new_password": new_password},
                         headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"sessions_revoked": 2, "api_keys_revoked": 1, "grants_revoked": 0}
    assert await still_working(client, user, creds) == []
    assert (await login(client, user["username"], new_password)).status_code == 200
    r = await client.put(f"{AUTH}/users/{user['user_id']}/password", json={"new_password": "weak"}, headers=admin)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["new_password"]


async def test_exchange_gives_a_v2_token_with_the_users_scopes(client):
    user, password = await new_user(client)
    session = await login(client, user["username"], password)
    token = session.json()["session_token"]

    r = await client.post(f"{AUTH}/exchange", json={"session_token": token})
    assert r.status_code == 200, r.text
    body = r.json()
    SECRETS.append(body["access_token"])
    assert body["token_type"] == "Bearer" and body["access_token"].count(".") == 2
    assert 0 < body["expires_in"] <= auth_settings().auth_exchange_ttl_s
    assert set(body["scope"].split()) == {"auth:users:read", "auth:users:write", "auth:auth:read", "auth:auth:write",
                                          "platform:sessions:read", "platform:sessions:write",
                                          "commerce:catalog:read", "commerce:order-processor:read",
                                          "commerce:order-processor:write", "commerce:invoices:read",
                                          "commerce:shipping:read"}
    v2 = {"Authorization": f"Bearer {body['access_token']}"}
    me = await client.get(f"{USERS}/me", headers=v2)
    assert me.status_code == 200 and me.json()["user_id"] == user["user_id"]

    r = await client.post(f"{AUTH}/exchange", json={"session_token": token, "scope": "auth:users:read"})
    assert r.status_code == 200 and r.json()["scope"] == "auth:users:read"
    SECRETS.append(r.json()["access_token"])
    narrow = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert (await client.get(f"{USERS}/me", headers=narrow)).status_code == 200
    assert (await client.patch(f"{USERS}/{user['user_id']}", json={"bio": "x"}, headers=narrow)).status_code == 403

    r = await client.post(f"{AUTH}/exchange", json={"session_token": token, "scope": "auth:users:admin"})
    assert r.status_code == 403 and [e["field"] for e in r.json()["errors"]] == ["scope"]
    r = await client.post(f"{AUTH}/exchange", json={"session_token": "nxs_" + "y" * 43})
    assert r.status_code == 401
    await client.post(f"{AUTH}/logout", headers=bearer_of(session))
    assert (await client.post(f"{AUTH}/exchange", json={"session_token": token})).status_code == 401

    # A password change made with a v2 token ends every legacy session, and that token.
    other = await login(client, user["username"], password)
    v2_token = (await client.post(f"{AUTH}/exchange", json={"session_token": other.json()["session_token"]})).json()
    SECRETS.append(v2_token["access_token"])
    new_password = f"changed via v2 {uuid.uuid4().hex[:6]}"
    SECRETS.append(new_password)
    v2 = {"Authorization": f"Bearer {v2_token['access_token']}"}
    r = await client.post(f"{AUTH}/password", json={"current_password": password, "new_password": new_password},
                          headers=v2)
    assert r.status_code == 200 and r.json()["sessions_revoked"] == 1
    SECRETS.append(r.json()["session"]["session_token"])
    assert (await client.get(f"{USERS}/me", headers=v2)).status_code == 401


async def test_api_key_works_only_for_its_scopes(client):
    user, password = await new_user(client)
    session = await login(client, user["username"], password)
    r = await client.post(f"{USERS}/{user['user_id']}/api-keys",
                          json={"name": "sessions", "scopes": ["auth:auth:read"]}, headers=bearer_of(session))
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    SECRETS.append(key)
    listed = await client.get(f"{AUTH}/sessions", headers={"X-API-Key": key})
    assert listed.status_code == 200 and len(listed.json()) == 1
    r = await client.post(f"{AUTH}/password", json={"current_password": password, "new_password": "whatever it is 1"},
                          headers={"X-API-Key": key})
    assert r.status_code == 403 and r.json()["required_scopes"] == ["auth:auth:write"]
    assert (await client.get(f"{USERS}/me", headers={"X-API-Key": key})).status_code == 403


async def test_session_principal_rejects_what_is_not_a_live_session():
    assert await session_principal("garbage") is None
    assert await session_principal("nxs_" + "z" * 43) is None
    assert await session_principal("abc.def") is None


async def test_no_secret_in_the_logs(captured_logs):
    assert SECRETS, "the tests above handled secrets"
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {vars(r)}" for r in captured_logs)
    leaked = [s[:6] + "..." for s in SECRETS if s in text]
    assert leaked == []
