"""Redis through ``redis.asyncio``: one client (connection pool) per process."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from nexus_ray.config import get_settings

_client: aioredis.Redis | None = None


def redis_client() -> aioredis.Redis:
    """The process-wide asyncio Redis client, created on first use from settings.

    Its pool is bounded and *blocking*: past ``redis_pool_max`` connections a command waits
    for a free one (up to ``redis_pool_wait_s``) instead of failing. redis-py's default pool
    raises "Too many connections" at 100 in use, which a replica with 256 requests in flight
    (or a shard actor restoring hundreds of entities at once) reaches.
    """
    global _client
    if _client is None:
        s = get_settings()
        if not s.redis_url:
            raise RuntimeError("NEXUS_REDIS_URL is not set: start the embedded stores (`nexus up`) or configure Redis")
        pool = aioredis.BlockingConnectionPool.from_url(
            s.redis_url, max_connections=s.redis_pool_max, timeout=s.redis_pool_wait_s, health_check_interval=30
        )
        _client = aioredis.Redis.from_pool(pool)
    return _client


_scripts: dict[str, AsyncScript] = {}


def script(body: str) -> AsyncScript:
    """The Lua script ``body``, registered once per process; call it with ``keys=``, ``args=``, ``client=``.

    redis-py runs it by EVALSHA and loads it again if the server has lost it (a restart).
    """
    found = _scripts.get(body)
    if found is None:
        found = _scripts[body] = redis_client().register_script(body)
    return found


async def close_redis() -> None:
    """Close the process-wide client (tests and shutdown)."""
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None


async def ping() -> bool:
    """Readiness probe: True when Redis answers PING."""
    return bool(await redis_client().ping())
