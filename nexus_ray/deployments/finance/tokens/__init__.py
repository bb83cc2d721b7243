"""token-mgr: token definitions with supply caps, mint, burn and transfer on the ledger, vesting, balances.

Routes in :mod:`.views`; the cap under concurrency, the ledger accounts and the vesting
releases in :mod:`.service`; the vesting arithmetic in :mod:`.vesting`. ``background``
releases ended vesting periods. Emits ``token.operation`` (every posted mint, burn,
transfer and grant) and ``token.vesting.released``, in the transaction of the change.
"""

from __future__ import annotations

from . import service
from .views import router

background = [service.release_vesting_forever]

__all__ = ["background", "router"]
