"""invoice-gen's schemas: invoices with their tax lines, credit notes, tax rates.

Amounts are integers of minor units in the invoice's ISO 4217 currency (``strict``: no float
ever becomes money); tax rates are exact decimals in percent.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nexus_ray.deployments.commerce.ledger.models import OWNER_PATTERN, Currency, IdempotencyKey, Text

SERIES_PATTERN = r"^[A-Z0-9][A-Z0-9-]{0,31}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
CATEGORY_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
MAX_AMOUNT = 10**12  # minor units of one unit price: far beyond any invoice line, far within bigint

Series = Annotated[str, Field(pattern=SERIES_PATTERN, description="Numbering series, e.g. `INV` or `EU-2026`.")]
Country = Annotated[str, Field(pattern=COUNTRY_PATTERN, description="ISO 3166-1 alpha-2 country of taxation.")]
TaxCategory = Annotated[str, Field(pattern=CATEGORY_PATTERN,
                                   description='Tax category of the line: "standard", "reduced", "zero", "digital".')]
Source = Literal["order", "subscription", "manual"]


def _customer(value: dict[str, Any]) -> dict[str, Any]:
    owner = value.get("id")
    if owner is not None and not (isinstance(owner, str) and re.match(OWNER_PATTERN, owner)):
        raise ValueError("id must be the customer's principal (a token subject)")
    try:
        raw = orjson.dumps(value)
    except TypeError:
        raise ValueError("must be JSON with integers within 64 bits and valid Unicode text") from None
    if b"\\u0000" in raw:
        raise ValueError("must not contain NUL characters")
    if len(raw) > 4096:
        raise ValueError("must be at most 4 KiB of JSON")
    return value


Customer = Annotated[dict[str, Any], Field(
    description="Who is invoiced: `id` (their principal: they may read the invoice), `name`, `email`, "
                "`address` (text or lines), `tax_id`; kept as given and printed on the PDF."),
    AfterValidator(_customer)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LineIn(_In):
    description: Text = Field(min_length=1, max_length=500)
    quantity: int = Field(strict=True, ge=1, le=1_000_000)
    unit_price: int = Field(strict=True, ge=0, le=MAX_AMOUNT, description="Net price of one unit, minor units.")
    tax_category: TaxCategory


class InvoiceCreate(_In):
    series: Series
    source: Source = "order"
    source_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$",
                           description="The order (or subscription period) invoiced.")
    customer: Customer
    country: Country
    currency: Currency
    lines: list[LineIn] = Field(min_length=1, max_length=200)
    idempotency_key: IdempotencyKey | None = Field(None, description="Or the Idempotency-Key header.")


class CreditLineIn(_In):
    line: int = Field(strict=True, ge=0, le=499, description="Position of the invoice line credited (0-based).")
    quantity: int = Field(strict=True, ge=1, le=1_000_000, description="Units credited.")


class CreditNoteCreate(_In):
    reason: Text = Field(min_length=1, max_length=500)
    lines: list[CreditLineIn] | None = Field(
        None, min_length=1, max_length=200, description="What to credit; null: everything not yet credited.")
    idempotency_key: IdempotencyKey | None = Field(None, description="Or the Idempotency-Key header.")


class InvoiceLineRead(BaseModel):
    position: int
    description: str
    quantity: int
    unit_price: int
    tax_category: str
    tax_rate: str = Field(description="Percent, exact (e.g. `19`, `5.5`).")
    net: int
    tax: int
    total: int


class TaxQuoteCreate(_In):
    """What a checkout asks before it charges: the tax an invoice of these lines would carry."""

    country: Country
    currency: Currency
    lines: list[LineIn] = Field(min_length=1, max_length=500)


class TaxQuote(BaseModel):
    """The totals :func:`issue_invoice` would compute for the same lines today (same rates, same rounding)."""

    country: str
    currency: str
    subtotal: int
    tax_total: int
    total: int
    tax_rounding: str


class TaxSummary(BaseModel):
    tax_rate: str
    net: int
    tax: int


class InvoiceRead(BaseModel):
    id: UUID
    series: str
    number: int = Field(description="Gap-free within the series: 1, 2, 3...")
    display_number: str
    status: Literal["issued", "credited"] = Field(description="`credited` once credit notes cover all of it.")
    source: Source
    source_id: str
    order_id: str | None = Field(description="The source id when the source is an order.")
    customer: dict[str, Any]
    country: str
    currency: str
    lines: list[InvoiceLineRead]
    tax_summary: list[TaxSummary]
    subtotal: int
    tax_total: int
    total: int
    credited: int = Field(description="Total of the credit notes issued against it.")
    tax_rounding: str = Field(description="How tax was rounded (stated on the invoice).")
    issued_at: datetime
    pdf_url: str


class CreditNoteLineRead(BaseModel):
    line: int
    description: str
    quantity: int
    unit_price: int
    tax_rate: str
    net: int
    tax: int
    total: int


class CreditNoteRead(BaseModel):
    id: UUID
    invoice_id: UUID
    invoice_number: str
    series: str
    number: int = Field(description="Gap-free within the credit notes of the series.")
    display_number: str
    reason: str
    currency: str
    lines: list[CreditNoteLineRead]
    subtotal: int
    tax_total: int
    total: int
    issued_at: datetime
    pdf_url: str


class TaxRateSet(_In):
    rate: Decimal = Field(ge=0, lt=100, max_digits=7, decimal_places=4,
                          description='Percent, as a string for exactness ("19", "5.5").')


class TaxRateRead(BaseModel):
    country: str
    category: str
    rate: str
    updated_at: datetime
