"""risk-assessment's own settings (variables ``NEXUS_RISK_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class RiskSettings(ServiceSettings):
    """How often a replica looks for a newly promoted model, and how many reasons a score gives."""

    risk_model_refresh_s: float = Field(
        2.0, ge=0, description="A replica re-reads which model is active at most this often, seconds (a promotion "
        "made through this replica applies at once; on others within this time).",
    )
    risk_reasons: int = Field(4, ge=1, le=8, description="Reasons given with a score (adverse-action notices "
                              "usually give up to four).")
