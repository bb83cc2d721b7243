"""token-mgr's routes under ``/finance/v1/tokens``.

Who may do what: administrators (admin scope) define tokens, mint and grant vesting
schedules; a holder (write scope) burns and transfers their own units and reads their own
balance, history and vesting (admin: any holder's with ``?holder=``). Token definitions and
their supply are readable by any holder of the read scope.

::

    POST /tokens                               admin: define a token (code QMA..QZZ, supply cap)
    GET  /tokens                               token definitions with their supply
    GET  /tokens/{token_id}                    one
    POST /tokens/{token_id}/mint               admin: mint to a holder (409 past the cap)
    POST /tokens/{token_id}/burn               burn the caller's units
    POST /tokens/{token_id}/transfers          send the caller's units to another holder
    GET  /tokens/{token_id}/balance            the caller's balance
    GET  /tokens/{token_id}/history            the caller's operations, newest first
    POST /tokens/{token_id}/vesting            admin: grant a vesting schedule (cliff, then linear)
    GET  /vesting                              the caller's vesting schedules and releases
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.kit.idempotency import mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import Forbidden

from . import service
from .models import (
    HOLDER_PATTERN,
    BalanceRead,
    BurnCreate,
    MintCreate,
    OperationRead,
    TokenCreate,
    TokenRead,
    TransferCreate,
    VestingCreate,
    VestingRead,
)

SCOPES = scopes_of("token-mgr")
router = APIRouter()

TokenId = Annotated[UUID, Path(description="The token's id.")]
HolderQuery = Annotated[str | None, Query(pattern=HOLDER_PATTERN, description="Another holder's: admin scope.")]


def _holder(principal: Principal, holder: str | None) -> str:
    if holder is not None and holder != principal.subject and not principal.can(SCOPES.admin):
        raise Forbidden(f"another holder's tokens need {SCOPES.admin}", extra={"required_scopes": [SCOPES.admin]})
    return holder or principal.subject


@router.post("/tokens", status_code=201, response_model=TokenRead, summary="Define a token")
async def create_token(body: TokenCreate, principal: Principal = authorize(SCOPES.admin)) -> TokenRead:
    return await service.create_token(caller=principal.subject, code=body.code, name=body.name,
                                      decimals=body.decimals, supply_cap=body.supply_cap)


@router.get("/tokens", response_model=Page[TokenRead], dependencies=[authorize(SCOPES.read)],
            summary="Token definitions with their supply")
async def list_tokens(page: PageRequest = page_params(default=50, maximum=200)) -> Page[TokenRead]:
    return await service.list_tokens(page=page)


@router.get("/tokens/{token_id}", response_model=TokenRead, dependencies=[authorize(SCOPES.read)],
            summary="A token with its supply")
async def get_token(token_id: TokenId) -> TokenRead:
    return await service.get_token(token_id=token_id)


@router.post("/tokens/{token_id}/mint", status_code=201, response_model=OperationRead, summary="Mint to a holder")
async def mint(token_id: TokenId, body: MintCreate, response: Response,
               principal: Principal = authorize(SCOPES.admin)) -> OperationRead:
    op, replayed = await service.mint(token_id=token_id, caller=principal.subject, to_holder=body.to_holder,
                                      amount=body.amount, idempotency_key=body.idempotency_key)
    mark_replayed(response, replayed)
    return op


@router.post("/tokens/{token_id}/burn", status_code=201, response_model=OperationRead, summary="Burn own units")
async def burn(token_id: TokenId, body: BurnCreate, response: Response,
               principal: Principal = authorize(SCOPES.write)) -> OperationRead:
    op, replayed = await service.burn(token_id=token_id, holder=principal.subject, amount=body.amount,
                                      idempotency_key=body.idempotency_key)
    mark_replayed(response, replayed)
    return op


@router.post("/tokens/{token_id}/transfers", status_code=201, response_model=OperationRead,
             summary="Send own units to another holder")
async def transfer(token_id: TokenId, body: TransferCreate, response: Response,
                   principal: Principal = authorize(SCOPES.write)) -> OperationRead:
    op, replayed = await service.transfer(token_id=token_id, holder=principal.subject, to_holder=body.to_holder,
                                          amount=body.amount, idempotency_key=body.idempotency_key)
    mark_replayed(response, replayed)
    return op


@router.get("/tokens/{token_id}/balance", response_model=BalanceRead, summary="A holder's balance")
async def balance(token_id: TokenId, holder: HolderQuery = None,
                  principal: Principal = authorize(SCOPES.read)) -> BalanceRead:
    return await service.balance(token_id=token_id, holder=_holder(principal, holder))


@router.get("/tokens/{token_id}/history", response_model=Page[OperationRead], summary="A holder's operations")
async def history(token_id: TokenId, holder: HolderQuery = None, page: PageRequest = page_params(),
                  principal: Principal = authorize(SCOPES.read)) -> Page[OperationRead]:
    return await service.history(token_id=token_id, holder=_holder(principal, holder), page=page)


@router.post("/tokens/{token_id}/vesting", status_code=201, response_model=VestingRead,
             summary="Grant a vesting schedule")
async def grant(token_id: TokenId, body: VestingCreate, response: Response,
                principal: Principal = authorize(SCOPES.admin)) -> VestingRead:
    schedule, replayed = await service.grant(token_id=token_id, caller=principal.subject, body=body)
    mark_replayed(response, replayed)
    return schedule


@router.get("/vesting", response_model=list[VestingRead], summary="A beneficiary's vesting schedules")
async def list_vesting(holder: HolderQuery = None, principal: Principal = authorize(SCOPES.read)
                       ) -> list[VestingRead]:
    return await service.list_vesting(beneficiary=_holder(principal, holder))
