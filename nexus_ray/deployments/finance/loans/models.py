"""loan-processor's schemas: applications, the risk score, the decision, loans, installments, repayments.

Money is integer minor units of the loan's ISO 4217 currency (``strict``: no float becomes
money); rates are decimal strings (``"0.0699"`` is 6.99 %).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nexus_ray.deployments.commerce.ledger.currencies import EXPONENTS

BIGINT_MAX = 2**63 - 1
KEY_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,200}$"

Status = Literal["applied", "manual_review", "scored", "offered", "accepted", "disbursed", "repaying", "closed",
                 "declined", "defaulted"]


def _iso_currency(code: str) -> str:
    if code not in EXPONENTS:
        raise ValueError("is not an ISO 4217 currency the ledger knows")
    return code


Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD."),
                     AfterValidator(_iso_currency)]
Money = Annotated[int, Field(strict=True, ge=0, le=BIGINT_MAX, description="Minor units (cents for USD).")]
IdempotencyKey = Annotated[str, Field(pattern=KEY_PATTERN, description="Unique per caller; a retry sends the same.")]
Detail = str | int | bool


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LoanCreate(_In):
    """A loan application."""

    amount: Money = Field(description="Principal asked for, minor units.")
    currency: Currency
    term_months: int = Field(ge=3, le=360, description="Months to repay in, one payment a month.")
    annual_income: Money = Field(description="The applicant's yearly income before tax, minor units.")
    monthly_debt: Money = Field(0, description="Payments the applicant already owes each month, minor units.")
    purpose: str = Field("other", min_length=1, max_length=60, pattern=r"^[a-z_]+$",
                         description="What the loan is for: car, furniture, education, business, other...")
    details: dict[str, Detail] = Field(
        default_factory=dict, max_length=40,
        description="Further facts for the risk model (employment, housing, credit history...), passed on as given.")
    idempotency_key: IdempotencyKey = Field(description="A retry of the same application sends the same key.")


class ReviewCreate(_In):
    """A reviewer's score for an application the model could not score."""

    probability_of_default: float = Field(ge=0, le=1, description="The reviewer's probability of default.")
    band: str = Field("manual", min_length=1, max_length=20)
    reasons: list[str] = Field(default_factory=list, max_length=10)


class RepaymentCreate(_In):
    idempotency_key: IdempotencyKey
    paid_on: date | None = Field(
        None, description="Value date of a payment received elsewhere (administrators only); default: today.")


class RiskScore(BaseModel):
    """What decided the application: the model's score, or a reviewer's."""

    probability_of_default: float
    band: str
    reasons: list[str] = Field(default_factory=list)
    source: Literal["model", "review"] = "model"


class RuleResult(BaseModel):
    rule: Literal["risk", "amount", "debt_to_income"]
    passed: bool
    detail: str


class Decision(BaseModel):
    """The outcome, every rule's result, and the price when approved."""

    outcome: Literal["approved", "declined"]
    rules: list[RuleResult]
    annual_rate: str | None = Field(None, description="Note rate when approved (decimal: 0.0699 is 6.99 %).")
    fees: int | None = Field(None, description="Origination fee when approved, minor units.")


class Offer(BaseModel):
    annual_rate: str = Field(description="Note rate (decimal fraction).")
    apr: str = Field(description="Annual percentage rate by the actuarial method (decimal fraction).")
    fees: int = Field(description="Origination fee, a prepaid finance charge kept from the disbursement.")
    amount_financed: int
    level_payment: int
    total_of_payments: int
    finance_charge: int


class Transition(BaseModel):
    from_status: Status | None
    to_status: Status
    actor: str
    at: datetime


class LoanRead(BaseModel):
    id: UUID
    borrower: str
    status: Status
    amount: int
    currency: str
    term_months: int
    purpose: str
    risk: dict[str, Any] | None = Field(None, description="The score, or why none could be had (manual review).")
    decision: Decision | None = None
    offer: Offer | None = None
    payments_made: int
    outstanding_principal: int
    wallet_account_id: UUID | None = Field(None, description="The borrower's ledger wallet (disbursed into).")
    receivable_account_id: UUID | None = None
    disbursed_on: date | None = None
    created_at: datetime
    updated_at: datetime
    history: list[Transition] = Field(default_factory=list)


class InstallmentRead(BaseModel):
    period: int
    due_on: date | None
    payment: int
    interest: int
    principal: int
    balance: int
    paid: bool


class RepaymentRead(BaseModel):
    seq: int
    kind: Literal["installment", "payoff"]
    period: int | None
    paid_on: date
    days_late: int
    principal: int
    interest: int
    late_fee: int
    total: int
    entry_id: UUID | None


class PayoffQuote(BaseModel):
    on: date
    principal: int
    interest: int
    total: int
