"""session-mgr's own settings (variables ``NEXUS_SESSION_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class SessionSettings(ServiceSettings):
    """Timeouts and caps of the sessions session-mgr keeps, and how its state is sharded."""

    session_idle_timeout_s: int = Field(
        1800, ge=1, description="Default (and largest) idle timeout of a session, seconds."
    )
    session_absolute_timeout_s: int = Field(
        604800, ge=1, description="Default (and largest) absolute lifetime of a session, seconds."
    )
    session_max_per_user: int = Field(
        100, ge=1, description="Sessions one user may hold; creating one more evicts the least recently used.",
    )
    session_shards: int = Field(
        2, ge=1, le=1024, description="Shard actors holding the users' sessions (each a Ray worker process of "
        "about 100 MiB, each holding many users). Changing it re-homes users; stop the old shards afterwards.",
    )
    session_shard_max_resident: int = Field(
        50_000, ge=1, description="Users whose sessions one shard keeps in memory; the least recently used idle "
        "ones beyond it are dropped from memory and restored from Redis on their next call.",
    )
