"""Keyed digests: how every credential the platform stores as a keyed hash is hashed, under a rotatable key.

API keys, OAuth client secrets, codes and refresh tokens, legacy session ids, lockout keys and
email-verification tokens are all kept as HMAC-SHA256 of ``<purpose>:<value>`` under the master
key, so a copy of a store yields nothing usable. The purpose separates the uses: a digest made
for one cannot be replayed as another.

Every digest starts with the id of the key that made it (4 bytes: a hash of the key, never
the key), so the master key can rotate: ``master_key`` makes new digests, and digests made
under one of ``previous_master_keys`` keep verifying until those are removed.

* Compare against a stored digest (the row was found by another id: API keys, client secrets):
  :func:`matches` reads the key id from the stored digest and uses that key.
* Look a row up *by* its digest (codes, refresh tokens, session ids, verification tokens):
  :func:`candidates` gives the digest under every live key, current first; look up all of them.

Digests made before this module (without a key id) are not recognised: the platform had no
production data then, so no migration of old rows exists.
"""

from __future__ import annotations

import hashlib
import hmac

from nexus_ray.config import get_settings

KEY_ID_BYTES = 4
DIGEST_BYTES = KEY_ID_BYTES + hashlib.sha256().digest_size
"""Length of a digest in bytes (its hex form is twice as long)."""

_key_ids: dict[bytes, bytes] = {}


def key_id(secret: bytes) -> bytes:
    """The id of a master key as digests carry it: a hash of the key (which says nothing about it)."""
    found = _key_ids.get(secret)
    if found is None:
        found = _key_ids[secret] = hashlib.sha256(b"nexus-master-key-id:" + secret).digest()[:KEY_ID_BYTES]
    return found


def _keys() -> list[bytes]:
    s = get_settings()
    return [s.master_key.get_secret_value().encode(), *(k.get_secret_value().encode() for k in s.previous_master_keys)]


def _under(secret: bytes, purpose: str, value: str) -> bytes:
    mac = hmac.new(secret, f"{purpose}:{value}".encode(), hashlib.sha256).digest()
    return key_id(secret) + mac


def digest(purpose: str, value: str) -> bytes:
    """The digest of ``value`` for ``purpose`` under the current master key: what to store."""
    return _under(_keys()[0], purpose, value)


def candidates(purpose: str, value: str) -> list[bytes]:
    """The digest of ``value`` under the current and every previous master key: what to look up by."""
    return [_under(k, purpose, value) for k in _keys()]


def matches(stored: bytes, purpose: str, value: str) -> bool:
    """True when ``stored`` is the digest of ``value`` for ``purpose`` under a live master key (constant time)."""
    stored = bytes(stored)
    for secret in _keys():
        if hmac.compare_digest(stored[:KEY_ID_BYTES], key_id(secret)):
            return hmac.compare_digest(stored, _under(secret, purpose, value))
    return False


def hex_digest(purpose: str, value: str) -> str:
    """:func:`digest` in hex, for digests used as (parts of) Redis keys or shown as ids."""
    return digest(purpose, value).hex()


def hex_candidates(purpose: str, value: str) -> list[str]:
    """:func:`candidates` in hex."""
    return [d.hex() for d in candidates(purpose, value)]
