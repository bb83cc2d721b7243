"""ledger-mgr's schemas: accounts, entries (and transfers, their two-line form), holds, batches, reports.

Amounts are integers of minor units (``strict``: ``10.0`` and ``"10"`` are refused, so no float
ever becomes money) between 1 and the largest bigint; currencies are ISO 4217 codes whose
exponent the ledger knows (:mod:`.currencies`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .currencies import known

BIGINT_MAX = 2**63 - 1
KEY_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,255}$"

AccountType = Literal["asset", "liability", "revenue", "expense", "equity"]
Side = Literal["debit", "credit"]


def _currency(code: str) -> str:
    if not known(code):
        raise ValueError("is not an ISO 4217 currency with a known exponent")
    return code


Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD."),
                     AfterValidator(_currency)]
Amount = Annotated[int, Field(strict=True, ge=1, le=BIGINT_MAX, description="Minor units (cents for USD), > 0.")]
IdempotencyKey = Annotated[str, Field(pattern=KEY_PATTERN, description="Unique per caller; a retry sends the same.")]
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


def _storable(text: str) -> str:
    # PostgreSQL text holds neither NUL nor lone surrogates (which JSON's \ud800 escapes can produce).
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return text


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        raw = orjson.dumps(value)
    except TypeError:  # integers past 64 bits, lone surrogates
        raise ValueError("must be JSON with integers within 64 bits and valid Unicode text") from None
    if b"\\u0000" in raw:
        raise ValueError("must not contain NUL characters")
    if len(raw) > 8192:
        raise ValueError("must be at most 8 KiB of JSON")
    return value


Text = Annotated[str, AfterValidator(_storable)]
Owner = Annotated[str, Field(pattern=OWNER_PATTERN, description="A principal (token subject), or `platform`.")]
Metadata = Annotated[dict[str, Any], Field(default_factory=dict, max_length=50), AfterValidator(_metadata)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class AccountCreate(_In):
    name: Text = Field(min_length=1, max_length=200)
    type: AccountType
    currency: Currency
    allow_negative: bool = Field(
        False, description="Whether the balance may go below zero (platform revenue, clearing accounts).")
    owner: Owner | None = Field(
        None,
        description="The principal the account belongs to; default: the caller. Another owner (or `platform`) "
                    "needs the admin scope.")
    shards: int | None = Field(
        None, ge=1, le=64, description="Balance shards (default from the settings): more for a hot account.")
    metadata: Metadata


class Balance(BaseModel):
    """An account's balance, on its normal side (debits for assets and expenses, credits otherwise)."""

    currency: str
    posted: int = Field(description="Balance of the posted entries.")
    pending_out: int = Field(description="Open holds that will lower the balance when captured.")
    pending_in: int = Field(description="Open holds that will raise the balance when captured.")
    available: int = Field(description="posted - pending_out: what a new debit may use.")
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int


class AccountRead(BaseModel):
    id: UUID
    owner: str
    name: str
    type: AccountType
    currency: str
    allow_negative: bool
    shards: int
    metadata: dict[str, Any]
    created_at: datetime
    balance: Balance | None = None


class LineIn(_In):
    account_id: UUID
    side: Side
    amount: Amount
    currency: Currency


class EntryCreate(_In):
    lines: list[LineIn] = Field(min_length=2, max_length=100)
    description: Text = Field("", max_length=500)
    metadata: Metadata
    idempotency_key: IdempotencyKey | None = Field(None, description="Or the Idempotency-Key header.")


class TransferCreate(_In):
    """Move ``amount`` from ``debit_account_id`` to ``credit_account_id``: one two-line entry."""

    debit_account_id: UUID
    credit_account_id: UUID
    amount: Amount
    currency: Currency
    description: Text = Field("", max_length=500)
    metadata: Metadata
    idempotency_key: IdempotencyKey | None = Field(None, description="Or the Idempotency-Key header.")


class BatchTransfer(TransferCreate):
    idempotency_key: IdempotencyKey  # required per item in a batch


class BatchCreate(_In):
    items: list[BatchTransfer] = Field(
        min_length=1, max_length=2000, description="At most 2,000 (about 500 KB, within the edge's body limit).")


class LineRead(BaseModel):
    account_id: UUID
    side: Side
    amount: int
    currency: str


class EntryRead(BaseModel):
    id: UUID
    kind: Literal["entry", "transfer", "capture", "reversal"]
    reverses: UUID | None = None
    hold_id: UUID | None = None
    description: str
    metadata: dict[str, Any]
    created_by: str
    created_at: datetime
    lines: list[LineRead]


class ItemResult(BaseModel):
    index: int
    status: Literal["posted", "replayed", "refused"]
    entry: EntryRead | None = None
    error: dict[str, Any] | None = Field(None, description="Why the item was refused (problem+json body).")


class BatchResult(BaseModel):
    posted: int
    replayed: int
    refused: int
    results: list[ItemResult]


class ItemSummary(BaseModel):
    """One item of a batch answered with ``Prefer: return=minimal``: its entry's id, not the entry."""

    index: int
    status: Literal["posted", "replayed", "refused"]
    entry_id: UUID | None = None
    error: dict[str, Any] | None = Field(None, description="Why the item was refused (problem+json body).")


class BatchSummary(BaseModel):
    """A batch's answer with ``Prefer: return=minimal`` (``Preference-Applied: return=minimal``)."""

    posted: int
    replayed: int
    refused: int
    results: list[ItemSummary]


class ReverseCreate(_In):
    description: Text = Field("", max_length=500)
    idempotency_key: IdempotencyKey | None = Field(None, description="Or the Idempotency-Key header.")


class HoldCreate(_In):
    """Reserve ``amount`` of ``debit_account_id`` for a later transfer to ``credit_account_id``."""

    debit_account_id: UUID
    credit_account_id: UUID
    amount: Amount
    currency: Currency
    expires_in_s: int = Field(3600, ge=1, description="Voided by itself after this long (at most the settings').")
    description: Text = Field("", max_length=500)
    metadata: Metadata
    idempotency_key: IdempotencyKey | None = Field(None, description="Or the Idempotency-Key header.")


class HoldCapture(_In):
    amount: Amount | None = Field(None, description="Capture this much (at most the hold's); default: all of it.")
    idempotency_key: IdempotencyKey | None = Field(None, description="Or the Idempotency-Key header.")


class HoldRead(BaseModel):
    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    currency: str
    amount: int
    status: Literal["pending", "captured", "voided", "expired"]
    captured_amount: int | None
    entry_id: UUID | None
    description: str
    metadata: dict[str, Any]
    created_by: str
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None


class StatementLine(BaseModel):
    posting_id: int
    entry_id: UUID
    side: Side
    amount: int
    balance_after: int = Field(description="The account's posted balance (normal side) after this posting.")
    created_at: datetime


class CurrencyTotals(BaseModel):
    currency: str
    debits: int
    credits: int
    balanced: bool


class Reconciliation(BaseModel):
    clean: bool = Field(description="True when every check below found nothing.")
    currencies: list[CurrencyTotals]
    accounts_checked: int
    balance_mismatches: list[dict[str, Any]] = Field(description="Accounts whose stored totals differ from their "
                                                                 "postings or open holds.")
    unbalanced_entries: list[dict[str, Any]]
    negative_accounts: list[dict[str, Any]] = Field(description="Accounts that forbid negatives but are below zero.")
    dangling_holds: list[dict[str, Any]] = Field(description="Pending holds past their expiry.")
    open_holds: int
