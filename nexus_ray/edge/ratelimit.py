"""Rate limits kept in Redis: fixed one-minute windows, several keys in one round trip.

The same round trip also checks the revocation list (:mod:`nexus_ray.edge.revocations`)
for the token presented, so admitting an authenticated request costs one Redis call.

Failed authentications have a budget of their own per client address (:func:`failed`), far
lower than the request budget. Once an address has spent it, the replica that saw it refuses
that address's credentials at once (:func:`refuse_failing`) until the window ends, without a
store or a signature check: a flood of forged tokens costs a dictionary lookup per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from nexus_ray.exceptions import RateLimited, Unauthorized
from nexus_ray.stores.cache import redis_client, script

WINDOW_S = 60

# ARGV: window seconds, number of limit keys, the limits, then the token's iat.
# KEYS: the limit keys, then the revocation keys (token, grant: present = revoked; subject:
# a time, tokens issued before it are revoked). A revoked token is refused before it is
# counted. Every limit key is counted even when one is over, so a client that keeps
# hammering stays limited; the first key over its limit is reported with its seconds left.
_SCRIPT = """
local n_limits = tonumber(ARGV[2])
local iat = tonumber(ARGV[3 + n_limits])
for i = n_limits + 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    if string.find(KEYS[i], ':sub:', 1, true) == nil or (iat and iat < tonumber(v)) then
      return {-1, 0}
    end
  end
end
local over, wait = 0, 0
for i = 1, n_limits do
  local n = redis.call('INCR', KEYS[i])
  if n == 1 then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
  if over == 0 and n > tonumber(ARGV[i + 2]) then
    over = i
    wait = redis.call('TTL', KEYS[i])
  end
end
return {over, wait}
"""

async def admit(
    limits: list[tuple[str, str, int]], *, revocation_keys: Sequence[str] = (), issued_at: int | None = None
) -> None:
    """Count one request against each ``(scope, identity, per_minute)`` and check the token's revocation keys.

    Raises Unauthorized for a revoked token, RateLimited when a limit is over.
    """
    window = int(time.time()) // WINDOW_S
    keys = [f"nexus:rl:{scope}:{ident}:{window}" for scope, ident, _ in limits] + list(revocation_keys)
    args = [WINDOW_S + 1, len(limits), *(limit for _, _, limit in limits), issued_at if issued_at is not None else ""]
    over, wait = await script(_SCRIPT)(keys=keys, args=args, client=redis_client())
    if int(over) == -1:
        raise Unauthorized("token revoked")
    if over:
        raise RateLimited.retry_after(int(wait) if int(wait) > 0 else WINDOW_S, limits[int(over) - 1][0])


#: Client addresses over their failed-authentication budget, as this replica learnt from Redis:
#: address -> monotonic time their window ends. Bounded; Redis stays the authority.
_failing: dict[str, float] = {}
_FAILING_MAX = 10_000
_FAILURES = "address (failed authentications)"


def refuse_failing(address: str) -> None:
    """Raise RateLimited if this replica saw ``address`` spend its failed-authentication budget this window."""
    until = _failing.get(address)
    if until is None:
        return
    left = until - time.monotonic()
    if left > 0:
        raise RateLimited.retry_after(math.ceil(left), _FAILURES)
    del _failing[address]


async def failed(address: str, per_minute: int) -> None:
    """Count one failed authentication of ``address``; raise RateLimited once it made more than ``per_minute``."""
    try:
        await admit([("authfail", address, per_minute)])
    except RateLimited as exc:
        wait = exc.extra["retry_after"]
        if len(_failing) >= _FAILING_MAX:
            now = time.monotonic()
            for stale in [a for a, t in _failing.items() if t <= now]:
                del _failing[stale]
        if len(_failing) < _FAILING_MAX:
            _failing[address] = time.monotonic() + wait
        raise RateLimited.retry_after(wait, _FAILURES) from None


async def hit(limits: list[tuple[str, str, int]]) -> None:
    """Count one request against each ``(scope, identity, per_minute)``; raise RateLimited when over."""
    await admit(limits)
