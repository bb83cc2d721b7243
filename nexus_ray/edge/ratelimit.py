"""Rate limits kept in Redis: fixed one-minute windows, several keys in one round trip."""

from __future__ import annotations

import time

from nexus_ray.exceptions import RateLimited
from nexus_ray.stores.cache import redis_client

WINDOW_S = 60

# Counts the request against every key; reports the first key over its limit and the
# seconds left in its window. All keys are counted even when one is over, so a client
# that keeps hammering stays limited.
_SCRIPT = """
local over, wait = 0, 0
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ARGV[1]) end
  if over == 0 and n > tonumber(ARGV[i + 1]) then
    over = i
    wait = redis.call('TTL', key)
  end
end
return {over, wait}
"""

_script = None


async def hit(limits: list[tuple[str, str, int]]) -> None:
    """Count one request against each ``(scope, identity, per_minute)``; raise RateLimited when over."""
    global _script
    client = redis_client()
    if _script is None:
        _script = client.register_script(_SCRIPT)
    window = int(time.time()) // WINDOW_S
    keys = [f"nexus:rl:{scope}:{ident}:{window}" for scope, ident, _ in limits]
    over, wait = await _script(keys=keys, args=[WINDOW_S + 1, *(limit for _, _, limit in limits)], client=client)
    if over:
        raise RateLimited.retry_after(int(wait) if int(wait) > 0 else WINDOW_S, limits[int(over) - 1][0])

