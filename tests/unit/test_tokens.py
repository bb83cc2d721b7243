"""Token verification refuses everything but a valid ES256 token from the platform's key."""

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nexus_ray.config import get_settings
from nexus_ray.edge import tokens
from nexus_ray.exceptions import Unauthorized


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _claims(**over):
    s = get_settings()
    now = int(time.time())
    return {"iss": s.jwt_issuer, "aud": s.jwt_audience, "sub": "u1", "scope": "a:b", "iat": now, "exp": now + 60,
            **over}


def test_issue_and_verify_round_trip():
    claims = tokens.verify(tokens.issue("alice", ["commerce:orders:read"], ttl_s=60))
    assert claims["sub"] == "alice"
    assert claims["scope"] == "commerce:orders:read"


def test_expired_refused():
    key = tokens.signing_key()
    t = jwt.encode(_claims(exp=int(time.time()) - 120), key.private_key, algorithm="ES256", headers={"kid": key.kid})
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(t)


def test_alg_none_refused():
    t = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims()) + "."
    with pytest.raises(Unauthorized, match="algorithm"):
        tokens.verify(t)


def test_hmac_with_public_key_as_secret_refused():
    pub = tokens.signing_key().public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64(_claims())
    import hashlib
    import hmac

    sig = base64.urlsafe_b64encode(hmac.new(pub, f"{header}.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(Unauthorized):
        tokens.verify(f"{header}.{body}.{sig.decode()}")


def test_other_key_refused():
    other = ec.generate_private_key(ec.SECP256R1())
    t = jwt.encode(_claims(), other, algorithm="ES256", headers={"kid": tokens.signing_key().kid})
    with pytest.raises(Unauthorized, match="invalid"):
        tokens.verify(t)


def test_unknown_kid_refused():
    other = ec.generate_private_key(ec.SECP256R1())
    t = jwt.encode(_claims(), other, algorithm="ES256", headers={"kid": "someone-else"})
    with pytest.raises(Unauthorized, match="unknown key"):
        tokens.verify(t)


def test_wrong_audience_and_issuer_refused():
    key = tokens.signing_key()
    for over, reason in (({"aud": "other-api"}, "audience"), ({"iss": "https://evil"}, "issuer")):
        t = jwt.encode(_claims(**over), key.private_key, algorithm="ES256", headers={"kid": key.kid})
        with pytest.raises(Unauthorized, match=reason):
            tokens.verify(t)


def test_tampered_payload_refused():
    t = tokens.issue("alice", ["a:b"])
    head, _body, sig = t.split(".")
    forged = _b64(_claims(sub="mallory", scope="*"))
    with pytest.raises(Unauthorized):
        tokens.verify(f"{head}.{forged}.{sig}")


def test_garbage_refused():
    with pytest.raises(Unauthorized, match="malformed"):
        tokens.verify("not-a-token")
