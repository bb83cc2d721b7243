"""driver-app-backend's own settings (variables ``NEXUS_DRIVERS_*``)."""

from __future__ import annotations

from uuid import UUID

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class DriverSettings(ServiceSettings):
    """Shifts, presence and the ledger accounts of drivers' earnings."""

    drivers_shift_max_h: float = Field(14.0, gt=0, le=24, description="Longest shift, hours.")
    drivers_presence_ttl_s: int = Field(
        60, ge=5, description="Seconds a driver counts as connected after their socket last showed life; the socket "
        "refreshes it every third of that.",
    )
    drivers_earnings_debit_account: UUID | None = Field(
        None, description="Ledger account (the platform's driver-earnings expense) debited for each earning; the "
        "driver's payable account is credited. Unset: earnings are recorded per job and not posted.",
    )
    drivers_earnings_sweep_s: float = Field(
        30.0, gt=0, description="How often earnings not yet posted to the ledger are posted again, seconds.",
    )
