"""The PDFs of invoices and credit notes, drawn from their stored data.

Generated on request rather than stored: the writer is deterministic (no dates but the
document's own, no random ids), and the data is immutable, so the same invoice always gives
the same bytes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from nexus_ray.compute.pdf import Document, Page
from nexus_ray.deployments.commerce.ledger.currencies import EXPONENTS

from .models import CreditNoteRead, InvoiceRead
from .service import TAX_ROUNDING

_LEFT = 50.0
_RIGHT = 545.0
_ROWS_PER_PAGE = 28


def money(amount: int, currency: str) -> str:
    """Minor units as the document prints them: ``1234.50 EUR`` (exact: no float on the way)."""
    exponent = EXPONENTS.get(currency, 2)
    return f"{Decimal(amount).scaleb(-exponent):.{exponent}f} {currency}"


def _customer_lines(customer: dict[str, Any]) -> list[str]:
    lines = [str(customer[k]) for k in ("name", "email") if customer.get(k)]
    address = customer.get("address")
    if isinstance(address, list):
        lines += [str(a) for a in address]
    elif isinstance(address, dict):
        lines += [str(v) for v in address.values()]
    elif address:
        lines.append(str(address))
    if customer.get("tax_id"):
        lines.append(f"Tax id: {customer['tax_id']}")
    return lines[:8]


def _header(page: Page, title: str, number: str, issued: str, rows: list[str]) -> float:
    page.text(_LEFT, 790, title, size=20, font="bold")
    page.text(_LEFT, 768, f"No. {number}", size=11, font="bold")
    page.text(_LEFT, 754, f"Issued {issued}", size=9)
    y = 730.0
    for text in rows:
        page.text(_LEFT, y, text, size=9)
        y -= 12
    return y - 10


def _table_head(page: Page, y: float) -> float:
    for x, label in ((_LEFT, "Description"), (300, "Qty"), (340, "Unit"), (410, "Tax"), (545, "Amount")):
        page.text(x if label != "Amount" else 505, y, label, size=9, font="bold")
    page.line(_LEFT, y - 4, _RIGHT, y - 4)
    return y - 16


def _row(page: Page, y: float, desc: str, qty: int, unit: str, rate: str, amount: str) -> None:
    page.text(_LEFT, y, desc[:48], size=9)
    page.text(325, y, str(qty), size=9, font="mono", align="right")
    page.text(400, y, unit, size=9, font="mono", align="right")
    page.text(440, y, f"{rate}%", size=9, font="mono", align="right")
    page.text(_RIGHT, y, amount, size=9, font="mono", align="right")


def _totals(page: Page, y: float, rows: list[tuple[str, str]]) -> float:
    page.line(330, y + 8, _RIGHT, y + 8)
    for label, value in rows:
        page.text(340, y - 4, label, size=10, font="bold" if label.startswith("Total") else "regular")
        page.text(_RIGHT, y - 4, value, size=10, font="mono", align="right")
        y -= 15
    return y


def invoice_pdf(invoice: InvoiceRead) -> bytes:
    """The invoice as a PDF: parties, lines with their tax rates, the tax summary, totals, the rounding rule."""
    cur = invoice.currency
    doc = Document(title=f"Invoice {invoice.display_number}")
    page = doc.page()
    info = [*_customer_lines(invoice.customer), f"Country of taxation: {invoice.country}",
            f"{invoice.source.capitalize()}: {invoice.source_id}"]
    y = _table_head(page, _header(page, "INVOICE", invoice.display_number, invoice.issued_at.date().isoformat(),
                                  info))
    for i, ln in enumerate(invoice.lines):
        if i and i % _ROWS_PER_PAGE == 0:
            page = doc.page()
            y = _table_head(page, 790)
        _row(page, y, ln.description, ln.quantity, money(ln.unit_price, cur), ln.tax_rate, money(ln.net, cur))
        y -= 13
    rows = [("Subtotal", money(invoice.subtotal, cur))]
    rows += [(f"Tax {t.tax_rate}% on {money(t.net, cur)}", money(t.tax, cur)) for t in invoice.tax_summary]
    rows.append(("Total", money(invoice.total, cur)))
    if y < 60 + 15 * len(rows):
        page = doc.page()
        y = 790
    y = _totals(page, y - 10, rows)
    page.text(_LEFT, y - 10, TAX_ROUNDING, size=8)
    return doc.render()


def credit_note_pdf(note: CreditNoteRead, invoice: InvoiceRead) -> bytes:
    """A credit note as a PDF: the invoice it credits, the reason, the lines and totals credited."""
    cur = note.currency
    doc = Document(title=f"Credit note {note.display_number}")
    page = doc.page()
    info = [*_customer_lines(invoice.customer), f"Credits invoice {note.invoice_number}",
            f"Reason: {note.reason[:90]}"]
    y = _table_head(page, _header(page, "CREDIT NOTE", note.display_number, note.issued_at.date().isoformat(),
                                  info))
    for i, ln in enumerate(note.lines):
        if i and i % _ROWS_PER_PAGE == 0:
            page = doc.page()
            y = _table_head(page, 790)
        _row(page, y, ln.description, ln.quantity, money(ln.unit_price, cur), ln.tax_rate, money(-ln.net, cur))
        y -= 13
    rows = [("Subtotal", money(-note.subtotal, cur)), ("Tax", money(-note.tax_total, cur)),
            ("Total credited", money(-note.total, cur))]
    if y < 60 + 15 * len(rows):
        page = doc.page()
        y = 790
    y = _totals(page, y - 10, rows)
    page.text(_LEFT, y - 10, TAX_ROUNDING, size=8)
    return doc.render()
