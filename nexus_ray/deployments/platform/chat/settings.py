"""chat-service's own settings (variables ``NEXUS_CHAT_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class ChatSettings(ServiceSettings):
    """How chat rooms are sharded and how much a slow client may fall behind."""

    chat_shards: int = Field(
        2, ge=1, le=1024, description="Shard actors holding the chat rooms (each a Ray worker process holding many "
        "rooms). Changing it re-homes rooms; stop the old shards afterwards.",
    )
    chat_shard_max_resident: int = Field(
        10_000, ge=1, description="Rooms one shard keeps in memory; idle ones beyond it are restored on use.",
    )
    chat_client_backlog: int = Field(
        2000, ge=10, description="Live events queued for one connection before it is closed (1013) as too slow; "
        "the client reconnects and resumes from its last sequence number.",
    )
    chat_batch_linger_ms: float = Field(
        80.0, ge=0, le=1000, description="For members that read batches (``?batch=true``): in a busy room an event "
        "waits at most this long, from when it reached the replica, for the ones behind it, and they go out as one "
        "frame. The wait actually used follows what the replica's frames cost (``chat_batch_linger_factor``), "
        "between ``chat_batch_linger_min_ms`` and this. An event after a quiet spell of a linger goes out at once. "
        "0 sends each event as soon as it comes.",
    )
    chat_batch_linger_min_ms: float = Field(
        20.0, ge=0, le=1000, description="The shortest linger a room's feed uses when its frames reach its members "
        "quickly (a machine with CPU to spare). Equal to ``chat_batch_linger_ms`` (or above it) for a fixed linger.",
    )
    chat_batch_linger_factor: float = Field(
        3.0, ge=1, le=100, description="The linger is held at this many times the time the replica's last frames "
        "took to reach nine in ten of the room's members here (a moving average), so that handing frames out takes "
        "at most about 1/this of the replica's time for the room; a busy machine makes that time, and so the "
        "linger, longer.",
    )
    chat_max_text: int = Field(4000, ge=1, description="Longest message text, characters.")
