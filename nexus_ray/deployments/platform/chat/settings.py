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
        "frame (about 1000/this frames a second per connection however fast the room talks). An event after a "
        "quiet spell of this length goes out at once. 0 sends each event as soon as it comes.",
    )
    chat_max_text: int = Field(4000, ge=1, description="Longest message text, characters.")
