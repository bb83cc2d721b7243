"""ledger-mgr: double-entry accounts, immutable balanced entries, holds, reconciliation, statements.

Routes in :mod:`.views`; logic (and the design under concurrency: sharded balances, lock
order, idempotency) in :mod:`.service`; ``background`` voids expired holds. Other
namespaces (finance) call the functions in ``exports`` with
:func:`nexus_ray.deployments.kit.calls.call`, keyword arguments only.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from nexus_ray.exceptions import ValidationFailed

from . import service
from .currencies import known
from .models import AccountRead, AccountType, Balance, EntryRead, HoldRead, ItemResult
from .views import router

background = [service.expire_holds_forever]


# Cross-namespace callers are platform services that authorised their own callers at their edge:
# they act as ``caller`` (which scopes their idempotency keys) and may draw on any account.


async def post_transfer(
    *, caller: str, debit_account_id: UUID | str, credit_account_id: UUID | str, amount: int, currency: str,
    idempotency_key: str, description: str = "", metadata: dict[str, Any] | None = None,
) -> EntryRead:
    """Post a transfer; the same ``idempotency_key`` (per ``caller``) with the same arguments returns the first."""
    req = service.transfer_request(
        debit_account_id=UUID(str(debit_account_id)), credit_account_id=UUID(str(credit_account_id)), amount=amount,
        currency=currency, description=description, metadata=metadata, idempotency_key=idempotency_key)
    entry, _ = await service.post_one(caller=caller, privileged=True, request=req)
    return entry


async def post_transfers(*, caller: str, transfers: list[dict[str, Any]]) -> list[ItemResult]:
    """Post many transfers in one transaction, each accepted or refused on its own (the keys of
    :func:`post_transfer`'s arguments each); their results in order: ``posted``, ``replayed`` or ``refused``.

    For a caller that has many at once (billing's postings of concurrent captures): one transaction instead of one
    each.
    """
    requests = [service.transfer_request(
        debit_account_id=UUID(str(t["debit_account_id"])), credit_account_id=UUID(str(t["credit_account_id"])),
        amount=t["amount"], currency=t["currency"], description=t.get("description", ""),
        metadata=t.get("metadata"), idempotency_key=t["idempotency_key"]) for t in transfers]
    return await service.post_entries(caller=caller, privileged=True, requests=requests)


async def post_entry(
    *, caller: str, lines: list[dict[str, Any]], idempotency_key: str, description: str = "",
    metadata: dict[str, Any] | None = None,
) -> EntryRead:
    """Post a balanced entry of several lines (``{"account_id", "side", "amount", "currency"}`` each) at once.

    For a movement that must not be half-posted: a repayment's principal and interest, say.
    """
    req = service.entry_request(
        lines=[service.Line(UUID(str(ln["account_id"])), ln["side"], ln["amount"], ln["currency"]) for ln in lines],
        description=description, metadata=metadata, idempotency_key=idempotency_key)
    entry, _ = await service.post_one(caller=caller, privileged=True, request=req)
    return entry


async def open_account(
    *, caller: str, owner: str, name: str, type: AccountType, currency: str, allow_negative: bool = False,
    metadata: dict[str, Any] | None = None,
) -> AccountRead:
    """Open an account for ``owner`` (a principal, or ``platform``) in ``currency`` (ISO 4217 or a token's code)."""
    if not known(currency):
        raise ValidationFailed.for_field("currency", "is not an ISO 4217 currency or token code the ledger knows")
    return await service.create_account(
        caller=caller, privileged=True, name=name, type=type, currency=currency, allow_negative=allow_negative,
        owner=owner, shards=None, metadata=metadata or {})


async def place_hold(
    *, caller: str, debit_account_id: UUID | str, credit_account_id: UUID | str, amount: int, currency: str,
    idempotency_key: str, expires_in_s: int = 3600, description: str = "", metadata: dict[str, Any] | None = None,
) -> HoldRead:
    hold, _ = await service.place_hold(
        caller=caller, privileged=True, debit_account_id=UUID(str(debit_account_id)),
        credit_account_id=UUID(str(credit_account_id)), amount=amount, currency=currency, expires_in_s=expires_in_s,
        description=description, metadata=metadata, idempotency_key=idempotency_key)
    return hold


async def capture_hold(*, caller: str, hold_id: UUID | str, idempotency_key: str, amount: int | None = None
                       ) -> HoldRead:
    hold, _ = await service.capture_hold(hold_id=UUID(str(hold_id)), caller=caller, privileged=True, amount=amount,
                                         idempotency_key=idempotency_key)
    return hold


async def void_hold(*, caller: str, hold_id: UUID | str) -> HoldRead:
    return await service.void_hold(hold_id=UUID(str(hold_id)), caller=caller, privileged=True)


async def balance(*, account_id: UUID | str) -> Balance:
    return await service.balance(account_id=UUID(str(account_id)))


#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"post_transfer": post_transfer, "post_transfers": post_transfers, "post_entry": post_entry,
           "open_account": open_account, "place_hold": place_hold, "capture_hold": capture_hold,
           "void_hold": void_hold, "balance": balance}

__all__ = ["background", "exports", "router"]
