"""Brute-force defence of password checks: lockout per account, throttling per client address.

Every attempt is counted *before* its password is verified, in one atomic Redis script,
and uncounted only when it succeeds. So however many attempts an attacker sends at
once, an account gets at most ``auth_lockout_threshold`` verifications per lockout, and
an address at most ``auth_address_max_failures`` failed ones per window; the refused
attempts cost a Redis round trip, not an argon2 hash.

* account: ``auth_lockout_threshold`` failures within ``auth_lockout_window_s`` lock it
  for ``auth_lockout_duration_s`` (423 Locked with Retry-After), then it is released;
  a success resets the count. Unknown usernames are counted alike, so a lock says
  nothing about whether the account exists.
* address: ``auth_address_max_failures`` failures within ``auth_address_window_s``
  refuse that address's logins for the rest of the window (429 with Retry-After).

Redis keys: ``nexus:auth:lock:<account>``, ``nexus:auth:fail:<account>``,
``nexus:auth:addr-fail:<address>``; ``<account>`` is a keyed digest (:mod:`nexus_ray.edge.digests`) of the username.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus_ray.deployments.auth.auth.settings import settings as auth_settings
from nexus_ray.edge import digests
from nexus_ray.exceptions import NexusError, RateLimited
from nexus_ray.stores.cache import redis_client, script


class AccountLocked(NexusError):
    """423: the account refuses logins until the lockout ends."""

    status, title, slug = 423, "Locked", "account-locked"

    @classmethod
    def for_seconds(cls, seconds: int) -> AccountLocked:
        seconds = max(1, int(seconds))
        return cls(
            f"account locked after repeated failed logins; retry in {seconds} s",
            extra={"retry_after": seconds},
            headers={"Retry-After": str(seconds)},
        )


# KEYS lock, account failures, address failures.
# ARGV threshold, window, duration, address max, address window.
# Returns {0, n}: go ahead, this is the account's n-th counted attempt; {1, ttl}: locked; {2, ttl}: throttled.
_BEGIN = """
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then return {1, ttl} end
if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[4]) then
  return {2, math.max(1, redis.call('TTL', KEYS[3]))}
end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
if redis.call('INCR', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
if n > tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return {1, tonumber(ARGV[3])}
end
return {0, n}
"""

# KEYS lock, account failures, address failures: the attempt succeeded, so it was no failure.
_SUCCEEDED = """
redis.call('DEL', KEYS[1], KEYS[2])
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
return 1
"""

@dataclass(frozen=True)
class Attempt:
    """A counted attempt: its keys and the account's count including it."""

    account: str
    address: str
    number: int

    @property
    def keys(self) -> list[str]:
        return _keys(self.account, self.address)


def account_key(username: str) -> str:
    # Under the current master key only: a rotation restarts the counts once, which costs an
    # attacker's guesses nothing they did not have before the window, and lookups stay one call.
    return digests.hex_digest("login-account", username.strip().lower())


def _keys(account: str, address: str) -> list[str]:
    return [f"nexus:auth:lock:{account}", f"nexus:auth:fail:{account}", f"nexus:auth:addr-fail:{address}"]



async def begin(*, username: str, address: str) -> Attempt:
    """Count an attempt for ``username`` from ``address``; AccountLocked or RateLimited when refused."""
    s = auth_settings()
    account = account_key(username)
    verdict, value = await script(_BEGIN)(
        keys=_keys(account, address),
        args=[s.auth_lockout_threshold, s.auth_lockout_window_s, s.auth_lockout_duration_s,
              s.auth_address_max_failures, s.auth_address_window_s],
        client=redis_client(),
    )
    if verdict == 1:
        raise AccountLocked.for_seconds(value)
    if verdict == 2:
        seconds = max(1, int(value))
        raise RateLimited(
            f"too many failed logins from this address; retry in {seconds} s",
            extra={"retry_after": seconds, "limit_scope": "login-address"},
            headers={"Retry-After": str(seconds)},
        )
    return Attempt(account, address, int(value))


async def failed(attempt: Attempt) -> None:
    """The attempt's password was wrong: lock the account when this was the last allowed failure."""
    s = auth_settings()
    if attempt.number >= s.auth_lockout_threshold:
        lock, fails, _ = attempt.keys
        async with redis_client().pipeline(transaction=True) as pipe:
            pipe.set(lock, b"1", ex=s.auth_lockout_duration_s)
            pipe.delete(fails)
            await pipe.execute()
        raise AccountLocked.for_seconds(s.auth_lockout_duration_s)


async def succeeded(attempt: Attempt) -> None:
    """The attempt succeeded: the account's count restarts and the address is not charged for it."""
    await script(_SUCCEEDED)(keys=attempt.keys, client=redis_client())


async def locked_for(*, username: str) -> int:
    """Seconds the account of ``username`` stays locked; 0 when it is not locked."""
    ttl = await redis_client().ttl(_keys(account_key(username), "-")[0])
    return max(0, int(ttl))


async def release(*, username: str) -> bool:
    """End the lockout of ``username``'s account and forget its failures (an administrator's decision).

    True if there was a lock or a failure to forget.
    """
    lock, fails, _ = _keys(account_key(username), "-")
    return bool(await redis_client().delete(lock, fails))
