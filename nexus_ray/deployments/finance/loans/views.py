"""loan-processor's routes under ``/finance/v1/loans``.

Who may do what: a borrower applies (write scope), sees only their own loans (a 404 for
anyone else's), accepts or turns down their offer and repays; administrators (admin scope)
review applications the model could not score, disburse, record payments with a value date
and declare defaults. Invalid transitions of the loan's state machine are 409.

::

    POST /loans                              apply (scored and decided at once)
    GET  /loans                              the caller's loans (admin: ?borrower=)
    GET  /loans/{loan_id}                    a loan with its decision, offer and history
    GET  /loans/{loan_id}/schedule           the amortization schedule with due dates
    GET  /loans/{loan_id}/repayments         repayments made
    POST /loans/{loan_id}/review             admin: score a loan in manual review
    POST /loans/{loan_id}/accept             the borrower accepts the offer
    POST /loans/{loan_id}/decline            the borrower turns it down
    POST /loans/{loan_id}/disburse           admin: pay out into the borrower's wallet
    POST /loans/{loan_id}/repayments         pay the next installment (late charges when late)
    GET  /loans/{loan_id}/payoff             what repays the loan in full on a day
    POST /loans/{loan_id}/payoff             repay early: everything outstanding
    POST /loans/{loan_id}/default            admin: write the loan off
"""

from __future__ import annotations

from datetime import date
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
    InstallmentRead,
    LoanCreate,
    LoanRead,
    PayoffQuote,
    RepaymentCreate,
    RepaymentRead,
    ReviewCreate,
    RiskScore,
)

SCOPES = scopes_of("puabo-blac-loan-processor")
router = APIRouter()

LoanId = Annotated[UUID, Path(description="The loan's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/loans", status_code=201, response_model=LoanRead, summary="Apply for a loan")
async def apply(body: LoanCreate, response: Response, principal: Principal = authorize(SCOPES.write)) -> LoanRead:
    loan, created = await service.apply(borrower=principal.subject, body=body)
    mark_replayed(response, not created)
    return loan


@router.get("/loans", response_model=Page[LoanRead], summary="Loans of a borrower (default: the caller's)")
async def list_loans(
    borrower: str | None = Query(None, max_length=128, description="Another borrower's: admin scope."),
    page: PageRequest = page_params(default=50, maximum=200),
    principal: Principal = authorize(SCOPES.read),
) -> Page[LoanRead]:
    if borrower is not None and borrower != principal.subject and not _admin(principal):
        raise Forbidden(f"listing another borrower's loans needs {SCOPES.admin}",
                        extra={"required_scopes": [SCOPES.admin]})
    return await service.list_loans(borrower=borrower or principal.subject, page=page)


@router.get("/loans/{loan_id}", response_model=LoanRead, summary="A loan")
async def get_loan(loan_id: LoanId, principal: Principal = authorize(SCOPES.read)) -> LoanRead:
    return await service.get_loan(loan_id=loan_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/loans/{loan_id}/schedule", response_model=list[InstallmentRead], summary="The amortization schedule")
async def schedule(loan_id: LoanId, principal: Principal = authorize(SCOPES.read)) -> list[InstallmentRead]:
    return await service.installments(loan_id=loan_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/loans/{loan_id}/repayments", response_model=list[RepaymentRead], summary="Repayments made")
async def list_repayments(loan_id: LoanId, principal: Principal = authorize(SCOPES.read)) -> list[RepaymentRead]:
    return await service.repayments(loan_id=loan_id, caller=principal.subject, privileged=_admin(principal))


@router.post("/loans/{loan_id}/review", response_model=LoanRead, summary="Score a loan in manual review")
async def review(loan_id: LoanId, body: ReviewCreate, principal: Principal = authorize(SCOPES.admin)) -> LoanRead:
    score = RiskScore(probability_of_default=body.probability_of_default, band=body.band, reasons=body.reasons,
                      source="review")
    return await service.review(loan_id=loan_id, reviewer=principal.subject, score=score)


@router.post("/loans/{loan_id}/accept", response_model=LoanRead, summary="Accept the offer")
async def accept(loan_id: LoanId, principal: Principal = authorize(SCOPES.write)) -> LoanRead:
    return await service.accept(loan_id=loan_id, caller=principal.subject)


@router.post("/loans/{loan_id}/decline", response_model=LoanRead, summary="Turn the offer down")
async def decline(loan_id: LoanId, principal: Principal = authorize(SCOPES.write)) -> LoanRead:
    return await service.decline_offer(loan_id=loan_id, caller=principal.subject)


@router.post("/loans/{loan_id}/disburse", response_model=LoanRead, summary="Pay the loan out")
async def disburse(loan_id: LoanId, principal: Principal = authorize(SCOPES.admin)) -> LoanRead:
    return await service.disburse(loan_id=loan_id, actor=principal.subject)


@router.post("/loans/{loan_id}/repayments", response_model=LoanRead, summary="Pay the next installment")
async def repay(loan_id: LoanId, body: RepaymentCreate, response: Response,
                principal: Principal = authorize(SCOPES.write)) -> LoanRead:
    loan, replayed = await service.repay(loan_id=loan_id, caller=principal.subject, privileged=_admin(principal),
                                         idempotency_key=body.idempotency_key, paid_on=body.paid_on)
    mark_replayed(response, replayed)
    return loan


@router.get("/loans/{loan_id}/payoff", response_model=PayoffQuote, summary="What repays the loan in full")
async def payoff_quote(loan_id: LoanId, on: date | None = Query(None, description="Default: today."),
                       principal: Principal = authorize(SCOPES.read)) -> PayoffQuote:
    return await service.payoff_quote(loan_id=loan_id, caller=principal.subject, privileged=_admin(principal), on=on)


@router.post("/loans/{loan_id}/payoff", response_model=LoanRead, summary="Repay the loan early, in full")
async def pay_off(loan_id: LoanId, body: RepaymentCreate, response: Response,
                  principal: Principal = authorize(SCOPES.write)) -> LoanRead:
    loan, replayed = await service.pay_off(loan_id=loan_id, caller=principal.subject, privileged=_admin(principal),
                                           idempotency_key=body.idempotency_key, paid_on=body.paid_on)
    mark_replayed(response, replayed)
    return loan


@router.post("/loans/{loan_id}/default", response_model=LoanRead, summary="Declare a default and write it off")
async def default(loan_id: LoanId, principal: Principal = authorize(SCOPES.admin)) -> LoanRead:
    return await service.default(loan_id=loan_id, actor=principal.subject)
