"""key-service on the real stores: JWKS, signing keys sealed at rest, rotation and revocation routes,
envelope encryption with tamper detection, an audit that records every use and no key material, and
master-key rotation (what the old key sealed keeps working, and is re-sealed under the new one)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization

from nexus_ray.config import get_settings
from nexus_ray.deployments.specialized import keys
from nexus_ray.deployments.specialized.keys import crypto
from nexus_ray.deployments.specialized.keys import service as key_service
from nexus_ray.edge import tokens
from nexus_ray.stores import postgres

pytestmark = pytest.mark.integration

BASE = "/specialized/v1/keys"
ADMIN = "specialized:keys:admin"


def _fields(r) -> list[str]:
    assert r.headers["content-type"] == "application/problem+json", r.text
    return [e["field"] for e in r.json().get("errors", [])]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_jwks_is_public_and_holds_only_public_keys(client, migrated):
    for alg in crypto.ALGORITHMS:
        await keys.current_signer(alg)
    r = await client.get(f"{BASE}/jwks")
    assert r.status_code == 200
    assert r.headers["cache-control"].startswith("public, max-age=")
    jwks = r.json()["keys"]
    assert {k["alg"] for k in jwks} >= set(crypto.ALGORITHMS)
    for k in jwks:
        assert k["use"] == "sig" and k["kid"] == crypto.thumbprint(k)
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(k)
    assert jwks == (await keys.jwks())["keys"]


async def test_private_keys_are_sealed_at_rest(migrated):
    signer = await keys.current_signer("RS256")
    der = signer.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM signing_keys WHERE kid = $1", signer.kid)
    sealed = bytes(row["private_key"])
    assert der not in sealed and der[-64:] not in sealed
    with pytest.raises(ValueError):
        serialization.load_der_private_key(sealed, password=None)
    assert row["master_key_id"] == key_service.master().id
    other = crypto.master_keys("some-other-master-key-0123456789abcdef")
    with pytest.raises(InvalidTag):
        crypto.open_private_key(sealed, storage=other.storage, kid=signer.kid, alg="RS256", purpose="platform")


async def test_signing_key_routes_need_the_admin_scope(client, bearer):
    for method, path, body in (
        ("GET", f"{BASE}/signing-keys", None),
        ("POST", f"{BASE}/signing-keys/rotate", {"alg": "ES256"}),
        ("POST", f"{BASE}/signing-keys/abc/revoke", None),
    ):
        r = await client.request(method, path, json=body, headers=bearer("specialized:keys:encrypt"))
        assert r.status_code == 403, (path, r.text)
        assert r.json()["required_scopes"] == [ADMIN]


async def test_list_shows_status_and_no_private_material(client, bearer, migrated):
    await keys.current_signer("ES256")
    r = await client.get(f"{BASE}/signing-keys", headers=bearer(ADMIN))
    assert r.status_code == 200
    items = r.json()["items"]
    current = [k for k in items if k["status"] == "current" and k["purpose"] == "platform"]
    assert {k["alg"] for k in current} >= {"ES256"}
    assert "private_key" not in r.text and '"d"' not in r.text
    r = await client.get(f"{BASE}/signing-keys", params={"purpose": "nope"}, headers=bearer(ADMIN))
    assert r.status_code == 422 and _fields(r) == ["purpose"]


async def test_rotate_route_keeps_the_previous_key_in_the_jwks(client, bearer):
    before = await keys.current_signer("RS256")
    r = await client.post(f"{BASE}/signing-keys/rotate", json={"alg": "RS256"}, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["previous"]["kid"] == before.kid and body["previous"]["status"] == "previous"
    assert body["previous"]["retires_at"] is not None
    assert body["current"]["status"] == "current" and body["current"]["kid"] != before.kid
    kids = [k["kid"] for k in (await client.get(f"{BASE}/jwks")).json()["keys"]]
    assert body["current"]["kid"] in kids and before.kid in kids
    assert (await keys.current_signer("RS256")).kid == body["current"]["kid"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"alg": "HS256"}, "alg"), ({}, "alg"), ({"alg": "ES256", "purpose": "other"}, "purpose"),
     ({"alg": "RS256", "purpose": "pv-keys"}, "alg"), ({"alg": "ES256", "extra": 1}, "extra")],
)
async def test_rotate_refuses_bad_input_naming_the_field(client, bearer, body, field):
    r = await client.post(f"{BASE}/signing-keys/rotate", json=body, headers=bearer(ADMIN))
    assert r.status_code == 422, r.text
    assert _fields(r) == [field]


async def test_revoke_withdraws_a_key_at_once(client, bearer, migrated):
    victim = await keys.current_signer("EdDSA")
    token = await keys.sign(tokens.access_claims("svc", [ADMIN], ttl_s=60), alg="EdDSA")
    assert (await tokens.verify(token))["sub"] == "svc"
    first = await client.post(f"{BASE}/signing-keys/{victim.kid}/revoke", headers=bearer(ADMIN))
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "revoked"
    assert (await keys.current_signer("EdDSA")).kid != victim.kid  # a successor signs now
    assert victim.kid not in [k["kid"] for k in (await keys.jwks())["keys"]]
    await tokens.ring().refresh()  # what every replica does within jwks_cache_s
    r = await client.get(f"{BASE}/signing-keys", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    again = await client.post(f"{BASE}/signing-keys/{victim.kid}/revoke", headers=bearer(ADMIN))
    assert again.status_code == 200 and again.json()["revoked_at"] == first.json()["revoked_at"]
    r = await client.post(f"{BASE}/signing-keys/no-such-key/revoke", headers=bearer(ADMIN))
    assert r.status_code == 404 and _fields(r) == ["kid"]
    r = await client.post(f"{BASE}/signing-keys/bad%20kid/revoke", headers=bearer(ADMIN))
    assert r.status_code == 422 and _fields(r) == ["kid"]


async def test_envelope_round_trip_over_http(client, bearer):
    h = bearer("specialized:keys:encrypt", "specialized:keys:decrypt", subject="billing-service")
    secret = b"4242 4242 4242 4242"
    r = await client.post(f"{BASE}/encrypt", json={"plaintext": _b64(secret), "context": "billing:card:9"}, headers=h)
    assert r.status_code == 200, r.text
    envelope = r.json()
    assert envelope["version"] == 1 and envelope["alg"] == "A256GCM"
    assert "4242" not in json.dumps(envelope)
    r = await client.post(f"{BASE}/decrypt", json={"envelope": envelope, "context": "billing:card:9"}, headers=h)
    assert r.status_code == 200 and base64.b64decode(r.json()["plaintext"]) == secret


async def test_tampered_envelope_and_wrong_context_are_refused(client, bearer):
    h = bearer("specialized:keys:encrypt", "specialized:keys:decrypt")
    envelope = (await client.post(f"{BASE}/encrypt", json={"plaintext": _b64(b"payload"), "context": "c:1"},
                                  headers=h)).json()
    ct = bytearray(crypto.b64url_decode(envelope["ciphertext"]))
    ct[0] ^= 1
    cases = [
        ({**envelope, "ciphertext": crypto.b64url(bytes(ct))}, "c:1"),
        (envelope, "c:2"),
    ]
    for env, context in cases:
        r = await client.post(f"{BASE}/decrypt", json={"envelope": env, "context": context}, headers=h)
        assert r.status_code == 422, r.text
        assert r.json()["type"].endswith("/envelope-tampered") and _fields(r) == ["envelope"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("encrypt", {"plaintext": "not base64!", "context": "c"}, "plaintext"),
        ("encrypt", {"plaintext": "aGk="}, "context"),
        ("encrypt", {"plaintext": "aGk=", "context": "has space"}, "context"),
        ("decrypt", {"context": "c"}, "envelope"),
        ("decrypt", {"envelope": {"version": 1}, "context": "c"}, "envelope.alg"),
    ],
)
async def test_encryption_input_errors_name_the_field(client, bearer, path, body, field):
    h = bearer("specialized:keys:encrypt", "specialized:keys:decrypt")
    r = await client.post(f"{BASE}/{path}", json=body, headers=h)
    assert r.status_code == 422, r.text
    assert field in _fields(r)


async def test_malformed_envelope_fields_named(client, bearer):
    h = bearer("specialized:keys:encrypt", "specialized:keys:decrypt")
    envelope = await keys.encrypt(b"x", context="c")
    for change, field in (({"nonce": "AAAA"}, "envelope.nonce"),
                          ({"master_key_id": "0123456789abcdef"}, "envelope.master_key_id")):
        r = await client.post(f"{BASE}/decrypt", json={"envelope": {**envelope, **change}, "context": "c"}, headers=h)
        assert r.status_code == 422 and _fields(r) == [field], r.text


async def test_encrypt_and_decrypt_scopes_are_separate(client, bearer):
    envelope = await keys.encrypt(b"x", context="c")
    r = await client.post(f"{BASE}/decrypt", json={"envelope": envelope, "context": "c"},
                          headers=bearer("specialized:keys:encrypt"))
    assert r.status_code == 403 and r.json()["required_scopes"] == ["specialized:keys:decrypt"]


async def test_python_api_envelopes(migrated):
    envelope = await keys.encrypt(b"\x00binary\xff", context="pv:asset:1", actor="pv-keys")
    assert await keys.decrypt(envelope, context="pv:asset:1") == b"\x00binary\xff"
    with pytest.raises(keys.TamperedEnvelope):
        await keys.decrypt(envelope, context="pv:asset:2")


async def test_concurrent_signatures_share_audit_writes_and_all_verify(migrated):
    claims = [tokens.access_claims(f"user-{i}", ["a:b"], ttl_s=60) for i in range(40)]
    signed = await asyncio.gather(*(keys.sign(c, actor="load-test") for c in claims))
    for c, t in zip(claims, signed, strict=True):
        assert (await tokens.verify(t))["jti"] == c["jti"]
    pg = await postgres.pool()
    n = await pg.fetchval(
        "SELECT count(DISTINCT detail->>'jti') FROM key_audit WHERE action = 'sign' AND actor = 'load-test' "
        "AND detail->>'jti' = ANY($1::text[])",
        [c["jti"] for c in claims],
    )
    assert n == 40


async def test_sign_refuses_claims_that_outlive_the_overlap(migrated):
    from nexus_ray.exceptions import ValidationFailed

    with pytest.raises(ValidationFailed) as err:
        await keys.sign(tokens.access_claims("u", [], ttl_s=10 * 86400))
    assert err.value.extra["errors"][0]["field"] == "exp"
    with pytest.raises(ValidationFailed):
        tokens.issue("u", [], ttl_s=10 * 86400)


async def test_audit_records_every_use_and_no_key_material(client, bearer, migrated):
    actor = "auditor-probe"
    signer = await keys.current_signer("ES256")
    token = await keys.sign(tokens.access_claims("audited", ["x:y"], ttl_s=60), actor=actor)
    secret = b"do-not-log-this-plaintext"
    envelope = await keys.encrypt(secret, context="audit:probe", actor=actor)
    assert await keys.decrypt(envelope, context="audit:probe", actor=actor) == secret
    with pytest.raises(keys.TamperedEnvelope):
        await keys.decrypt(envelope, context="audit:other", actor=actor)
    rotated = await keys.rotate("ES256", actor=actor)

    r = await client.get(f"{BASE}/audit", params={"limit": 1000}, headers=bearer("specialized:keys:audit"))
    assert r.status_code == 200, r.text
    mine = [row for row in r.json()["items"] if row["actor"] == actor]
    by_action = {}
    for row in mine:
        by_action.setdefault(row["action"], []).append(row)
    assert by_action["sign"][0]["kid"] == signer.kid and by_action["sign"][0]["detail"]["sub"] == "audited"
    assert by_action["encrypt"][0]["kid"] == key_service.master().id
    assert by_action["encrypt"][0]["context"] == "audit:probe"
    assert sorted(row["outcome"] for row in by_action["decrypt"]) == ["ok", "tampered"]
    assert by_action["rotate"][0]["kid"] == rotated["current"]["kid"]
    assert by_action["rotate"][0]["detail"]["previous"] == signer.kid

    # Nothing in the whole audit table is key material, a token or a plaintext.
    pg = await postgres.pool()
    dump = json.dumps([dict(x) for x in await pg.fetch("SELECT * FROM key_audit")], default=str)
    der = signer.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    d = jwt.algorithms.ECAlgorithm.to_jwk(signer.private_key, as_dict=True)["d"]
    for needle in (token, token.split(".")[2], base64.b64encode(der).decode()[:40], d, secret.decode(),
                   envelope["wrapped_key"], envelope["ciphertext"], "PRIVATE KEY"):
        assert needle not in dump
    assert r.json()["next_before"] is None or isinstance(r.json()["next_before"], int)


async def test_audit_paging_and_filters(client, bearer, migrated):
    for _ in range(3):
        await keys.encrypt(b"p", context="paging:probe", actor="pager")
    h = bearer("specialized:keys:audit")
    first = (await client.get(f"{BASE}/audit", params={"action": "encrypt", "limit": 2}, headers=h)).json()
    assert len(first["items"]) == 2 and all(i["action"] == "encrypt" for i in first["items"])
    second = (await client.get(f"{BASE}/audit", params={"action": "encrypt", "limit": 2,
                                                        "before": first["next_before"]}, headers=h)).json()
    assert second["items"][0]["id"] < first["items"][-1]["id"]
    r = await client.get(f"{BASE}/audit", params={"action": "steal"}, headers=h)
    assert r.status_code == 422 and _fields(r) == ["action"]
    r = await client.get(f"{BASE}/audit", headers=bearer(ADMIN))
    assert r.status_code == 403


def _restart_with(monkeypatch, master: str, previous: list[str]) -> None:
    """What a replica restarted with these master keys holds: the settings read again, no signing key unsealed."""
    monkeypatch.setenv("NEXUS_MASTER_KEY", master)
    monkeypatch.setenv("NEXUS_PREVIOUS_MASTER_KEYS", json.dumps(previous))
    get_settings.cache_clear()
    key_service._signers.clear()


async def test_master_key_rotation_keeps_everything_working_and_reseals(client, bearer, monkeypatch, migrated):
    old, new = os.environ["NEXUS_MASTER_KEY"], secrets.token_urlsafe(48)
    old_id, new_id = crypto.master_keys(old).id, crypto.master_keys(new).id
    platform_signer = await keys.current_signer("ES256")
    pv_signer = await keys.current_signer("EdDSA", purpose="pv-keys")
    token_before = await keys.sign(tokens.access_claims("rotating", ["x:y"], ttl_s=600))
    envelope_before = await keys.encrypt(b"sealed under the old key", context="rotation:probe")
    pg = await postgres.pool()
    assert await pg.fetchval("SELECT count(*) FROM signing_keys WHERE master_key_id = $1", old_id) >= 2
    both = bearer(ADMIN, "specialized:keys:encrypt", "specialized:keys:decrypt", subject="key-custodian")
    try:
        # The new master key, the old one kept as previous: what the old one sealed still opens.
        _restart_with(monkeypatch, new, [old])
        assert (await keys.current_signer("ES256")).kid == platform_signer.kid
        assert (await keys.current_signer("EdDSA", purpose="pv-keys")).kid == pv_signer.kid
        token = await keys.sign(tokens.access_claims("rotating", ["x:y"], ttl_s=600))
        assert (await tokens.verify(token))["sub"] == "rotating"
        assert await keys.decrypt(envelope_before, context="rotation:probe") == b"sealed under the old key"
        assert (await keys.encrypt(b"new", context="rotation:probe"))["master_key_id"] == new_id
        assert await pg.fetchval("SELECT count(*) FROM signing_keys WHERE master_key_id = $1", old_id) >= 2

        r = await client.post(f"{BASE}/master-key/reseal", headers=both)
        assert r.status_code == 200, r.text
        assert r.json()["master_key_id"] == new_id and r.json()["unreadable"] == []
        assert {platform_signer.kid, pv_signer.kid} <= set(r.json()["resealed"])
        assert await pg.fetchval("SELECT count(*) FROM signing_keys WHERE master_key_id <> $1", new_id) == 0
        audited = await pg.fetchrow(
            "SELECT * FROM key_audit WHERE action = 'reseal' AND kid = $1 ORDER BY id DESC LIMIT 1",
            platform_signer.kid,
        )
        assert audited["actor"] == "key-custodian"
        assert audited["detail"] == {"from_master_key_id": old_id, "to_master_key_id": new_id}
        again = await client.post(f"{BASE}/master-key/reseal", headers=both)
        assert again.status_code == 200 and again.json()["resealed"] == []  # idempotent
        r = await client.post(f"{BASE}/rewrap", json={"envelope": envelope_before, "context": "rotation:probe"},
                              headers=both)
        assert r.status_code == 200, r.text
        envelope_after = r.json()
        assert envelope_after["master_key_id"] == new_id
        assert envelope_after["ciphertext"] != envelope_before["ciphertext"]

        # The old master key dropped: the re-sealed keys and the re-wrapped envelope work without it.
        _restart_with(monkeypatch, new, [])
        assert (await keys.current_signer("ES256")).kid == platform_signer.kid
        assert (await keys.current_signer("EdDSA", purpose="pv-keys")).kid == pv_signer.kid
        token = await keys.sign(tokens.access_claims("rotated", ["x:y"], ttl_s=600))
        assert (await tokens.verify(token))["sub"] == "rotated"
        assert (await tokens.verify(token_before))["sub"] == "rotating"
        assert await keys.decrypt(envelope_after, context="rotation:probe") == b"sealed under the old key"
        r = await client.post(f"{BASE}/decrypt", json={"envelope": envelope_before, "context": "rotation:probe"},
                              headers=both)
        assert r.status_code == 422 and _fields(r) == ["envelope.master_key_id"]
    finally:
        # Back to the session's master key the same way, for the tests that follow.
        _restart_with(monkeypatch, old, [new])
        await keys.reseal(actor="tests")
        _restart_with(monkeypatch, old, [])
        await tokens.prepare()
    assert await pg.fetchval("SELECT count(*) FROM signing_keys WHERE master_key_id <> $1", old_id) == 0


def _nexus(*args: str, master: str, previous: list[str]) -> subprocess.CompletedProcess:
    """The `nexus` command in a process of its own, on the session's stores, with these master keys."""
    env = {**os.environ, "NEXUS_MASTER_KEY": master, "NEXUS_PREVIOUS_MASTER_KEYS": json.dumps(previous)}
    return subprocess.run([sys.executable, "-m", "nexus_ray.cli", *args], env=env, cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=120)


async def test_nexus_reseal_keys_command(migrated):
    old, new, lost = os.environ["NEXUS_MASTER_KEY"], secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    await keys.current_signer("ES256")
    pg = await postgres.pool()

    def sealed_under() -> set[str]:
        return {r["master_key_id"] for r in rows}

    try:
        done = await asyncio.to_thread(_nexus, "reseal-keys", master=new, previous=[old])
        assert done.returncode == 0, done.stderr
        rows = await pg.fetch("SELECT master_key_id FROM signing_keys")
        assert sealed_under() == {crypto.master_keys(new).id}
        assert f"under master key {crypto.master_keys(new).id}" in done.stdout
        # A master key that is not the one the keys were sealed under, and the right one not given: nothing
        # changes, and the command says which keys it could not open.
        refused = await asyncio.to_thread(_nexus, "reseal-keys", master=lost, previous=[])
        assert refused.returncode == 1 and "NEXUS_PREVIOUS_MASTER_KEYS" in refused.stdout
        rows = await pg.fetch("SELECT master_key_id FROM signing_keys")
        assert sealed_under() == {crypto.master_keys(new).id}
    finally:
        back = await asyncio.to_thread(_nexus, "reseal-keys", master=old, previous=[new])
    assert back.returncode == 0, back.stderr
    rows = await pg.fetch("SELECT master_key_id FROM signing_keys")
    assert sealed_under() == {crypto.master_keys(old).id}
    assert new not in back.stdout + back.stderr and old not in back.stdout + back.stderr
