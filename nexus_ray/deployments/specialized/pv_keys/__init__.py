"""pv-keys: Ed25519-signed access keys for virtual-world assets; issue, verify (offline too), revoke, transfer.

Routes under ``/specialized/v1/pv-keys`` (see :mod:`.views`). Python API (see :mod:`.service`)::

    await issue(asset_id=..., holder=..., permissions=["enter"])   -> record with "access_key"
    await verify(access_key, asset_id=..., permission=...)         -> claims (online: revocation too)
    await revoke(key_id=...)
    await transfer(asset_id=..., from_holder=..., to_holder=..., idempotency_key=...)
    verify_offline(access_key, public_key)                         -> claims (no network, no store)

Objects belong to someone: given ``caller=<principal>``, a call acts only on that principal's
assets (and keys it holds); anything else is NotFound. Without it (trusted in-process callers,
administrators) a call acts on every asset.
"""

from .offline import InvalidAccessKey, MalformedAccessKey, verify_offline
from .service import get_asset, issue, public_keys, register_asset, revocations, revoke, status, transfer, verify
from .views import router

__all__ = [
    "InvalidAccessKey",
    "MalformedAccessKey",
    "get_asset",
    "issue",
    "public_keys",
    "register_asset",
    "revocations",
    "revoke",
    "router",
    "status",
    "transfer",
    "verify",
    "verify_offline",
]
