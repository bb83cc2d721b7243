"""pv-keys on the real stores: assets, Ed25519 access keys verified offline from the public key,
online revocation checks, ownership transfers that are transactional and idempotent, and objects
that belong to their owner (another principal's asset or key is a 404)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from nexus_ray.deployments.specialized import keys, pv_keys
from nexus_ray.deployments.specialized.keys import crypto
from nexus_ray.deployments.specialized.pv_keys import InvalidAccessKey, verify_offline
from nexus_ray.stores import postgres

pytestmark = pytest.mark.integration

BASE = "/specialized/v1/pv-keys"
ALL = ("specialized:pv-keys:issue", "specialized:pv-keys:verify", "specialized:pv-keys:revoke",
       "specialized:pv-keys:transfer")
ADMIN = "specialized:pv-keys:admin"


def _fields(r) -> list[str]:
    assert r.headers["content-type"] == "application/problem+json", r.text
    return [e["field"] for e in r.json().get("errors", [])]


def _asset() -> str:
    return f"world:1:item:{uuid.uuid4().hex[:10]}"


@pytest.fixture
def staff(bearer):
    """The game service that manages every player's assets: an administrator of pv-keys."""
    return bearer(*ALL, ADMIN, subject="puaboverse-v2")


def _user(bearer, name: str) -> tuple[str, dict[str, str]]:
    """A user holding every pv-keys scope but the admin one: (its id, its Authorization header)."""
    subject = f"{name}-{uuid.uuid4().hex[:8]}"
    return subject, bearer(*ALL, subject=subject)


async def _register_and_issue(client, staff, *, owner="alice", permissions=("owner",)) -> tuple[str, dict]:
    asset = _asset()
    r = await client.post(f"{BASE}/assets", json={"asset_id": asset, "owner": owner}, headers=staff)
    assert r.status_code == 201, r.text
    r = await client.post(f"{BASE}/access-keys", headers=staff,
                          json={"asset_id": asset, "holder": owner, "permissions": list(permissions)})
    assert r.status_code == 201, r.text
    return asset, r.json()


async def test_public_key_route_is_public_and_ed25519(client):
    r = await client.get(f"{BASE}/public-key")
    assert r.status_code == 200
    [jwk] = [k for k in r.json()["keys"] if k["kid"] == (await keys.current_signer("EdDSA", purpose="pv-keys")).kid]
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["alg"] == "EdDSA" and "d" not in jwk
    platform_kids = {k["kid"] for k in (await keys.jwks())["keys"]}
    assert not platform_kids & {k["kid"] for k in r.json()["keys"]}  # separate keys, separate JWKS


async def test_issue_then_verify_offline_with_only_the_public_key(client, staff):
    asset, issued = await _register_and_issue(client, staff, permissions=("enter", "use"))
    assert issued["holder"] == "alice" and issued["state"] == "active"
    jwks = (await client.get(f"{BASE}/public-key")).json()
    claims = verify_offline(issued["access_key"], jwks, asset_id=asset, permission="use")
    assert claims["jti"] == issued["key_id"] and claims["sub"] == "alice" and claims["perms"] == ["enter", "use"]

    # Also from the bare key: a JWK, PEM or raw 32 bytes -- whatever an offline verifier ships with.
    jwk = next(k for k in jwks["keys"] if k["kid"] == issued["kid"])
    key = pv_keys.offline.public_keys(jwk)[jwk["kid"]]
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for form in (jwk, pem, pem.decode(), raw, key):
        assert verify_offline(issued["access_key"], form)["asset"] == asset


async def test_offline_refusals(client, staff):
    _asset, issued = await _register_and_issue(client, staff, permissions=("enter",))
    jwks = (await client.get(f"{BASE}/public-key")).json()
    key = issued["access_key"]
    head, _body, sig = key.split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps(
        {**verify_offline(key, jwks), "perms": ["owner"]}).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidAccessKey) as err:  # holder upgraded its own permissions
        verify_offline(f"{head}.{forged_body}.{sig}", jwks)
    assert err.value.reason == "signature"
    stranger = crypto.generate("EdDSA")
    with pytest.raises(InvalidAccessKey) as err:
        verify_offline(key, {"keys": [stranger.jwk]})
    assert err.value.reason == "unknown_key"
    with pytest.raises(InvalidAccessKey) as err:  # the right kid, the wrong key
        verify_offline(key, stranger.private_key.public_key())
    assert err.value.reason == "signature"
    with pytest.raises(InvalidAccessKey) as err:
        verify_offline(key, jwks, now=issued["expires_at"] + 1)
    assert err.value.reason == "expired"
    with pytest.raises(InvalidAccessKey) as err:
        verify_offline(key, jwks, now=issued["issued_at"] - 60)
    assert err.value.reason == "not_yet_valid"
    with pytest.raises(InvalidAccessKey) as err:
        verify_offline(key, jwks, asset_id="world:other")
    assert err.value.reason == "asset"
    with pytest.raises(InvalidAccessKey) as err:
        verify_offline(key, jwks, permission="edit")
    assert err.value.reason == "permission"
    with pytest.raises(pv_keys.MalformedAccessKey):
        verify_offline("garbage", jwks)


async def test_online_verify_and_revocation(client, staff):
    asset, issued = await _register_and_issue(client, staff)
    r = await client.post(f"{BASE}/access-keys/verify", headers=staff,
                          json={"access_key": issued["access_key"], "asset_id": asset, "permission": "owner"})
    assert r.status_code == 200 and r.json()["valid"] and r.json()["claims"]["jti"] == issued["key_id"]
    r = await client.post(f"{BASE}/access-keys/verify", headers=staff,
                          json={"access_key": issued["access_key"], "permission": "edit"})
    assert r.json() == {"valid": False, "reason": "permission", "claims": None}

    r = await client.post(f"{BASE}/access-keys/{issued['key_id']}/revoke", json={"reason": "lost device"},
                          headers=staff)
    assert r.status_code == 200 and r.json()["state"] == "revoked" and r.json()["revoked_reason"] == "lost device"
    r = await client.post(f"{BASE}/access-keys/verify", headers=staff, json={"access_key": issued["access_key"]})
    assert r.json()["valid"] is False and r.json()["reason"] == "revoked"
    status = await client.get(f"{BASE}/access-keys/{issued['key_id']}/status", headers=staff)
    assert status.status_code == 200 and status.json()["state"] == "revoked"
    # Offline verification cannot know: that is what the status route and revocation list are for.
    assert verify_offline(issued["access_key"], await pv_keys.public_keys())["jti"] == issued["key_id"]
    again = await client.post(f"{BASE}/access-keys/{issued['key_id']}/revoke", headers=staff)
    assert again.status_code == 200 and again.json()["revoked_reason"] == "lost device"

    revoked = []
    query: dict = {"limit": 2}
    while True:
        page = (await client.get(f"{BASE}/revocations", params=query, headers=staff)).json()
        revoked += [i["key_id"] for i in page["items"]]
        if not page["more"]:
            break
        query = {"limit": 2, **page["next"]}
    assert issued["key_id"] in revoked and len(revoked) == len(set(revoked))


async def test_malformed_access_key_is_a_422_naming_it(client, staff):
    for bad in ("not-a-key", "a.b.c"):
        r = await client.post(f"{BASE}/access-keys/verify", json={"access_key": bad}, headers=staff)
        assert r.status_code == 422 and _fields(r) == ["access_key"], r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"asset_id": "x", "holder": "h", "permissions": []}, "permissions"),
        ({"asset_id": "x", "holder": "h", "permissions": ["Bad Perm"]}, "permissions[0]"),
        ({"asset_id": "bad asset", "holder": "h", "permissions": ["enter"]}, "asset_id"),
        ({"asset_id": "x", "permissions": ["enter"]}, "holder"),
        ({"asset_id": "x", "holder": "h", "permissions": ["enter"], "ttl_s": 5}, "ttl_s"),
        ({"asset_id": "x", "holder": "h", "permissions": ["enter"], "ttl_s": 10**9}, "ttl_s"),
        ({"asset_id": "never-registered", "holder": "h", "permissions": ["enter"]}, "asset_id"),
    ],
)
async def test_issue_input_errors_name_the_field(client, staff, body, field):
    r = await client.post(f"{BASE}/access-keys", json=body, headers=staff)
    assert 400 <= r.status_code < 500, r.text
    assert _fields(r) == [field]


async def test_register_asset_is_idempotent_per_owner(client, staff):
    asset = _asset()
    r1 = await client.post(f"{BASE}/assets", json={"asset_id": asset, "owner": "bob"}, headers=staff)
    r2 = await client.post(f"{BASE}/assets", json={"asset_id": asset, "owner": "bob"}, headers=staff)
    r3 = await client.post(f"{BASE}/assets", json={"asset_id": asset, "owner": "eve"}, headers=staff)
    assert (r1.status_code, r2.status_code, r3.status_code) == (201, 200, 409)
    assert _fields(r3) == ["owner"]


async def test_scopes(client, bearer):
    r = await client.post(f"{BASE}/access-keys", json={"asset_id": "x", "holder": "h", "permissions": ["enter"]},
                          headers=bearer("specialized:pv-keys:verify"))
    assert r.status_code == 403 and r.json()["required_scopes"] == ["specialized:pv-keys:issue"]
    r = await client.post(f"{BASE}/assets/x/transfer", json={"from_holder": "a", "to_holder": "b"},
                          headers={**bearer("specialized:pv-keys:issue"), "Idempotency-Key": "k-12345678"})
    assert r.status_code == 403


async def test_transfer_revokes_old_keys_and_issues_a_new_one(client, staff):
    asset, first = await _register_and_issue(client, staff, owner="alice")
    second = (await client.post(f"{BASE}/access-keys", headers=staff, json={
        "asset_id": asset, "holder": "alice", "permissions": ["enter"]})).json()
    guest = (await client.post(f"{BASE}/access-keys", headers=staff, json={
        "asset_id": asset, "holder": "guest", "permissions": ["enter"]})).json()
    idem = {**staff, "Idempotency-Key": f"transfer-{uuid.uuid4().hex}"}
    body = {"from_holder": "alice", "to_holder": "carol"}
    r = await client.post(f"{BASE}/assets/{asset}/transfer", json=body, headers=idem)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["replayed"] is False
    assert sorted(result["revoked_key_ids"]) == sorted([first["key_id"], second["key_id"]])
    new = result["access_key"]
    assert new["holder"] == "carol" and new["permissions"] == ["owner"]
    assert verify_offline(new["access_key"], await pv_keys.public_keys(), asset_id=asset, permission="owner")

    asset_now = (await client.get(f"{BASE}/assets/{asset}", headers=staff)).json()
    assert asset_now["owner"] == "carol"
    assert {k["key_id"] for k in asset_now["active_keys"]} == {new["key_id"], guest["key_id"]}
    for old in (first, second):
        v = await client.post(f"{BASE}/access-keys/verify", json={"access_key": old["access_key"]}, headers=staff)
        assert v.json()["reason"] == "revoked"

    # The same request again: the same result, the very same key, nothing changed.
    again = await client.post(f"{BASE}/assets/{asset}/transfer", json=body, headers=idem)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["access_key"]["access_key"] == new["access_key"]
    assert again.json()["revoked_key_ids"] == result["revoked_key_ids"]
    # The same key with another request: refused.
    other = await client.post(f"{BASE}/assets/{asset}/transfer", json={**body, "to_holder": "dave"}, headers=idem)
    assert other.status_code == 409 and _fields(other) == ["Idempotency-Key"]
    # alice no longer owns it.
    r = await client.post(f"{BASE}/assets/{asset}/transfer", json={"from_holder": "alice", "to_holder": "dave"},
                          headers={**staff, "Idempotency-Key": f"transfer-{uuid.uuid4().hex}"})
    assert r.status_code == 409 and _fields(r) == ["from_holder"]


async def test_transfer_input_errors(client, staff):
    asset, _ = await _register_and_issue(client, staff)
    r = await client.post(f"{BASE}/assets/{asset}/transfer", json={"from_holder": "alice", "to_holder": "bob"},
                          headers=staff)
    assert r.status_code == 422 and _fields(r) == ["Idempotency-Key"], r.text
    h = {**staff, "Idempotency-Key": f"t-{uuid.uuid4().hex}"}
    r = await client.post(f"{BASE}/assets/{asset}/transfer", json={"from_holder": "alice", "to_holder": "alice"},
                          headers=h)
    assert r.status_code == 422 and _fields(r) == ["to_holder"]
    r = await client.post(f"{BASE}/assets/world:none/transfer", json={"from_holder": "a", "to_holder": "b"},
                          headers=h)
    assert r.status_code == 404 and _fields(r) == ["asset_id"]


async def test_concurrent_transfers_with_one_key_happen_once(client, staff):
    asset, _ = await _register_and_issue(client, staff, owner="alice")
    idem = {**staff, "Idempotency-Key": f"race-{uuid.uuid4().hex}"}
    body = {"from_holder": "alice", "to_holder": "zed", "permissions": ["owner", "trade"]}
    results = await asyncio.gather(*(client.post(f"{BASE}/assets/{asset}/transfer", json=body, headers=idem)
                                     for _ in range(6)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert sum(not r.json()["replayed"] for r in results) == 1
    assert len({r.json()["access_key"]["access_key"] for r in results}) == 1
    pg = await postgres.pool()
    assert await pg.fetchval("SELECT count(*) FROM pv_access_keys WHERE asset_id = $1 AND holder = 'zed'", asset) == 1


async def test_concurrent_transfers_from_one_owner_only_one_wins(client, staff):
    asset, _ = await _register_and_issue(client, staff, owner="alice")
    results = await asyncio.gather(*(
        client.post(f"{BASE}/assets/{asset}/transfer", json={"from_holder": "alice", "to_holder": f"buyer{i}"},
                    headers={**staff, "Idempotency-Key": f"buy-{i}-{uuid.uuid4().hex}"})
        for i in range(5)
    ))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409, 409, 409, 409]
    winner = next(r.json() for r in results if r.status_code == 200)
    assert (await pv_keys.get_asset(asset))["owner"] == winner["to_holder"]


async def test_access_key_signatures_are_audited_by_key_service(client, staff):
    _asset_id, issued = await _register_and_issue(client, staff)
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "SELECT * FROM key_audit WHERE action = 'sign' AND purpose = 'pv-keys' AND detail->>'jti' = $1",
        issued["key_id"],
    )
    assert row is not None and row["actor"] == "puaboverse-v2" and row["kid"] == issued["kid"]
    assert issued["access_key"] not in json.dumps(dict(row), default=str)
    assert time.time() < issued["expires_at"]


async def test_another_principals_asset_and_keys_are_not_found_and_stay_untouched(client, bearer, staff):
    alice, as_alice = _user(bearer, "alice")
    mallory, as_mallory = _user(bearer, "mallory")
    guest, as_guest = _user(bearer, "guest")
    asset = _asset()
    r = await client.post(f"{BASE}/assets", json={"asset_id": asset, "owner": alice}, headers=as_alice)
    assert r.status_code == 201, r.text
    owner_key = (await client.post(f"{BASE}/access-keys", headers=as_alice, json={
        "asset_id": asset, "holder": alice, "permissions": ["owner"]})).json()
    guest_key = (await client.post(f"{BASE}/access-keys", headers=as_alice, json={
        "asset_id": asset, "holder": guest, "permissions": ["enter"]})).json()
    assert owner_key["holder"] == alice and guest_key["holder"] == guest

    # What any holder of the pv-keys scopes could do to alice's asset before: read it, issue itself an
    # owner key, read and revoke her key, and transfer the asset to itself. Each reads as "no such object".
    def attempts(asset_id: str, key_id: str) -> list[tuple[str, str, dict | None, str]]:
        return [
            ("GET", f"{BASE}/assets/{asset_id}", None, "asset_id"),
            ("POST", f"{BASE}/access-keys", {"asset_id": asset_id, "holder": mallory, "permissions": ["owner"]},
             "asset_id"),
            ("GET", f"{BASE}/access-keys/{key_id}/status", None, "key_id"),
            ("POST", f"{BASE}/access-keys/{key_id}/revoke", {"reason": "mine now"}, "key_id"),
            ("POST", f"{BASE}/assets/{asset_id}/transfer", {"from_holder": alice, "to_holder": mallory}, "asset_id"),
        ]

    nowhere, no_key = _asset(), "pvk_" + "0" * 24
    tried = zip(attempts(asset, owner_key["key_id"]), attempts(nowhere, no_key), strict=True)
    for (method, path, body, field), (_, path_of_nothing, body_of_nothing, _) in tried:
        idem = {**as_mallory, "Idempotency-Key": f"mallory-{uuid.uuid4().hex}"}
        r = await client.request(method, path, json=body, headers=idem)
        assert r.status_code == 404 and _fields(r) == [field], (path, r.text)
        # Word for word what a missing object gets: the answer does not tell that the asset exists.
        nothing = await client.request(method, path_of_nothing, json=body_of_nothing, headers=idem)
        assert nothing.status_code == 404
        unnamed = (r.json()["detail"].replace(asset, "?").replace(owner_key["key_id"], "?"),
                   nothing.json()["detail"].replace(nowhere, "?").replace(no_key, "?"))
        assert unnamed[0] == unnamed[1], path
    # Registering an asset in someone else's name is refused too.
    r = await client.post(f"{BASE}/assets", json={"asset_id": _asset(), "owner": alice}, headers=as_mallory)
    assert r.status_code == 403 and r.json()["required_scopes"] == [ADMIN]

    # Nothing changed: alice still owns it, her key still verifies, mallory holds no key to it.
    now = await pv_keys.get_asset(asset)
    assert now["owner"] == alice
    assert {k["key_id"] for k in now["active_keys"]} == {owner_key["key_id"], guest_key["key_id"]}
    assert (await pv_keys.verify(owner_key["access_key"], asset_id=asset, permission="owner"))["sub"] == alice

    # A key's holder sees and may give up its own key, and nothing else of the asset.
    assert (await client.get(f"{BASE}/access-keys/{guest_key['key_id']}/status", headers=as_guest)).status_code == 200
    for path in (f"{BASE}/assets/{asset}", f"{BASE}/access-keys/{owner_key['key_id']}/status"):
        assert (await client.get(path, headers=as_guest)).status_code == 404
    r = await client.post(f"{BASE}/access-keys/{owner_key['key_id']}/revoke", headers=as_guest)
    assert r.status_code == 404
    r = await client.post(f"{BASE}/access-keys/{guest_key['key_id']}/revoke", headers=as_guest)
    assert r.status_code == 200 and r.json()["state"] == "revoked"

    # The owner and an administrator may.
    assert (await client.get(f"{BASE}/assets/{asset}", headers=as_alice)).json()["owner"] == alice
    assert (await client.get(f"{BASE}/assets/{asset}", headers=staff)).json()["owner"] == alice
    r = await client.post(f"{BASE}/assets/{asset}/transfer", json={"from_holder": alice, "to_holder": guest},
                          headers={**as_alice, "Idempotency-Key": f"gift-{uuid.uuid4().hex}"})
    assert r.status_code == 200 and r.json()["to_holder"] == guest
    # Once transferred it is the new owner's: alice is now the stranger.
    assert (await client.get(f"{BASE}/assets/{asset}", headers=as_alice)).status_code == 404
    assert (await client.get(f"{BASE}/assets/{asset}", headers=as_guest)).json()["owner"] == guest


async def test_idempotency_keys_belong_to_the_principal_that_sent_them(client, bearer, staff):
    alice, as_alice = _user(bearer, "alice")
    bob, as_bob = _user(bearer, "bob")
    asset_a, asset_b = _asset(), _asset()
    for asset, owner, headers in ((asset_a, alice, as_alice), (asset_b, bob, as_bob)):
        r = await client.post(f"{BASE}/assets", json={"asset_id": asset, "owner": owner}, headers=headers)
        assert r.status_code == 201, r.text
    shared = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    alice_body = {"from_holder": alice, "to_holder": "carol"}

    first = await client.post(f"{BASE}/assets/{asset_a}/transfer", json=alice_body, headers={**as_alice, **shared})
    assert first.status_code == 200 and first.json()["replayed"] is False
    # Another principal repeating alice's request with her key used to be handed her result, carol's
    # owner key included (replayed: true). An administrator makes a transfer of its own instead: alice
    # no longer holds the asset.
    r = await client.post(f"{BASE}/assets/{asset_a}/transfer", json=alice_body, headers={**staff, **shared})
    assert r.status_code == 409 and _fields(r) == ["from_holder"], r.text
    # bob's own transfer with the same key is his, not "already used for another request".
    bob_body = {"from_holder": bob, "to_holder": "dave"}
    mine = await client.post(f"{BASE}/assets/{asset_b}/transfer", json=bob_body, headers={**as_bob, **shared})
    assert mine.status_code == 200, mine.text
    assert mine.json()["replayed"] is False and mine.json()["to_holder"] == "dave"

    # Each replays its own result.
    again_a = await client.post(f"{BASE}/assets/{asset_a}/transfer", json=alice_body, headers={**as_alice, **shared})
    again_b = await client.post(f"{BASE}/assets/{asset_b}/transfer", json=bob_body, headers={**as_bob, **shared})
    assert again_a.json()["replayed"] and again_a.json()["access_key"] == first.json()["access_key"]
    assert again_b.json()["replayed"] and again_b.json()["access_key"] == mine.json()["access_key"]
