"""loan-processor's own settings (variables ``NEXUS_LOANS_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class LoanSettings(ServiceSettings):
    """Bounds of an application, the decision's thresholds and the late-payment rule."""

    loans_min_amount: int = Field(50_000, ge=1, description="Smallest principal lent, minor units.")
    loans_max_amount: int = Field(5_000_000, ge=1, description="Largest principal lent, minor units.")
    loans_max_probability_of_default: float = Field(
        0.35, gt=0, le=1, description="Applications whose probability of default is above this are declined.")
    loans_max_dti_bps: int = Field(
        4300, ge=1, description="Highest debt-to-income ratio after the new payment, basis points of the monthly "
        "income (43 %: the US qualified-mortgage line).")
    loans_max_income_share_bps: int = Field(
        5000, ge=1, description="Largest principal as a share of the yearly income, basis points.")
    loans_late_grace_days: int = Field(15, ge=0, description="Days after a due date before a late fee is charged.")
    loans_late_fee_bps: int = Field(500, ge=0, description="Late fee, basis points of the late installment.")
    loans_late_fee_min: int = Field(0, ge=0, description="Smallest late fee, minor units.")
    loans_late_fee_max: int = Field(5_000, ge=0, description="Largest late fee, minor units.")
