"""invoice-gen: gap-free invoices with tax lines, PDFs, immutable once issued, credit notes.

Routes in :mod:`.views`; logic (and why numbering stays gap-free under concurrency) in
:mod:`.service`; the PDFs in :mod:`.documents`. The order saga (and later subscriptions)
issue through ``exports`` with :func:`nexus_ray.deployments.kit.calls.call`, keyword
arguments only. Events: ``invoice.issued``, ``invoice.credited`` (outbox).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from nexus_ray.edge.errors import parse_input
from nexus_ray.exceptions import ValidationFailed

from . import service
from .models import CreditNoteCreate, CreditNoteRead, InvoiceCreate, InvoiceRead, TaxQuote, TaxQuoteCreate
from .views import router


async def issue_invoice(
    *, caller: str, series: str, customer: dict[str, Any], country: str, currency: str, lines: list[dict[str, Any]],
    idempotency_key: str, order_id: str | None = None, source: str = "order", source_id: str | None = None,
) -> InvoiceRead:
    """Issue an invoice for an order (``order_id``) or another source (``source``, ``source_id``).

    Lines are ``{"description", "quantity", "unit_price" (net, minor units), "tax_category"}``. The same
    ``idempotency_key`` (per ``caller``) with the same arguments returns the first invoice.
    """
    body = parse_input(InvoiceCreate, {
        "series": series, "source": source, "source_id": source_id if source_id is not None else order_id,
        "customer": customer, "country": country, "currency": currency, "lines": lines,
        "idempotency_key": idempotency_key})
    invoice, _ = await service.issue_invoice(
        caller=caller, series=body.series, source=body.source, source_id=body.source_id, customer=body.customer,
        country=body.country, currency=body.currency, lines=body.lines, idempotency_key=body.idempotency_key)
    return invoice


async def credit_note(
    *, caller: str, invoice_id: UUID | str, idempotency_key: str, reason: str,
    lines: list[dict[str, Any]] | None = None,
) -> CreditNoteRead:
    """Credit an invoice: ``lines`` ``[{"line": position, "quantity": n}]``, or None for all that is left."""
    body = parse_input(CreditNoteCreate, {"reason": reason, "lines": lines, "idempotency_key": idempotency_key})
    try:
        invoice = UUID(str(invoice_id))
    except ValueError:
        raise ValidationFailed.for_field("invoice_id", "is not an invoice id") from None
    note, _ = await service.credit_note(
        caller=caller, invoice_id=invoice, reason=body.reason,
        lines=None if body.lines is None else [(ln.line, ln.quantity) for ln in body.lines],
        idempotency_key=body.idempotency_key)
    return note


async def tax_quote(*, country: str, currency: str, lines: list[dict[str, Any]]) -> TaxQuote:
    """The totals an invoice of ``lines`` (as for :func:`issue_invoice`) would have, without issuing it."""
    body = parse_input(TaxQuoteCreate, {"country": country, "currency": currency, "lines": lines})
    return await service.tax_quote(country=body.country, currency=body.currency, lines=body.lines)


#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"issue_invoice": issue_invoice, "credit_note": credit_note, "tax_quote": tax_quote}

__all__ = ["exports", "router"]
