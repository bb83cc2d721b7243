"""token-mgr's schemas: token definitions, operations (mint, burn, transfer), balances, vesting schedules.

Amounts are integer counts of a token's base unit (``decimals`` says where a wallet puts the
point); a token's code is its ledger currency, ``QMA``..``QZZ`` (private-use codes that no
ISO 4217 currency will ever take, see the ledger's currencies module).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

BIGINT_MAX = 2**63 - 1
KEY_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,200}$"
HOLDER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"

Units = Annotated[int, Field(strict=True, ge=1, le=BIGINT_MAX, description="Base units of the token, > 0.")]
Holder = Annotated[str, Field(pattern=HOLDER_PATTERN, description="A principal (token subject).")]
IdempotencyKey = Annotated[str, Field(pattern=KEY_PATTERN, description="Unique per caller; a retry sends the same.")]
OperationKind = Literal["mint", "burn", "transfer", "vesting_grant"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TokenCreate(_In):
    code: str = Field(pattern=r"^Q[M-Z][A-Z]$", description="Ledger currency code of the token, QMA..QZZ.")
    name: str = Field(min_length=1, max_length=100)
    decimals: int = Field(0, ge=0, le=18, description="Digits after the point of one whole token.")
    supply_cap: Units = Field(description="Most base units ever minted; burning does not make room again.")


class TokenRead(BaseModel):
    id: UUID
    code: str
    name: str
    decimals: int
    supply_cap: int
    minted: int
    burned: int
    circulating: int = Field(description="minted - burned.")
    created_at: datetime


class MintCreate(_In):
    to_holder: Holder
    amount: Units
    idempotency_key: IdempotencyKey


class BurnCreate(_In):
    amount: Units
    idempotency_key: IdempotencyKey


class TransferCreate(_In):
    to_holder: Holder
    amount: Units
    idempotency_key: IdempotencyKey


class OperationRead(BaseModel):
    id: UUID
    token_id: UUID
    kind: OperationKind
    from_holder: str | None
    to_holder: str | None
    amount: int
    entry_id: UUID | None = Field(description="The ledger entry that moved the units.")
    created_at: datetime


class BalanceRead(BaseModel):
    token_id: UUID
    code: str
    holder: str
    balance: int


class VestingCreate(_In):
    beneficiary: Holder
    total: Units
    start_at: datetime = Field(description="When the first period starts (may be in the past: a backdated grant).")
    period: Literal["day", "month"] = "month"
    periods: int = Field(ge=1, le=600, description="Periods over which the total vests linearly.")
    cliff_periods: int = Field(0, ge=0, description="Periods before anything vests; at the cliff, all vested so far.")
    idempotency_key: IdempotencyKey


class ReleaseRead(BaseModel):
    period: int
    amount: int
    released_at: datetime | None


class VestingRead(BaseModel):
    id: UUID
    token_id: UUID
    beneficiary: str
    total: int
    start_at: datetime
    period: Literal["day", "month"]
    periods: int
    cliff_periods: int
    released: int
    releases: list[ReleaseRead]
