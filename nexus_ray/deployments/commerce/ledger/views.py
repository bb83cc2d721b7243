"""ledger-mgr's routes under ``/commerce/v1/ledger``.

Who may do what: every route needs the ledger's read or write scope; an account, its
statement, an entry or a hold is visible to its owner (or poster) and to holders of the
admin scope, and is a 404 to anyone else. A caller draws only on accounts it owns (an
administrator on any); reversals and the reconciliation report are the administrator's.
Posting requests carry an idempotency key in the ``Idempotency-Key`` header or the
``idempotency_key`` field; a replayed answer has the header ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Request, Response

from nexus_ray.deployments.kit.idempotency import KeyHeader, key_of, mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.errors import json_body_doc, parse_json_body
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import Forbidden, ValidationFailed

from . import service
from .models import (
    OWNER_PATTERN,
    AccountCreate,
    AccountRead,
    BatchCreate,
    BatchResult,
    BatchSummary,
    EntryCreate,
    EntryRead,
    HoldCapture,
    HoldCreate,
    HoldRead,
    Reconciliation,
    ReverseCreate,
    StatementLine,
    TransferCreate,
)
from .settings import LedgerSettings

SCOPES = scopes_of("ledger-mgr")
router = APIRouter()

AccountId = Annotated[UUID, Path(description="The account's id.")]
EntryId = Annotated[UUID, Path(description="The entry's id.")]
HoldId = Annotated[UUID, Path(description="The hold's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/accounts", status_code=201, response_model=AccountRead, summary="Open an account")
async def create_account(body: AccountCreate, principal: Principal = authorize(SCOPES.write)) -> AccountRead:
    return await service.create_account(
        caller=principal.subject, privileged=_admin(principal), name=body.name, type=body.type,
        currency=body.currency, allow_negative=body.allow_negative, owner=body.owner, shards=body.shards,
        metadata=body.metadata)


@router.get("/accounts", response_model=Page[AccountRead], summary="Accounts of an owner (default: the caller's)")
async def list_accounts(
    owner: str | None = Query(None, pattern=OWNER_PATTERN, description="Another owner's: admin scope."),
    page: PageRequest = page_params(default=50, maximum=500),
    principal: Principal = authorize(SCOPES.read),
) -> Page[AccountRead]:
    if owner is not None and owner != principal.subject and not _admin(principal):
        raise Forbidden(f"listing another owner's accounts needs {SCOPES.admin}",
                        extra={"required_scopes": [SCOPES.admin]})
    return await service.list_accounts(owner=owner or principal.subject, page=page)


@router.get("/accounts/{account_id}", response_model=AccountRead, summary="An account with its balance")
async def get_account(account_id: AccountId, principal: Principal = authorize(SCOPES.read)) -> AccountRead:
    return await service.get_account(account_id=account_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/accounts/{account_id}/statement", response_model=Page[StatementLine],
            summary="An account's postings in order, with the running balance")
async def statement(account_id: AccountId, page: PageRequest = page_params(default=100, maximum=1000),
                    principal: Principal = authorize(SCOPES.read)) -> Page[StatementLine]:
    return await service.statement(account_id=account_id, caller=principal.subject, privileged=_admin(principal),
                                   page=page)


@router.post("/transfers", status_code=201, response_model=EntryRead, summary="Post a transfer (a two-line entry)")
async def transfer(body: TransferCreate, response: Response, idempotency_key: KeyHeader = None,
                   principal: Principal = authorize(SCOPES.write)) -> EntryRead:
    req = service.transfer_request(
        debit_account_id=body.debit_account_id, credit_account_id=body.credit_account_id, amount=body.amount,
        currency=body.currency, description=body.description, metadata=body.metadata,
        idempotency_key=key_of(idempotency_key, body.idempotency_key))
    entry, replayed = await service.post_one(caller=principal.subject, privileged=_admin(principal), request=req)
    mark_replayed(response, replayed)
    return entry


PreferHeader = Annotated[str | None, Header(
    description="`return=minimal` (RFC 7240): each item is answered with its entry's id instead of the whole entry "
                "(the answer then carries `Preference-Applied: return=minimal`).")]


def _minimal(prefer: str | None) -> bool:
    return prefer is not None and any(p.strip().lower() == "return=minimal" for p in prefer.split(","))


@router.post("/transfers/batch", response_model=BatchResult | BatchSummary,
             summary="Post many transfers, each accepted or refused on its own (per-item results)",
             openapi_extra=json_body_doc(BatchCreate))
async def batch(request: Request, prefer: PreferHeader = None,
                principal: Principal = authorize(SCOPES.write)) -> Response:
    body = await parse_json_body(request, BatchCreate)  # up to 2,000 items: read straight from the bytes
    limit = service.settings_of(LedgerSettings).ledger_batch_max
    if len(body.items) > limit:
        raise ValidationFailed.for_field("items", f"at most {limit} transfers per batch", "too_long")
    requests = [service.transfer_request(
        debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id, amount=t.amount,
        currency=t.currency, description=t.description, metadata=t.metadata, idempotency_key=t.idempotency_key)
        for t in body.items]
    minimal = _minimal(prefer)
    # Written by the service from each entry's JSON (the document of the response model, which stays for the docs)
    answer = await service.post_batch_json(caller=principal.subject, privileged=_admin(principal), requests=requests,
                                           minimal=minimal)
    return Response(answer, media_type="application/json",
                    headers={"Preference-Applied": "return=minimal"} if minimal else None)


@router.post("/entries", status_code=201, response_model=EntryRead,
             summary="Post a journal entry (balanced in every currency)")
async def entry(body: EntryCreate, response: Response, idempotency_key: KeyHeader = None,
                principal: Principal = authorize(SCOPES.write)) -> EntryRead:
    req = service.entry_request(
        lines=[service.Line(ln.account_id, ln.side, ln.amount, ln.currency) for ln in body.lines],
        description=body.description, metadata=body.metadata,
        idempotency_key=key_of(idempotency_key, body.idempotency_key))
    posted, replayed = await service.post_one(caller=principal.subject, privileged=_admin(principal), request=req)
    mark_replayed(response, replayed)
    return posted


@router.get("/entries/{entry_id}", response_model=EntryRead, summary="An entry with its lines")
async def get_entry(entry_id: EntryId, principal: Principal = authorize(SCOPES.read)) -> EntryRead:
    return await service.get_entry(entry_id=entry_id, caller=principal.subject, privileged=_admin(principal))


@router.post("/entries/{entry_id}/reversal", status_code=201, response_model=EntryRead,
             summary="Reverse an entry (once; 409 the second time)")
async def reverse(entry_id: EntryId, body: ReverseCreate, response: Response, idempotency_key: KeyHeader = None,
                  principal: Principal = authorize(SCOPES.admin)) -> EntryRead:
    posted, replayed = await service.reverse_entry(
        entry_id=entry_id, caller=principal.subject, description=body.description,
        idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, replayed)
    return posted


@router.post("/holds", status_code=201, response_model=HoldRead, summary="Reserve funds for a later transfer")
async def place_hold(body: HoldCreate, response: Response, idempotency_key: KeyHeader = None,
                     principal: Principal = authorize(SCOPES.write)) -> HoldRead:
    hold, replayed = await service.place_hold(
        caller=principal.subject, privileged=_admin(principal), debit_account_id=body.debit_account_id,
        credit_account_id=body.credit_account_id, amount=body.amount, currency=body.currency,
        expires_in_s=body.expires_in_s, description=body.description, metadata=body.metadata,
        idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, replayed)
    return hold


@router.get("/holds/{hold_id}", response_model=HoldRead, summary="A hold")
async def get_hold(hold_id: HoldId, principal: Principal = authorize(SCOPES.read)) -> HoldRead:
    return await service.get_hold(hold_id=hold_id, caller=principal.subject, privileged=_admin(principal))


@router.post("/holds/{hold_id}/capture", response_model=HoldRead,
             summary="Post a hold (all of it, or part and release the rest)")
async def capture(hold_id: HoldId, body: HoldCapture, response: Response, idempotency_key: KeyHeader = None,
                  principal: Principal = authorize(SCOPES.write)) -> HoldRead:
    hold, replayed = await service.capture_hold(
        hold_id=hold_id, caller=principal.subject, privileged=_admin(principal), amount=body.amount,
        idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, replayed)
    return hold


@router.post("/holds/{hold_id}/void", response_model=HoldRead, summary="Release a hold (idempotent)")
async def void(hold_id: HoldId, principal: Principal = authorize(SCOPES.write)) -> HoldRead:
    return await service.void_hold(hold_id=hold_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/reconciliation", response_model=Reconciliation, dependencies=[authorize(SCOPES.admin)],
            summary="The ledger's invariants, checked now")
async def reconciliation() -> Reconciliation:
    return await service.reconcile()
