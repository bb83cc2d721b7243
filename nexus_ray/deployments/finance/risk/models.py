"""risk-assessment's schemas: the application, its score, models, promotions and job records.

The application's keys (what ``call("puabo-blac-risk-assessment", "score", application={...})`` takes):

================================  ======================================================================
key                               value
================================  ======================================================================
``checking_account``              ``negative`` | ``under_200`` | ``200_or_more`` | ``none`` (DM)
``duration_months``               integer 1..120
``credit_history``                ``no_credits_or_all_paid`` | ``all_paid_at_this_bank`` | ``existing_paid_duly``
                                  | ``past_delays`` | ``critical_account``
``purpose``                       ``new_car`` | ``used_car`` | ``furniture_equipment`` | ``radio_tv`` |
                                  ``domestic_appliances`` | ``repairs`` | ``education`` | ``vacation`` |
                                  ``retraining`` | ``business`` | ``other``
``credit_amount``                 integer 1..1,000,000 (DM, whole units as in the data)
``savings``                       ``under_100`` | ``100_to_500`` | ``500_to_1000`` | ``1000_or_more`` |
                                  ``unknown_or_none``
``employment_since``              ``unemployed`` | ``under_1_year`` | ``1_to_4_years`` | ``4_to_7_years`` |
                                  ``7_years_or_more``
``installment_rate``              integer 1..4: the installment's share of disposable income, in the
                                  data's four bands (1 lowest)
``other_debtors``                 ``none`` | ``co_applicant`` | ``guarantor``
``residence_since``               integer 1..4 (years at the present address, capped at 4)
``property``                      ``real_estate`` | ``savings_agreement_or_life_insurance`` | ``car_or_other`` |
                                  ``unknown_or_none``
``age``                           integer 18..120
``other_installment_plans``       ``bank`` | ``stores`` | ``none``
``housing``                       ``rent`` | ``own`` | ``for_free``
``existing_credits``              integer 1..10 (credits at this bank, this one included)
``job``                           ``unemployed_or_unskilled_non_resident`` | ``unskilled_resident`` |
                                  ``skilled`` | ``management_or_self_employed``
``dependents``                    integer 1..10 (people the applicant provides for)
``telephone``                     ``none`` | ``registered``
================================  ======================================================================

Sex, marital status and nationality are not asked (nexus_ray.compute.risk says why); unknown keys
are refused (422 naming the key).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from nexus_ray.compute import risk

Band = Literal["low", "moderate", "elevated", "high", "very_high"]
assert risk.BAND_NAMES == ("low", "moderate", "elevated", "high", "very_high")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _choices(name: str) -> Any:
    return Literal[risk.VALUES[name]]


class Application(_In):
    """One credit application: the German credit attributes in readable names (see the module docstring)."""

    checking_account: _choices("checking_account") = Field(description="Checking account status (DM).")  # type: ignore[valid-type]
    duration_months: int = Field(ge=1, le=120, strict=True, description="Loan duration, months.")
    credit_history: _choices("credit_history") = Field(description="Credit history.")  # type: ignore[valid-type]
    purpose: _choices("purpose") = Field(description="What the loan is for.")  # type: ignore[valid-type]
    credit_amount: int = Field(ge=1, le=1_000_000, strict=True, description="Amount asked for, DM.")
    savings: _choices("savings") = Field(description="Savings account / bonds (DM).")  # type: ignore[valid-type]
    employment_since: _choices("employment_since") = Field(description="Present employment since.")  # type: ignore[valid-type]
    installment_rate: int = Field(ge=1, le=4, strict=True,
                                  description="Installment as a share of disposable income, band 1 (lowest) to 4.")
    other_debtors: _choices("other_debtors") = Field(description="Other debtors / guarantors.")  # type: ignore[valid-type]
    residence_since: int = Field(ge=1, le=4, strict=True, description="Years at the present address (1..4).")
    property: _choices("property") = Field(description="Most valuable property.")  # type: ignore[valid-type]
    age: int = Field(ge=18, le=120, strict=True, description="Age, years.")
    other_installment_plans: _choices("other_installment_plans") = Field(  # type: ignore[valid-type]
        description="Other installment plans.")
    housing: _choices("housing") = Field(description="Housing.")  # type: ignore[valid-type]
    existing_credits: int = Field(ge=1, le=10, strict=True, description="Credits at this bank, this one included.")
    job: _choices("job") = Field(description="Job.")  # type: ignore[valid-type]
    dependents: int = Field(ge=1, le=10, strict=True, description="People the applicant provides for.")
    telephone: _choices("telephone") = Field(description="Telephone registered in the applicant's name.")  # type: ignore[valid-type]


assert tuple(Application.model_fields) == risk.ATTRIBUTES


class Reason(BaseModel):
    """A factor that raised this applicant's estimated risk, in words, with how much (``weight``)."""

    attribute: str = Field(description="The application key it is about.")
    text: str = Field(description="The reason in plain words.")
    weight: float = Field(description=(
        "Its contribution to the score against the average applicant: probability points for the served "
        "family (logit_forest_blend), log-odds for a calibrated_logit model."))


class RiskScore(BaseModel):
    """A calibrated probability of default, its band, and the reasons that pushed it up most."""

    probability_of_default: float = Field(ge=0, le=1)
    band: Band = Field(description="low < 0.10 <= moderate < 1/6 <= elevated < 0.30 <= high < 0.50 <= very_high.")
    reasons: list[Reason] = Field(description="Up to four factors that raised the risk most, largest first; "
                                              "empty when nothing raised it above the average applicant.")
    model_id: UUID
    model_version: int


class ModelRead(BaseModel):
    id: UUID
    version: int
    family: str
    metrics: dict[str, Any]
    feature_schema: dict[str, Any]
    data_hash: str
    training_rows: int
    trained_by: str
    created_at: datetime
    active: bool = False


class PromotionCreate(_In):
    reason: str = Field("", max_length=500, description="Why (kept in the audit trail).")


class PromotionRead(BaseModel):
    id: int
    model_id: UUID
    previous_id: UUID | None
    action: Literal["promote", "rollback", "first"]
    actor: str
    reason: str
    at: datetime


class TrainingCreate(_In):
    sample: int | None = Field(None, ge=100, le=1000, description="Train on this many rows (seeded), default all.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the sample and of the cross-validation folds.")
    c: float | None = Field(None, gt=0, le=100, description="Fix the L2 strength (inverse) instead of choosing it "
                            "by inner cross-validation.")


class ApplicationsCreate(_In):
    items: list[Application] = Field(min_length=1, max_length=1000)


class ApplicationsCreated(BaseModel):
    ids: list[int]


class BatchCreate(_In):
    from_id: int = Field(1, ge=1, description="First application id to score.")
    to_id: int | None = Field(None, ge=1, description="Last application id to score (default: the last stored).")
    chunk_size: int = Field(50_000, ge=10, le=500_000, description="Applications per Ray task.")


class JobRead(BaseModel):
    id: UUID
    kind: Literal["train", "score"]
    submission_id: str
    requested_by: str
    params: dict[str, Any]
    status: Literal["submitted", "running", "succeeded", "failed"]
    total: int
    done: int
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    ray: dict[str, Any] | None = Field(
        None, description="The Ray job's status and its last progress line (null when Ray is not reachable).")


class ScoreRow(BaseModel):
    application_id: int
    probability_of_default: float
    band: Band
    reasons: list[str]
