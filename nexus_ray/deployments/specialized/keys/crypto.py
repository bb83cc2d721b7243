"""Key material of key-service: signing-key generation, JWKs, and AES-256-GCM sealing under the master key.

Pure functions over bytes and key objects (no stores), unit-tested directly.

Every key that protects other keys is derived from ``settings.master_key`` with HKDF-SHA256,
one derivation per purpose, so no derived key is ever used for two things::

    master key ──HKDF──┬── storage key  (info "signing-key-storage/v1")  seals private signing keys at rest
                       ├── envelope KEK (info "envelope-kek/v1")         wraps the per-call data keys
                       └── master key id (info "master-key-id/v1")       names the master key; reveals nothing

An envelope (:func:`seal_envelope`) is a fresh 256-bit data key that encrypts the plaintext,
wrapped under the envelope KEK; both encryptions carry the caller's context as associated
data, so an envelope opens only under the context it was sealed for and any altered byte
(or a context swap) fails authentication with :class:`TamperedEnvelope`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from nexus_ray.exceptions import ValidationFailed

#: Signing algorithms key-service generates keys for (JOSE names).
ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "EdDSA")

ENVELOPE_VERSION = 1
ENVELOPE_ALG = "A256GCM"
_NONCE = 12
_TAG = 16
_DATA_KEY = 32
_SALT = b"nexus-ray/key-service"
# Visible ASCII: contexts read like "billing:card:42" and end up in the audit.
_CONTEXT = re.compile(r"^[\x21-\x7e]{1,256}$")


class TamperedEnvelope(ValidationFailed):
    """An envelope whose wrapped key or ciphertext fails authentication under the given context."""

    title, slug = "Envelope Failed Authentication", "envelope-tampered"

    @classmethod
    def create(cls) -> TamperedEnvelope:
        message = "failed authentication: it was altered, or it was sealed for another context"
        return cls(f"envelope {message}", extra={"errors": [{"field": "envelope", "message": message,
                                                              "type": "tampered"}]})


# -- derivation ---------------------------------------------------------------------------------


def derive(master: str | bytes, info: str) -> bytes:
    """A 256-bit key for one ``info`` purpose, derived from the master secret with HKDF-SHA256."""
    secret = master.encode() if isinstance(master, str) else master
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info.encode()).derive(secret)


@dataclass(frozen=True)
class MasterKeys:
    """The keys derived from one master secret."""

    id: str
    storage: AESGCM = field(repr=False)
    kek: AESGCM = field(repr=False)


def master_keys(master: str | bytes) -> MasterKeys:
    """The storage key, envelope KEK and id of ``master``."""
    return MasterKeys(
        id=derive(master, "master-key-id/v1")[:8].hex(),
        storage=AESGCM(derive(master, "signing-key-storage/v1")),
        kek=AESGCM(derive(master, "envelope-kek/v1")),
    )


# -- signing keys -------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Bytes of unpadded (or padded) base64url text; ValueError when it is not base64url."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url: the key's ``kid``."""
    members = {k: jwk[k] for k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


def public_jwk(public_key: Any, alg: str) -> dict[str, Any]:
    """The public JWK (with ``kid``, ``alg``, ``use``) of a signing key's public half."""
    if alg == "RS256":
        raw = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif alg == "ES256":
        raw = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif alg == "EdDSA":
        raw = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise ValueError(f"unsupported signing algorithm {alg}")
    jwk = {k: raw[k] for k in _THUMBPRINT_MEMBERS[raw["kty"]]}
    return {**jwk, "kid": thumbprint(jwk), "alg": alg, "use": "sig"}


@dataclass(frozen=True)
class GeneratedKey:
    """A new signing key: its id, algorithm, private key and public JWK."""

    kid: str
    alg: str
    private_key: Any = field(repr=False)
    jwk: dict[str, Any]


def generate(alg: str) -> GeneratedKey:
    """A new signing key for ``alg``: RSA 2048 (RS256), P-256 (ES256) or Ed25519 (EdDSA)."""
    if alg == "RS256":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported signing algorithm {alg}")
    jwk = public_jwk(key.public_key(), alg)
    return GeneratedKey(kid=jwk["kid"], alg=alg, private_key=key, jwk=jwk)


def _key_aad(kid: str, alg: str, purpose: str) -> bytes:
    # Binds a sealed private key to its row: a sealed key copied into another row does not open.
    return f"nexus-ray/signing-key/v1|{purpose}|{alg}|{kid}".encode()


def seal_private_key(private_key: Any, *, storage: AESGCM, kid: str, alg: str, purpose: str) -> bytes:
    """``nonce || AES-GCM(PKCS#8 DER)`` of a private key, bound to its kid, algorithm and purpose."""
    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = os.urandom(_NONCE)
    return nonce + storage.encrypt(nonce, der, _key_aad(kid, alg, purpose))


def open_private_key(sealed: bytes, *, storage: AESGCM, kid: str, alg: str, purpose: str) -> Any:
    """The private key sealed by :func:`seal_private_key`; InvalidTag if it or its row was altered."""
    der = storage.decrypt(sealed[:_NONCE], sealed[_NONCE:], _key_aad(kid, alg, purpose))
    return serialization.load_der_private_key(der, password=None)


# -- envelopes ----------------------------------------------------------------------------------


def check_context(context: Any) -> str:
    """``context`` when it is 1 to 256 visible ASCII characters; ValidationFailed naming ``context`` otherwise."""
    if not isinstance(context, str) or not _CONTEXT.match(context):
        raise ValidationFailed.for_field("context", "must be 1 to 256 visible ASCII characters (no spaces)")
    return context


def _envelope_aad(part: str, context: str, master_key_id: str) -> bytes:
    return f"nexus-ray/envelope/v{ENVELOPE_VERSION}|{part}|{master_key_id}|{context}".encode()


def seal_envelope(plaintext: bytes, *, context: str, master: MasterKeys) -> dict[str, Any]:
    """Encrypt ``plaintext`` under a fresh data key wrapped by the master KEK; both bound to ``context``."""
    check_context(context)
    data_key = AESGCM.generate_key(bit_length=256)
    key_nonce, nonce = os.urandom(_NONCE), os.urandom(_NONCE)
    wrapped = key_nonce + master.kek.encrypt(key_nonce, data_key, _envelope_aad("data-key", context, master.id))
    ciphertext = AESGCM(data_key).encrypt(nonce, bytes(plaintext), _envelope_aad("data", context, master.id))
    return {
        "version": ENVELOPE_VERSION,
        "alg": ENVELOPE_ALG,
        "master_key_id": master.id,
        "wrapped_key": b64url(wrapped),
        "nonce": b64url(nonce),
        "ciphertext": b64url(ciphertext),
    }


def _field(envelope: dict[str, Any], name: str, size: int | None = None, minimum: int = 0) -> bytes:
    try:
        raw = b64url_decode(envelope[name])
    except KeyError:
        raise ValidationFailed.for_field(f"envelope.{name}", "is required", "missing") from None
    except ValueError:
        raise ValidationFailed.for_field(f"envelope.{name}", "must be base64url text") from None
    if (size is not None and len(raw) != size) or len(raw) < minimum:
        raise ValidationFailed.for_field(f"envelope.{name}", "has the wrong length")
    return raw


def open_envelope(envelope: Any, *, context: str, master: MasterKeys) -> bytes:
    """The plaintext of an envelope sealed under ``context``.

    ValidationFailed naming the field for a malformed envelope; :class:`TamperedEnvelope`
    when it does not authenticate (altered, or another context).
    """
    check_context(context)
    if not isinstance(envelope, dict):
        raise ValidationFailed.for_field("envelope", "must be an object")
    if envelope.get("version") != ENVELOPE_VERSION:
        raise ValidationFailed.for_field("envelope.version", f"must be {ENVELOPE_VERSION}")
    if envelope.get("alg") != ENVELOPE_ALG:
        raise ValidationFailed.for_field("envelope.alg", f"must be {ENVELOPE_ALG}")
    if envelope.get("master_key_id") != master.id:
        raise ValidationFailed.for_field(
            "envelope.master_key_id", "names a master key this platform does not hold", "unknown_master_key"
        )
    wrapped = _field(envelope, "wrapped_key", size=_NONCE + _DATA_KEY + _TAG)
    nonce = _field(envelope, "nonce", size=_NONCE)
    ciphertext = _field(envelope, "ciphertext", minimum=_TAG)
    try:
        data_key = master.kek.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _envelope_aad("data-key", context, master.id))
        return AESGCM(data_key).decrypt(nonce, ciphertext, _envelope_aad("data", context, master.id))
    except InvalidTag:
        raise TamperedEnvelope.create() from None
