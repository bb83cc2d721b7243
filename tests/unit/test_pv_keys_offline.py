"""pv-keys access keys verify offline from the public key alone (no store, no network)."""

import jwt
import pytest

from nexus_ray.deployments.specialized.keys import crypto
from nexus_ray.deployments.specialized.pv_keys import offline
from nexus_ray.deployments.specialized.pv_keys.offline import InvalidAccessKey, MalformedAccessKey, verify_offline

KEY = crypto.generate("EdDSA")
JWKS = {"keys": [KEY.jwk]}
NOW = 1_900_000_000


def _claims(**over):
    base = offline.claims_for(key_id="pvk_" + "a" * 24, holder="alice", asset_id="world:1:sword", permissions=["enter"],
                              issued_at=NOW, expires_at=NOW + 3600, issuer="https://nexus.local")
    return {**base, **over}


def _sign(claims=None, *, key=KEY, typ=offline.TYP, alg="EdDSA", kid=None):
    return jwt.encode(claims or _claims(), key.private_key, algorithm=alg,
                      headers={"kid": kid or key.kid, "typ": typ})


def _reason(access_key, **kw) -> str:
    with pytest.raises(InvalidAccessKey) as err:
        verify_offline(access_key, kw.pop("public_key", JWKS), now=kw.pop("now", NOW + 10), **kw)
    return err.value.reason


def test_valid_key_verifies_with_every_form_of_public_key():
    token = _sign()
    public = KEY.private_key.public_key()
    for form in (JWKS, KEY.jwk, public):
        claims = verify_offline(token, form, now=NOW + 10, asset_id="world:1:sword", permission="enter",
                                issuer="https://nexus.local")
        assert claims["sub"] == "alice"


def test_signatures_are_deterministic():
    # What lets a replayed transfer return the very key it issued the first time.
    assert _sign() == _sign()


def test_refusals_say_why():
    other = crypto.generate("EdDSA")
    assert _reason(_sign(key=other)) == "unknown_key"
    assert _reason(_sign(key=other, kid=KEY.kid)) == "signature"
    assert _reason(_sign(), now=NOW + 3600) == "expired"
    assert _reason(_sign(), now=NOW - 1) == "not_yet_valid"
    assert _reason(_sign(), asset_id="world:2") == "asset"
    assert _reason(_sign(), permission="owner") == "permission"
    assert _reason(_sign(), issuer="https://elsewhere") == "issuer"
    assert _reason(_sign(_claims(aud="nexus-api"))) == "audience"
    es = crypto.generate("ES256")
    assert _reason(_sign(key=es, alg="ES256"), public_key={"keys": [KEY.jwk, es.jwk]}) == "algorithm"


def test_leeway_applies_to_both_ends():
    verify_offline(_sign(), JWKS, now=NOW + 3600 + 5, leeway_s=10)
    verify_offline(_sign(), JWKS, now=NOW - 5, leeway_s=10)


@pytest.mark.parametrize("bad", ["", "abc", "a.b", "a.b.c", "x" * 5000, None])
def test_malformed(bad):
    with pytest.raises(MalformedAccessKey):
        verify_offline(bad, JWKS)


def test_platform_token_type_is_not_an_access_key():
    with pytest.raises(InvalidAccessKey):
        verify_offline(_sign(typ="JWT"), JWKS, now=NOW + 10)


@pytest.mark.parametrize("claim", ["jti", "sub", "asset", "perms", "exp", "nbf"])
def test_missing_claims_are_malformed(claim):
    claims = _claims()
    del claims[claim]
    with pytest.raises(MalformedAccessKey):
        verify_offline(_sign(claims), JWKS, now=NOW + 10)
