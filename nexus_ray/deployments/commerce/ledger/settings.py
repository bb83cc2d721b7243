"""ledger-mgr's own settings (variables ``NEXUS_LEDGER_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class LedgerSettings(ServiceSettings):
    """Balance sharding, hold lifetimes and batch sizes of the ledger."""

    ledger_default_shards: int = Field(
        4, ge=1, le=64, description="Balance shards of a new account unless it asks for others. Transactions that "
        "only raise an account's balance update one shard picked at random, so N shards let N of them run at once.",
    )
    ledger_hold_max_s: int = Field(
        7 * 86400, ge=1, description="Longest lifetime of a hold, seconds; it is voided (expired) after it.",
    )
    ledger_hold_sweep_s: float = Field(
        2.0, gt=0, description="How often expired holds are looked for and voided, seconds.",
    )
    ledger_batch_max: int = Field(
        2000, ge=1, le=2000, description="Transfers one batch request may carry (2,000 at most: about 500 KB of "
        "JSON, within the edge's default 1 MiB body limit).",
    )
