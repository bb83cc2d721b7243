"""key-service's key material: derivation, JWK thumbprints, sealed private keys and envelopes (no store)."""

import time

import pytest
from cryptography.exceptions import InvalidTag

from nexus_ray.config import get_settings
from nexus_ray.deployments.specialized.keys import crypto, service
from nexus_ray.deployments.specialized.keys.crypto import TamperedEnvelope
from nexus_ray.exceptions import ValidationFailed

MASTER = crypto.master_keys("unit-test-master-key-0123456789abcdef")
OTHER = crypto.master_keys("another-master-key-0123456789abcdefgh")


def test_derived_keys_differ_per_purpose_and_master():
    a, b = crypto.derive("m" * 32, "envelope-kek/v1"), crypto.derive("m" * 32, "signing-key-storage/v1")
    assert len(a) == 32 and a != b
    assert crypto.derive("n" * 32, "envelope-kek/v1") != a
    assert MASTER.id != OTHER.id and len(MASTER.id) == 16


def test_rfc7638_thumbprint():
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRX"
        "jBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJ"
        "ZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqb"
        "w0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert crypto.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", crypto.ALGORITHMS)
def test_generated_keys_publish_only_public_members(alg):
    key = crypto.generate(alg)
    assert key.jwk["kid"] == key.kid == crypto.thumbprint(key.jwk)
    assert key.jwk["alg"] == alg and key.jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key.jwk)


@pytest.mark.parametrize("alg", crypto.ALGORITHMS)
def test_sealed_private_key_opens_only_in_its_row(alg):
    key = crypto.generate(alg)
    sealed = crypto.seal_private_key(key.private_key, storage=MASTER.storage, kid=key.kid, alg=alg, purpose="platform")
    opened = crypto.open_private_key(sealed, storage=MASTER.storage, kid=key.kid, alg=alg, purpose="platform")
    assert crypto.public_jwk(opened.public_key(), alg) == key.jwk
    with pytest.raises(InvalidTag):  # copied into another row (purpose), or sealed under another master key
        crypto.open_private_key(sealed, storage=MASTER.storage, kid=key.kid, alg=alg, purpose="pv-keys")
    with pytest.raises(InvalidTag):
        crypto.open_private_key(sealed, storage=OTHER.storage, kid=key.kid, alg=alg, purpose="platform")


def test_envelope_round_trip_uses_a_fresh_data_key_each_time():
    e1 = crypto.seal_envelope(b"card 4242", context="billing:card:1", master=MASTER)
    e2 = crypto.seal_envelope(b"card 4242", context="billing:card:1", master=MASTER)
    assert e1["wrapped_key"] != e2["wrapped_key"] and e1["ciphertext"] != e2["ciphertext"]
    assert crypto.open_envelope(e1, context="billing:card:1", master=MASTER) == b"card 4242"
    assert b"4242" not in repr(e1).encode()


@pytest.mark.parametrize("field", ["wrapped_key", "nonce", "ciphertext"])
def test_any_altered_byte_is_detected(field):
    envelope = crypto.seal_envelope(b"secret payload", context="ctx:1", master=MASTER)
    raw = bytearray(crypto.b64url_decode(envelope[field]))
    for position in (0, len(raw) // 2, len(raw) - 1):
        altered = bytearray(raw)
        altered[position] ^= 0x01
        with pytest.raises(TamperedEnvelope) as err:
            crypto.open_envelope({**envelope, field: crypto.b64url(bytes(altered))}, context="ctx:1", master=MASTER)
        assert err.value.status == 422 and err.value.extra["errors"][0]["field"] == "envelope"


def test_other_context_is_detected():
    envelope = crypto.seal_envelope(b"x", context="tenant:a", master=MASTER)
    with pytest.raises(TamperedEnvelope):
        crypto.open_envelope(envelope, context="tenant:b", master=MASTER)


def test_swapped_wrapped_key_is_detected():
    a = crypto.seal_envelope(b"aaaa", context="c", master=MASTER)
    b = crypto.seal_envelope(b"bbbb", context="c", master=MASTER)
    with pytest.raises(TamperedEnvelope):
        crypto.open_envelope({**a, "wrapped_key": b["wrapped_key"]}, context="c", master=MASTER)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": 2}, "envelope.version"),
        ({"alg": "A128GCM"}, "envelope.alg"),
        ({"master_key_id": OTHER.id}, "envelope.master_key_id"),
        ({"nonce": "!!!"}, "envelope.nonce"),
        ({"nonce": crypto.b64url(b"short")}, "envelope.nonce"),
        ({"wrapped_key": crypto.b64url(b"x" * 10)}, "envelope.wrapped_key"),
        ({"ciphertext": ""}, "envelope.ciphertext"),
    ],
)
def test_malformed_envelope_names_the_field(change, field):
    envelope = crypto.seal_envelope(b"data", context="c", master=MASTER)
    with pytest.raises(ValidationFailed) as err:
        crypto.open_envelope({**envelope, **change}, context="c", master=MASTER)
    assert not isinstance(err.value, TamperedEnvelope)
    assert err.value.extra["errors"][0]["field"] == field


def test_missing_envelope_field_named():
    envelope = crypto.seal_envelope(b"data", context="c", master=MASTER)
    del envelope["ciphertext"]
    with pytest.raises(ValidationFailed) as err:
        crypto.open_envelope(envelope, context="c", master=MASTER)
    assert err.value.extra["errors"][0]["field"] == "envelope.ciphertext"


@pytest.mark.parametrize("context", ["", "has space", "x" * 257, None, "tab\there", "é"])
def test_bad_context_named(context):
    with pytest.raises(ValidationFailed) as err:
        crypto.seal_envelope(b"data", context=context, master=MASTER)
    assert err.value.extra["errors"][0]["field"] == "context"


def test_claims_must_expire_within_the_purpose_overlap():
    platform = service.purpose_of("platform", "ES256")
    now = int(time.time())
    service._check_claims({"exp": now + 60}, platform)
    for claims in ({}, {"exp": "soon"}, {"exp": True}, {"exp": now - 1},
                   {"exp": now + get_settings().token_max_ttl_s + 5}):
        with pytest.raises(ValidationFailed) as err:
            service._check_claims(claims, platform)
        assert err.value.extra["errors"][0]["field"] == "exp"


def test_purposes_restrict_algorithms():
    assert service.purpose_of("pv-keys", "EdDSA").name == "pv-keys"
    with pytest.raises(ValidationFailed) as err:
        service.purpose_of("pv-keys", "RS256")
    assert err.value.extra["errors"][0]["field"] == "alg"
    with pytest.raises(ValidationFailed) as err:
        service.purpose_of("payments")
    assert err.value.extra["errors"][0]["field"] == "purpose"
