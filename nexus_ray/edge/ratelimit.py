"""Rate limits kept in Redis: fixed one-minute windows, several keys in one round trip.

The same round trip also checks the revocation list (:mod:`nexus_ray.edge.revocations`)
for the token presented, so admitting an authenticated request costs one Redis call, shared with the
requests that a replica admits at the same moment (one script run for all of them).

Failed authentications have a budget of their own per client address (:func:`failed`), far
lower than the request budget. Once an address has spent it, the replica that saw it refuses
that address's credentials at once (:func:`refuse_failing`) until the window ends, without a
store or a signature check: a flood of forged tokens costs a dictionary lookup per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nexus_ray.exceptions import RateLimited, Unauthorized
from nexus_ray.stores.cache import redis_client, script
from nexus_ray.stores.together import GroupCommit

WINDOW_S = 60

# The admissions of a moment, in one script run (:data:`_admissions`). ARGV: the window's seconds, the number of
# admissions, then per admission: its number of limit keys, its number of revocation keys, the token's iat ("" when
# none) and its limits. KEYS: per admission, its limit keys, then its revocation keys (token, grant: present =
# revoked; subject: a time, tokens issued before it are revoked). Returns a pair per admission: -1 for a revoked
# token (refused before it is counted), else the first key over its limit (0: none) and that key's seconds left.
# Every limit key is counted even when one is over, so a client that keeps hammering stays limited.
_SCRIPT = """
local out, k, a = {}, 0, 2
for _ = 1, tonumber(ARGV[2]) do
  local n_limits, n_revocations, iat = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local over, wait = 0, 0
  for i = k + n_limits + 1, k + n_limits + n_revocations do
    local v = redis.call('GET', KEYS[i])
    if v and (string.find(KEYS[i], ':sub:', 1, true) == nil or (iat and iat < tonumber(v))) then
      over = -1
      break
    end
  end
  if over == 0 then
    for i = 1, n_limits do
      local n = redis.call('INCR', KEYS[k + i])
      if n == 1 then redis.call('EXPIRE', KEYS[k + i], ARGV[1]) end
      if over == 0 and n > tonumber(ARGV[a + 3 + i]) then
        over = i
        wait = redis.call('TTL', KEYS[k + i])
      end
    end
  end
  out[#out + 1] = over
  out[#out + 1] = wait
  k = k + n_limits + n_revocations
  a = a + 3 + n_limits
end
return out
"""


@dataclass(frozen=True)
class _Admission:
    """One request's admission as :func:`admit` hands it to the batch."""

    limit_keys: list[str]
    limits: list[int]
    revocation_keys: Sequence[str]
    issued_at: int | None


async def _admit_together(_key: None, batch: list[_Admission]) -> list[tuple[int, int]]:
    """The admissions of a moment in one round trip: (over, seconds left) for each, as :data:`_SCRIPT` says."""
    keys: list[str] = []
    args: list[int | str] = [WINDOW_S + 1, len(batch)]
    for x in batch:
        keys += x.limit_keys
        keys += x.revocation_keys
        args += [len(x.limit_keys), len(x.revocation_keys), "" if x.issued_at is None else x.issued_at, *x.limits]
    flat = await script(_SCRIPT)(keys=keys, args=args, client=redis_client())
    return [(int(flat[2 * i]), int(flat[2 * i + 1])) for i in range(len(batch))]


#: The admissions that a process's requests ask for at the same moment: one Redis call for all of them, instead of
#: a call (a pooled connection, a round trip, a reply to parse) each. A request has no siblings to wait for, so a
#: batch goes at once (``turns=0``): only the admissions asked while one is out wait, for the next.
_admissions: GroupCommit[None, _Admission, tuple[int, int]] = GroupCommit(_admit_together, turns=0)


async def admit(
    limits: list[tuple[str, str, int]], *, revocation_keys: Sequence[str] = (), issued_at: int | None = None
) -> None:
    """Count one request against each ``(scope, identity, per_minute)`` and check the token's revocation keys.

    Raises Unauthorized for a revoked token, RateLimited when a limit is over. The admissions of concurrent
    requests go to Redis together (:data:`_admissions`), each still counted and answered on its own.
    """
    window = int(time.time()) // WINDOW_S
    over, wait = await _admissions.submit(None, _Admission(
        [f"nexus:rl:{scope}:{ident}:{window}" for scope, ident, _ in limits], [limit for _, _, limit in limits],
        revocation_keys, issued_at))
    if over == -1:
        raise Unauthorized("token revoked")
    if over:
        raise RateLimited.retry_after(wait if wait > 0 else WINDOW_S, limits[over - 1][0])


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
