"""invoice-gen's routes under ``/commerce/v1/invoices``.

Who may do what: issuing invoices and credit notes and setting tax rates is the back office's
(the admin scope; the order saga issues through the ``exports`` instead). An invoice, its PDF
and its credit notes are visible to the invoiced customer (``customer.id``) and to
administrators, and a 404 to anyone else. Issues carry an idempotency key in the
``Idempotency-Key`` header or the ``idempotency_key`` field; a replayed answer has the header
``Idempotent-Replayed: true``.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.commerce.ledger.models import OWNER_PATTERN
from nexus_ray.deployments.kit.idempotency import KeyHeader, key_of, mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import Forbidden

from . import documents, service
from .models import (
    CATEGORY_PATTERN,
    COUNTRY_PATTERN,
    CreditNoteCreate,
    CreditNoteRead,
    InvoiceCreate,
    InvoiceRead,
    TaxRateRead,
    TaxRateSet,
)

SCOPES = scopes_of("invoice-gen")
router = APIRouter()

InvoiceId = Annotated[UUID, Path(description="The invoice's id.")]
CreditNoteId = Annotated[UUID, Path(description="The credit note's id.")]
_PDF: dict[int | str, dict[str, Any]] = {200: {"content": {"application/pdf": {}},
                                             "description": "The document as a PDF."}}


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


def _pdf(content: bytes, name: str) -> Response:
    return Response(content, media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{name}.pdf"'})


@router.post("/invoices", status_code=201, response_model=InvoiceRead, summary="Issue an invoice")
async def issue(body: InvoiceCreate, response: Response, idempotency_key: KeyHeader = None,
                principal: Principal = authorize(SCOPES.admin)) -> InvoiceRead:
    invoice, replayed = await service.issue_invoice(
        caller=principal.subject, series=body.series, source=body.source, source_id=body.source_id,
        customer=body.customer, country=body.country, currency=body.currency, lines=body.lines,
        idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, replayed)
    return invoice


@router.get("/invoices", response_model=Page[InvoiceRead], summary="Invoices of a customer (default: the caller)")
async def list_invoices(
    customer: str | None = Query(None, pattern=OWNER_PATTERN, description="Another customer's: admin scope."),
    page: PageRequest = page_params(default=20, maximum=100),
    principal: Principal = authorize(SCOPES.read),
) -> Page[InvoiceRead]:
    if customer is not None and customer != principal.subject and not _admin(principal):
        raise Forbidden(f"listing another customer's invoices needs {SCOPES.admin}",
                        extra={"required_scopes": [SCOPES.admin]})
    return await service.list_invoices(owner=customer or principal.subject, page=page)


@router.get("/invoices/{invoice_id}", response_model=InvoiceRead, summary="An invoice")
async def get_invoice(invoice_id: InvoiceId, principal: Principal = authorize(SCOPES.read)) -> InvoiceRead:
    return await service.get_invoice(invoice_id=invoice_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/invoices/{invoice_id}/pdf", response_class=Response, responses=_PDF, summary="An invoice as a PDF")
async def invoice_pdf(invoice_id: InvoiceId, principal: Principal = authorize(SCOPES.read)) -> Response:
    invoice = await service.get_invoice(invoice_id=invoice_id, caller=principal.subject,
                                        privileged=_admin(principal))
    return _pdf(documents.invoice_pdf(invoice), invoice.display_number)


@router.post("/invoices/{invoice_id}/credit-notes", status_code=201, response_model=CreditNoteRead,
             summary="Credit an invoice (all that is left, or quantities of its lines)")
async def credit(invoice_id: InvoiceId, body: CreditNoteCreate, response: Response,
                 idempotency_key: KeyHeader = None, principal: Principal = authorize(SCOPES.admin)) -> CreditNoteRead:
    note, replayed = await service.credit_note(
        caller=principal.subject, invoice_id=invoice_id, reason=body.reason,
        lines=None if body.lines is None else [(ln.line, ln.quantity) for ln in body.lines],
        idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, replayed)
    return note


@router.get("/invoices/{invoice_id}/credit-notes", response_model=list[CreditNoteRead],
            summary="The credit notes of an invoice")
async def credit_notes(invoice_id: InvoiceId, principal: Principal = authorize(SCOPES.read)) -> list[CreditNoteRead]:
    return await service.list_credit_notes(invoice_id=invoice_id, caller=principal.subject,
                                           privileged=_admin(principal))


@router.get("/credit-notes/{credit_note_id}", response_model=CreditNoteRead, summary="A credit note")
async def get_credit_note(credit_note_id: CreditNoteId, principal: Principal = authorize(SCOPES.read)
                          ) -> CreditNoteRead:
    return await service.get_credit_note(credit_note_id=credit_note_id, caller=principal.subject,
                                         privileged=_admin(principal))


@router.get("/credit-notes/{credit_note_id}/pdf", response_class=Response, responses=_PDF,
            summary="A credit note as a PDF")
async def credit_note_pdf(credit_note_id: CreditNoteId, principal: Principal = authorize(SCOPES.read)) -> Response:
    note = await service.get_credit_note(credit_note_id=credit_note_id, caller=principal.subject,
                                         privileged=_admin(principal))
    invoice = await service.get_invoice(invoice_id=note.invoice_id, caller=principal.subject,
                                        privileged=_admin(principal))
    return _pdf(documents.credit_note_pdf(note, invoice), note.display_number)


@router.get("/tax-rates", response_model=Page[TaxRateRead], summary="Tax rates by country and category")
async def tax_rates(country: str | None = Query(None, pattern=COUNTRY_PATTERN),
                    page: PageRequest = page_params(default=100, maximum=500),
                    _: Principal = authorize(SCOPES.read)) -> Page[TaxRateRead]:
    return await service.list_tax_rates(country=country, page=page)


@router.put("/tax-rates/{country}/{category}", response_model=TaxRateRead,
            summary="Set a tax rate for invoices issued from now on")
async def set_tax_rate(body: TaxRateSet, country: str = Path(pattern=COUNTRY_PATTERN),
                       category: str = Path(pattern=CATEGORY_PATTERN),
                       _: Principal = authorize(SCOPES.admin)) -> TaxRateRead:
    return await service.set_tax_rate(country=country, category=category, rate=body.rate)
