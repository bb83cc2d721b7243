"""user-auth on the real stores, through the in-process platform: registration, verification, profiles,
RBAC, API keys, export and erasure. Passwords, tokens and keys the tests handle never reach a log."""

from __future__ import annotations

import re
import uuid

import pytest

from nexus_ray.deployments.auth.users import mail
from nexus_ray.deployments.auth.users import service as users
from nexus_ray.edge import digests
from nexus_ray.stores import postgres
from nexus_ray.stores.cache import redis_client

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("captured_logs")]

USERS = "/auth/v1/users"
LOGIN = "/auth/v1/auth/login"
ADMIN = ("auth:users:admin", "auth:users:read", "auth:users:write")

SECRETS: list[str] = []
"""Every password, session token, verification code and API key these tests handle."""


def _name() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


async def register(client, **overrides) -> tuple[dict, str]:
    username = overrides.pop("username", None) or _name()
    password = f"correct horse {uuid.uuid4().hex[:8]}"
    body = {"username": username, "email": f"{username}@Example.org", "password": password, **overrides}
    r = await client.post(USERS, json=body)
    assert r.status_code == 201, r.text
    SECRETS.append(password)
    return r.json(), password


async def login(client, username: str, password: str) -> dict[str, str]:
    r = await client.post(LOGIN, json={"username": username, "password": password, "device": "test"})
    assert r.status_code == 200, r.text
    SECRETS.append(r.json()["session_token"])
    return {"Authorization": f"Bearer {r.json()['session_token']}"}


async def verification_code(email: str) -> str:
    (latest, *_rest) = await mail.messages(to=email, template="email-verification")
    code = re.search(r"nxv_[A-Za-z0-9_-]+", latest["body_text"]).group(0)
    SECRETS.append(code)
    return code


def fields_of(response) -> list[str]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return [e["field"] for e in response.json().get("errors", [])]


async def test_registration_sends_a_single_use_verification_code(client):
    user, _ = await register(client, display_name="Ada")
    assert user["email"] == f"{user['username']}@example.org"  # the domain is normalised
    assert (user["kind"], user["status"], user["email_verified"], user["display_name"]) == ("user", "active", False,
                                                                                            "Ada")
    code = await verification_code(user["email"])

    pg = await postgres.pool()
    stored = await pg.fetch("SELECT token_hash FROM email_verifications WHERE user_id = $1", uuid.UUID(user["user_id"]))
    assert len(stored) == 1 and len(stored[0]["token_hash"]) == digests.DIGEST_BYTES
    assert code.encode() not in stored[0]["token_hash"]

    r = await client.post(f"{USERS}/verify-email", json={"token": code})
    assert r.status_code == 200, r.text
    assert r.json()["email"] == user["email"] and r.json()["email_verified_at"]
    r = await client.post(f"{USERS}/verify-email", json={"token": code})
    assert r.status_code == 422 and fields_of(r) == ["token"]
    assert (await users.get_user(user_id=uuid.UUID(user["user_id"])))["email_verified"] is True


async def test_expired_and_superseded_codes_are_refused(client, bearer):
    user, _ = await register(client)
    first = await verification_code(user["email"])
    me = bearer("auth:users:write", subject=user["user_id"])
    r = await client.post(f"{USERS}/{user['user_id']}/email-verification", headers=me)
    assert r.status_code == 202, r.text
    second = await verification_code(user["email"])
    assert second != first
    r = await client.post(f"{USERS}/verify-email", json={"token": first})
    assert r.status_code == 422 and fields_of(r) == ["token"]

    pg = await postgres.pool()
    await pg.execute("UPDATE email_verifications SET expires_at = now() - interval '1 second' WHERE user_id = $1",
                     uuid.UUID(user["user_id"]))
    r = await client.post(f"{USERS}/verify-email", json={"token": second})
    assert r.status_code == 422 and "expired" in r.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"email": "a@localhost"}, "email"),
        ({"password": "short"}, "password"),
        ({"password": "1234567890"}, "password"),
        ({"username": "x"}, "username"),
        ({"username": "bad name!"}, "username"),
        ({"locale": "not a locale"}, "locale"),
        ({"nickname": "extra"}, "nickname"),
    ],
)
async def test_bad_registrations_name_the_field(client, change, field):
    username = _name()
    body = {"username": username, "email": f"{username}@example.org", "password": "a fine passphrase 42", **change}
    r = await client.post(USERS, json=body)
    assert r.status_code == 422, r.text
    assert fields_of(r) == [field]


async def test_password_must_not_contain_the_username(client):
    username = _name()
    r = await client.post(USERS, json={"username": username, "email": f"{username}@example.org",
                                       "password": f"{username}-rocks"})
    assert r.status_code == 422 and fields_of(r) == ["password"]


async def test_taken_username_or_email_is_a_conflict(client):
    user, _ = await register(client)
    other = _name()
    r = await client.post(USERS, json={"username": user["username"].upper(), "email": f"{other}@example.org",
                                       "password": "a fine passphrase 42"})
    assert r.status_code == 409 and fields_of(r) == ["username"]
    r = await client.post(USERS, json={"username": other, "email": user["email"].upper(),
                                       "password": "a fine passphrase 42"})
    assert r.status_code == 409 and fields_of(r) == ["email"]


async def test_profiles_are_self_service_or_admin(client, bearer):
    user, password = await register(client)
    other, _ = await register(client)
    uid = user["user_id"]
    mine = await login(client, user["username"], password)  # a legacy session: the user's own RBAC scopes

    r = await client.get(f"{USERS}/me", headers=mine)
    assert r.status_code == 200 and r.json()["user_id"] == uid
    r = await client.patch(f"{USERS}/{uid}", json={"display_name": "New Name", "bio": "hello"}, headers=mine)
    assert r.status_code == 200 and r.json()["display_name"] == "New Name"
    r = await client.get(f"{USERS}/{other['user_id']}", headers=mine)
    assert r.status_code == 403 and r.json()["required_scopes"] == ["auth:users:admin"]
    r = await client.patch(f"{USERS}/{other['user_id']}", json={"bio": "x"}, headers=mine)
    assert r.status_code == 403
    r = await client.get(f"{USERS}/{other['user_id']}", headers=bearer(*ADMIN, subject="admin-1"))
    assert r.status_code == 200 and r.json()["username"] == other["username"]

    r = await client.patch(f"{USERS}/{uid}", json={"locale": "english please"}, headers=mine)
    assert r.status_code == 422 and fields_of(r) == ["locale"]
    r = await client.patch(f"{USERS}/{uid}", json={"username": None}, headers=mine)
    assert r.status_code == 422 and fields_of(r) == ["username"]
    r = await client.patch(f"{USERS}/{uid}", json={"username": other["username"]}, headers=mine)
    assert r.status_code == 409 and fields_of(r) == ["username"]
    r = await client.get(f"{USERS}/not-a-uuid", headers=mine)
    assert r.status_code == 422 and fields_of(r) == ["user_id"]


async def test_a_new_email_address_must_be_verified_again(client, bearer):
    user, _ = await register(client)
    uid = user["user_id"]
    await client.post(f"{USERS}/verify-email", json={"token": await verification_code(user["email"])})
    new_email = f"new-{user['username']}@example.org"
    r = await client.patch(f"{USERS}/{uid}", json={"email": new_email}, headers=bearer("auth:users:write", subject=uid))
    assert r.status_code == 200 and r.json()["email"] == new_email and r.json()["email_verified"] is False
    r = await client.post(f"{USERS}/verify-email", json={"token": await verification_code(new_email)})
    assert r.status_code == 200 and r.json()["email"] == new_email


async def test_roles_map_to_the_scopes_tokens_carry(client, bearer):
    user, _ = await register(client)
    uid = user["user_id"]
    role = f"reporter-{uuid.uuid4().hex[:6]}"
    admin = bearer(*ADMIN, "commerce:*", subject="admin-1")

    assert await users.scopes_for(uid) == sorted(
        ["auth:users:read", "auth:users:write", "auth:auth:read", "auth:auth:write", "platform:sessions:read",
         "platform:sessions:write", "commerce:catalog:read", "commerce:order-processor:read",
         "commerce:order-processor:write", "commerce:invoices:read", "commerce:shipping:read"]
    )
    body = {"description": "Reads orders", "scopes": ["commerce:orders:read"]}
    r = await client.put(f"{USERS}/roles/{role}", json=body, headers=admin)
    assert r.status_code == 201 and r.json()["scopes"] == ["commerce:orders:read"]
    body["scopes"].append("commerce:carts:read")
    r = await client.put(f"{USERS}/roles/{role}", json=body, headers=admin)
    assert r.status_code == 200 and len(r.json()["scopes"]) == 2  # idempotent replace

    r = await client.put(f"{USERS}/{uid}/roles/{role}", headers=admin)
    assert r.status_code == 200 and role in r.json()["roles"] and "commerce:orders:read" in r.json()["scopes"]
    assert "commerce:carts:read" in await users.scopes_for(uid)
    r = await client.put(f"{USERS}/{uid}/roles/{role}", headers=admin)
    assert r.status_code == 200  # granting twice is fine
    r = await client.get(f"{USERS}/{uid}/roles", headers=bearer("auth:users:read", subject=uid))
    assert r.status_code == 200 and role in r.json()["roles"]

    # A principal grants only scopes it holds: an identity admin without commerce scopes cannot.
    narrow = bearer(*ADMIN, subject="admin-2")
    r = await client.put(f"{USERS}/roles/{role}-2", json={"scopes": ["commerce:orders:read"]}, headers=narrow)
    assert r.status_code == 403 and fields_of(r) == ["scopes[0]"]
    r = await client.put(f"{USERS}/{uid}/roles/admin", headers=narrow)
    assert r.status_code == 403 and fields_of(r) == ["role"]
    r = await client.put(f"{USERS}/{uid}/roles/{role}", headers=bearer("auth:users:write", subject=uid))
    assert r.status_code == 403
    r = await client.put(f"{USERS}/roles/{role}-3", json={"scopes": ["not a scope"]}, headers=admin)
    assert r.status_code == 422 and fields_of(r) == ["scopes[0]"]
    r = await client.put(f"{USERS}/{uid}/roles/no-such-role", headers=admin)
    assert r.status_code == 404 and fields_of(r) == ["role"]
    r = await client.delete(f"{USERS}/roles/user", headers=admin)
    assert r.status_code == 409

    r = await client.delete(f"{USERS}/{uid}/roles/{role}", headers=admin)
    assert r.status_code == 204
    assert "commerce:orders:read" not in await users.scopes_for(uid)
    r = await client.delete(f"{USERS}/roles/{role}", headers=admin)
    assert r.status_code == 204
    r = await client.get(f"{USERS}/roles", headers=admin)
    assert role not in [x["name"] for x in r.json()] and "user" in [x["name"] for x in r.json()]


async def test_api_keys_are_shown_once_stored_hashed_and_scoped(client, bearer):
    user, password = await register(client)
    other, _ = await register(client)
    uid = user["user_id"]
    mine = await login(client, user["username"], password)

    r = await client.post(f"{USERS}/{uid}/api-keys", json={"name": "reporting", "scopes": ["auth:users:read"],
                                                          "expires_in_s": 3600}, headers=mine)
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    SECRETS.append(key)
    assert key.startswith("nxk_") and created["active"] and created["expires_at"]

    listed = await client.get(f"{USERS}/{uid}/api-keys", headers=mine)
    assert listed.status_code == 200 and key.split("_", 2)[2] not in listed.text
    assert [k["key_id"] for k in listed.json()] == [created["key_id"]] and "key" not in listed.json()[0]
    pg = await postgres.pool()
    stored = await pg.fetchval("SELECT secret_hash FROM api_keys WHERE key_id = $1", created["key_id"])
    assert key.split("_", 2)[2].encode() not in bytes(stored)

    # The key works for its scope only, and only for its own account.
    as_key = {"X-API-Key": key}
    assert (await client.get(f"{USERS}/{uid}", headers=as_key)).status_code == 200
    assert (await client.patch(f"{USERS}/{uid}", json={"bio": "x"}, headers=as_key)).status_code == 403
    assert (await client.get(f"{USERS}/{other['user_id']}", headers=as_key)).status_code == 403
    assert (await client.get("/auth/v1/auth/sessions", headers=as_key)).status_code == 403

    # Only scopes the caller holds (and the account holds); keys cannot mint keys.
    r = await client.post(f"{USERS}/{uid}/api-keys", json={"name": "x", "scopes": ["commerce:orders:read"]},
                          headers=mine)
    assert r.status_code == 403 and fields_of(r) == ["scopes[0]"]
    r = await client.post(f"{USERS}/{uid}/api-keys", json={"name": "x", "scopes": ["auth:users:read"]},
                          headers={"X-API-Key": key})
    assert r.status_code == 403
    r = await client.post(f"{USERS}/{uid}/api-keys", json={"name": "x", "scopes": ["commerce:orders:read"]},
                          headers=bearer("*", subject="root"))
    assert r.status_code == 403 and fields_of(r) == ["scopes[0]"]  # beyond the account's own scopes
    r = await client.post(f"{USERS}/{uid}/api-keys", json={"name": "", "scopes": []}, headers=mine)
    assert r.status_code == 422 and sorted(fields_of(r)) == ["name", "scopes"]

    r = await client.delete(f"{USERS}/{other['user_id']}/api-keys/{created['key_id']}",
                            headers=bearer(*ADMIN, subject="admin-1"))
    assert r.status_code == 404  # not that account's key
    r = await client.delete(f"{USERS}/{uid}/api-keys/{created['key_id']}", headers=mine)
    assert r.status_code == 204
    assert (await client.get(f"{USERS}/{uid}", headers=as_key)).status_code == 401
    r = await client.delete(f"{USERS}/{uid}/api-keys/{created['key_id']}", headers=mine)
    assert r.status_code == 204
    listed = (await client.get(f"{USERS}/{uid}/api-keys", headers=mine)).json()
    assert listed[0]["active"] is False and listed[0]["revoked_at"]


async def test_service_accounts_act_through_keys(client, bearer):
    admin = bearer("*", subject="root")
    role = f"svc-{uuid.uuid4().hex[:6]}"
    await client.put(f"{USERS}/roles/{role}", json={"scopes": ["auth:users:admin", "auth:users:read"]}, headers=admin)
    r = await client.post(f"{USERS}/service-accounts", json={"username": _name(), "roles": [role]}, headers=admin)
    assert r.status_code == 201, r.text
    account = r.json()
    assert account["kind"] == "service" and account["email"] is None
    r = await client.post(f"{USERS}/{account['user_id']}/api-keys",
                          json={"name": "directory", "scopes": ["auth:users:admin", "auth:users:read"]}, headers=admin)
    assert r.status_code == 201, r.text
    SECRETS.append(r.json()["key"])
    r = await client.get(USERS, params={"limit": 2}, headers={"X-API-Key": r.json()["key"]})
    assert r.status_code == 200 and len(r.json()["users"]) == 2 and r.json()["next_after"]
    page2 = await client.get(USERS, params={"limit": 2, "after": r.json()["next_after"]}, headers=admin)
    assert page2.status_code == 200
    assert not {u["user_id"] for u in page2.json()["users"]} & {u["user_id"] for u in r.json()["users"]}
    r = await client.post(f"{USERS}/service-accounts", json={"username": _name(), "roles": ["admin"]},
                          headers=bearer(*ADMIN, subject="admin-2"))
    assert r.status_code == 403  # cannot hand out `*` without holding it


async def test_export_holds_all_personal_data_and_no_secret(client, bearer):
    user, password = await register(client, bio="I like trains")
    uid = user["user_id"]
    mine = await login(client, user["username"], password)
    r = await client.post(f"{USERS}/{uid}/api-keys", json={"name": "cli", "scopes": ["auth:users:read"]}, headers=mine)
    key = r.json()["key"]
    SECRETS.append(key)

    r = await client.get(f"{USERS}/{uid}/export", headers=mine)
    assert r.status_code == 200, r.text
    assert "attachment" in r.headers["content-disposition"]
    data = r.json()
    assert data["format"] == "nexus-personal-data/1"
    assert data["user"]["username"] == user["username"] and data["user"]["bio"] == "I like trains"
    assert data["user"]["has_password"] is True and data["user"]["last_login_at"]
    assert [x["role"] for x in data["roles"]] == ["user"] and "auth:users:read" in data["scopes"]
    assert [k["name"] for k in data["api_keys"]] == ["cli"]
    assert data["email_verifications"][0]["email"] == user["email"]
    assert data["messages"][0]["template"] == "email-verification" and "body_text" not in data["messages"][0]
    assert data["sessions"][0]["ip"] == "203.0.113.7" and data["sessions"][0]["device"] == "test"
    for secret in (password, key, key.split("_", 2)[2], "$argon2id$", mine["Authorization"][7:], "nxv_"):
        assert secret not in r.text
    other, _ = await register(client)
    assert (await client.get(f"{USERS}/{other['user_id']}/export", headers=mine)).status_code == 403


async def test_erasure_anonymises_and_revokes_everything_once(client, bearer):
    user, password = await register(client)
    uid = user["user_id"]
    mine = await login(client, user["username"], password)
    r = await client.post(f"{USERS}/{uid}/api-keys", json={"name": "k", "scopes": ["auth:users:read"]}, headers=mine)
    key = r.json()["key"]
    SECRETS.append(key)

    r = await client.delete(f"{USERS}/{uid}", headers=mine)
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["already_erased"] is False and receipt["api_keys_revoked"] == 1 and receipt["sessions_revoked"] == 1

    assert (await client.get(f"{USERS}/me", headers=mine)).status_code == 401
    assert (await client.get(f"{USERS}/{uid}", headers={"X-API-Key": key})).status_code == 401
    r = await client.post(LOGIN, json={"username": user["username"], "password": password})
    assert r.status_code == 401
    admin = bearer(*ADMIN, subject="admin-1")
    assert (await client.get(f"{USERS}/{uid}", headers=admin)).status_code == 404
    assert (await client.get(f"{USERS}/{uid}/export", headers=admin)).status_code == 404
    assert await users.scopes_for(uid) == []

    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM users WHERE user_id = $1", uuid.UUID(uid))
    assert row["status"] == "erased" and row["username"].startswith("erased-")
    assert all(row[c] is None for c in ("email", "display_name", "bio", "password_hash", "last_login_at"))
    assert await pg.fetchval("SELECT count(*) FROM user_roles WHERE user_id = $1", uuid.UUID(uid)) == 0
    assert await mail.messages(to=user["email"]) == []
    erased_events = "SELECT count(*) FROM outbox WHERE topic = 'auth.user.erased' AND payload->>'user_id' = $1"
    assert await pg.fetchval(erased_events, uid) == 1
    assert not [k async for k in redis_client().scan_iter(f"nexus:auth:user-sessions:{uid}")]

    again = await client.delete(f"{USERS}/{uid}", headers=admin)
    assert again.status_code == 200 and again.json()["already_erased"] is True
    assert again.json()["erased_at"] == receipt["erased_at"]
    # The name and the address are free again.
    reborn, _ = await register(client, username=user["username"])
    assert reborn["user_id"] != uid


async def api_key(client, user: dict, headers: dict, scopes: list[str]) -> dict[str, str]:
    r = await client.post(f"{USERS}/{user['user_id']}/api-keys", json={"name": "k", "scopes": scopes}, headers=headers)
    assert r.status_code == 201, r.text
    SECRETS.append(r.json()["key"])
    return {"X-API-Key": r.json()["key"]}


async def test_disabling_an_account_refuses_its_keys_and_ends_its_tokens(client, bearer):
    """There was no way to disable an account; a disabled owner's API keys used to keep working."""
    user, password = await register(client)
    uid = user["user_id"]
    mine = await login(client, user["username"], password)
    key = await api_key(client, user, mine, ["auth:users:read"])
    v2 = await client.post("/auth/v1/auth/exchange", json={"session_token": mine["Authorization"][7:]})
    SECRETS.append(v2.json()["access_token"])
    token = {"Authorization": f"Bearer {v2.json()['access_token']}"}
    for headers in (mine, key, token):
        assert (await client.get(f"{USERS}/{uid}", headers=headers)).status_code == 200

    r = await client.put(f"{USERS}/{uid}/status", json={"status": "disabled"}, headers=bearer(*ADMIN, subject="a-1"))
    assert r.status_code == 403 and fields_of(r) == ["user_id"]  # holds less than the account
    r = await client.put(f"{USERS}/{uid}/status", json={"status": "gone"}, headers=bearer("*", subject="root"))
    assert r.status_code == 422 and fields_of(r) == ["status"]
    r = await client.put(f"{USERS}/{uid}/status", json={"status": "disabled"}, headers=bearer("*", subject="root"))
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    for headers in (mine, key, token):
        assert (await client.get(f"{USERS}/{uid}", headers=headers)).status_code == 401
    assert (await client.post(LOGIN, json={"username": user["username"], "password": password})).status_code == 403

    r = await client.put(f"{USERS}/{uid}/status", json={"status": "active"}, headers=bearer("*", subject="root"))
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert (await client.get(f"{USERS}/{uid}", headers=key)).status_code == 200  # the key works again
    assert (await client.get(f"{USERS}/{uid}", headers=token)).status_code == 401  # ended tokens stay ended


async def test_removing_a_role_takes_its_scopes_from_existing_keys(client, bearer):
    """A key used to keep every scope it was created with, whatever became of its owner's roles."""
    user, _ = await register(client)
    uid = user["user_id"]
    role = f"orders-{uuid.uuid4().hex[:6]}"
    root = bearer("*", subject="root")
    await client.put(f"{USERS}/roles/{role}", json={"scopes": ["auth:users:admin"]}, headers=root)
    assert (await client.put(f"{USERS}/{uid}/roles/{role}", headers=root)).status_code == 200
    key = await api_key(client, user, root, ["auth:users:admin", "auth:users:read"])
    assert (await client.get(USERS, params={"limit": 1}, headers=key)).status_code == 200

    narrow = bearer("auth:users:admin", subject="admin-2")
    r = await client.delete(f"{USERS}/{uid}/roles/user", headers=narrow)  # holds less than the role
    assert r.status_code == 403 and set(fields_of(r)) == {"role"}
    assert (await client.delete(f"{USERS}/{uid}/roles/{role}", headers=root)).status_code == 204
    r = await client.get(USERS, params={"limit": 1}, headers=key)
    assert r.status_code == 403 and r.json()["required_scopes"] == ["auth:users:admin"]
    assert (await client.get(f"{USERS}/{uid}", headers=key)).status_code == 200  # what the account still holds


async def test_built_in_roles_cannot_be_emptied_or_stripped_by_a_lesser_admin(client, bearer):
    """An administrator holding auth:users:admin used to empty `admin` and replace `identity-admin`."""
    narrow = bearer(*ADMIN, subject="admin-2")
    r = await client.put(f"{USERS}/roles/admin", json={"scopes": []}, headers=narrow)
    assert r.status_code == 403 and set(fields_of(r)) == {"name"}
    r = await client.put(f"{USERS}/roles/identity-admin", json={"scopes": ["auth:users:read"]}, headers=narrow)
    assert r.status_code == 403 and set(fields_of(r)) == {"name"}
    r = await client.put(f"{USERS}/roles/user", json={"scopes": []}, headers=bearer("*", subject="root"))
    assert r.status_code == 422 and fields_of(r) == ["scopes"]
    roles = {x["name"]: x["scopes"] for x in (await client.get(f"{USERS}/roles", headers=narrow)).json()}
    assert roles["admin"] == ["*"] and "auth:auth:admin" in roles["identity-admin"] and roles["user"]
    custom = f"c-{uuid.uuid4().hex[:6]}"
    await client.put(f"{USERS}/roles/{custom}", json={"scopes": ["commerce:orders:read"]},
                     headers=bearer("*", subject="root"))
    r = await client.delete(f"{USERS}/roles/{custom}", headers=narrow)
    assert r.status_code == 403 and set(fields_of(r)) == {"name"}


async def test_a_lesser_admin_cannot_revoke_a_greater_accounts_api_key(client, bearer):
    """Revoking a key is an action on its account: only the account itself or an administrator who outranks it."""
    user, _ = await register(client)
    uid = user["user_id"]
    root = bearer("*", subject="root")
    assert (await client.put(f"{USERS}/{uid}/roles/identity-admin", headers=root)).status_code == 200
    key = await api_key(client, user, root, ["auth:users:read"])
    key_id = (await client.get(f"{USERS}/{uid}/api-keys", headers=root)).json()[0]["key_id"]

    narrow = bearer(*ADMIN, subject="admin-2")
    r = await client.delete(f"{USERS}/{uid}/api-keys/{key_id}", headers=narrow)
    assert r.status_code == 403 and set(fields_of(r)) == {"user_id"}
    assert (await client.get(f"{USERS}/{uid}", headers=key)).status_code == 200  # still works
    assert (await client.delete(f"{USERS}/{uid}/api-keys/{key_id}", headers=root)).status_code == 204
    assert (await client.get(f"{USERS}/{uid}", headers=key)).status_code == 401


async def test_no_secret_in_the_logs(captured_logs):
    assert SECRETS, "the tests above handled secrets"
    text = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {vars(r)}" for r in captured_logs
    )
    leaked = [s[:6] + "..." for s in SECRETS if s in text]
    assert leaked == []
