"""puabomusicchain's schemas: chain records (rights and splits), roots, proofs, verification, royalty runs.

A **rights** record says who holds which right in a work (``work``, ``holder``, ``right``:
master, publishing, performance..., ``territory``); a **split** record gives the shares of a
work's royalties (``work``, ``shares``: holder -> basis points, summing to 10,000); the
latest split of a work is the one in force. Money is integer minor units of an ISO 4217
currency.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from nexus_ray.deployments.commerce.ledger.currencies import EXPONENTS

BIGINT_MAX = 2**63 - 1
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
KEY_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,200}$"

WorkId = Annotated[str, Field(pattern=ID_PATTERN, description="The work's id (ISWC, ISRC or the registry's own).")]
Holder = Annotated[str, Field(pattern=ID_PATTERN, description="A rights holder (principal).")]


def _iso_currency(code: str) -> str:
    if code not in EXPONENTS:
        raise ValueError("is not an ISO 4217 currency the ledger knows")
    return code


Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$"), AfterValidator(_iso_currency)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RightsBody(_In):
    kind: Literal["rights"] = "rights"
    work: WorkId
    holder: Holder
    right: Literal["master", "publishing", "performance", "mechanical", "sync"]
    territory: str = Field("WW", pattern=r"^[A-Z]{2}$", description="ISO 3166 country, or WW for the world.")
    title: str | None = Field(None, max_length=300)


class SplitBody(_In):
    kind: Literal["split"] = "split"
    work: WorkId
    shares: dict[Holder, Annotated[int, Field(strict=True, ge=0, le=10_000)]] = Field(
        min_length=1, max_length=100, description="Holder -> basis points; they sum to 10,000.")

    @model_validator(mode="after")
    def _whole(self) -> SplitBody:
        if sum(self.shares.values()) != 10_000:
            raise ValueError("shares must sum to 10000 basis points")
        return self


RecordBody = Annotated[RightsBody | SplitBody, Field(discriminator="kind")]


class RecordsCreate(_In):
    records: list[RecordBody] = Field(min_length=1, max_length=1000, description="Appended in this order.")


class RecordRead(BaseModel):
    seq: int
    prev: str
    kind: str
    body: dict[str, Any]
    hash: str
    created_at: datetime


class RootRead(BaseModel):
    size: int = Field(description="Records under the root (seqs 0..size-1).")
    root: str = Field(description="Merkle root (hex), RFC 6962 shape.")
    head: str = Field(description="Hash of the last record under the root.")
    published_at: datetime


class ProofRead(BaseModel):
    record: RecordRead
    root: RootRead
    index: int
    size: int
    path: list[tuple[Literal["L", "R"], str]] = Field(description="Sibling hashes from the leaf up, with their side.")
    bytes: int = Field(description="Size of the proof in binary (33 bytes a step).")
    verified: bool = Field(description="The path takes the record's hash to the root (checked here too).")


class DamageRead(BaseModel):
    kind: Literal["altered", "removed", "reordered", "duplicated"]
    seq: int
    position: int = Field(description="0-based place in storage order where it was found.")
    detail: str
    through: int | None = None


class VerificationRead(BaseModel):
    ok: bool
    records: int
    head: str
    anchor: RootRead | None = Field(None, description="The latest published root, checked against.")
    damages: list[DamageRead]


class WorkRead(BaseModel):
    work: str
    rights: list[RecordRead]
    split: dict[str, int] | None = Field(None, description="The shares in force (the latest split).")


class Payment(_In):
    work: WorkId
    amount: Annotated[int, Field(strict=True, ge=1, le=BIGINT_MAX)]


class RoyaltyRunCreate(_In):
    currency: Currency
    payments: list[Payment] = Field(min_length=1, max_length=20_000)
    idempotency_key: Annotated[str, Field(pattern=KEY_PATTERN)]


class RoyaltyRunRead(BaseModel):
    id: UUID
    currency: str
    status: Literal["computed", "posted"]
    works: int
    holders: int
    paid_in: int = Field(description="Sum of the payments.")
    paid_out: int = Field(description="Sum credited to holders: always equal to paid_in.")
    entries: int = Field(description="Ledger entries posted (one per 500 holders).")
    created_at: datetime


class RoyaltyLine(BaseModel):
    run_id: UUID
    work: str
    amount: int
