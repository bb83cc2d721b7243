"""puabomusicchain's routes under ``/finance/v1/music-chain``.

Who may do what: the registry's operators (admin scope) append records, publish roots, run
verification and royalty runs; any holder of the read scope reads the chain (a public
registry), a work's rights and split, the latest root and proofs; a rights holder reads
their own royalty lines.

::

    POST /records                  admin: append rights / split records (in order, one transaction)
    GET  /records                  the chain, in order
    GET  /works/{work_id}          a work's rights records and its split in force
    POST /roots                    admin: publish the Merkle root over the chain so far
    GET  /roots/latest             the latest published root
    GET  /proofs?seq=N             the inclusion proof of record N in the latest root that covers it
    GET  /verification             admin: verify the whole chain; every damaged record, by seq
    POST /royalty-runs             admin: split payments to works and credit holders on the ledger
    GET  /royalty-runs/{run_id}    admin: a run with its totals
    GET  /royalties                the caller's royalty lines
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.kit.idempotency import mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize

from . import service
from .models import (
    ID_PATTERN,
    ProofRead,
    RecordRead,
    RecordsCreate,
    RootRead,
    RoyaltyLine,
    RoyaltyRunCreate,
    RoyaltyRunRead,
    VerificationRead,
    WorkRead,
)

SCOPES = scopes_of("puabomusicchain")
router = APIRouter()


@router.post("/records", status_code=201, response_model=list[RecordRead], summary="Append records to the chain")
async def append(body: RecordsCreate, principal: Principal = authorize(SCOPES.admin)) -> list[RecordRead]:
    return await service.append(caller=principal.subject, records=body.records)


@router.get("/records", response_model=Page[RecordRead], dependencies=[authorize(SCOPES.read)],
            summary="The chain, in order")
async def list_records(page: PageRequest = page_params(default=100, maximum=1000)) -> Page[RecordRead]:
    return await service.list_records(page=page)


@router.get("/works/{work_id}", response_model=WorkRead, dependencies=[authorize(SCOPES.read)],
            summary="A work's rights and its split in force")
async def get_work(work_id: Annotated[str, Path(pattern=ID_PATTERN)]) -> WorkRead:
    return await service.get_work(work=work_id)


@router.post("/roots", status_code=201, response_model=RootRead, summary="Publish the Merkle root of the chain")
async def publish_root(principal: Principal = authorize(SCOPES.admin)) -> RootRead:
    return await service.publish_root(caller=principal.subject)


@router.get("/roots/latest", response_model=RootRead, dependencies=[authorize(SCOPES.read)],
            summary="The latest published root",
            responses={404: {"description": "No root has been published yet."}})
async def latest_root() -> RootRead:
    return await service.latest_root()


@router.get("/proofs", response_model=ProofRead, dependencies=[authorize(SCOPES.read)],
            summary="A record's inclusion proof in the latest root",
            responses={404: {"description": "No such record, or no published root covers it yet."}})
async def get_proof(seq: int = Query(ge=0, le=2**62, description="The record's seq.")) -> ProofRead:
    return await service.proof(seq=seq)


@router.get("/verification", response_model=VerificationRead, dependencies=[authorize(SCOPES.admin)],
            summary="Verify the whole chain")
async def verification() -> VerificationRead:
    return await service.verify()


@router.post("/royalty-runs", status_code=201, response_model=RoyaltyRunRead, summary="Run a royalty distribution")
async def royalty_run(body: RoyaltyRunCreate, response: Response,
                      principal: Principal = authorize(SCOPES.admin)) -> RoyaltyRunRead:
    run, replayed = await service.royalty_run(caller=principal.subject, currency=body.currency,
                                              payments=body.payments, idempotency_key=body.idempotency_key)
    mark_replayed(response, replayed)
    return run


@router.get("/royalty-runs/{run_id}", response_model=RoyaltyRunRead, dependencies=[authorize(SCOPES.admin)],
            summary="A royalty run")
async def get_run(run_id: Annotated[UUID, Path()]) -> RoyaltyRunRead:
    return await service.get_run(run_id=run_id)


@router.get("/royalties", response_model=Page[RoyaltyLine], summary="The caller's royalty lines")
async def my_royalties(page: PageRequest = page_params(), principal: Principal = authorize(SCOPES.read)
                       ) -> Page[RoyaltyLine]:
    return await service.my_royalties(holder=principal.subject, page=page)
