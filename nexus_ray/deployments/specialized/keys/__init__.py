"""key-service: signing keys with rotation and overlap, JWKS, envelope encryption, audit of key use.

Routes (under ``/specialized/v1/keys``, see :mod:`.views`); the Python API other services call
in-process (see :mod:`.service`)::

    await sign(claims, alg="ES256")          -> compact JWS with the current key's kid
    await jwks()                             -> {"keys": [...]}
    await rotate("ES256")                    -> {"current": ..., "previous": ...}
    await encrypt(data, context="ctx")       -> envelope (dict)
    await decrypt(envelope, context="ctx")   -> data
    await rewrap(envelope, context="ctx")    -> envelope under the current master key
    await reseal()                           -> signing keys re-sealed under the current master key
"""

from .crypto import TamperedEnvelope
from .service import (
    current_signer,
    decrypt,
    encrypt,
    flush_audit,
    jwks,
    list_keys,
    reseal,
    revoke_key,
    rewrap,
    rotate,
    sign,
    verification_keys,
)
from .views import router

__all__ = [
    "TamperedEnvelope",
    "current_signer",
    "decrypt",
    "encrypt",
    "flush_audit",
    "jwks",
    "list_keys",
    "reseal",
    "revoke_key",
    "rewrap",
    "rotate",
    "router",
    "sign",
    "verification_keys",
]
