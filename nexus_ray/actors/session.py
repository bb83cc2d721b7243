"""UserSessions: one user's sessions (device, address, user agent, last use), with idle and absolute timeouts.

One entity per user (key: the user id), living in one of session-mgr's shard actors
(:mod:`nexus_ray.actors.shards`), reached through an
:class:`~nexus_ray.actors.client.EntityClient`. Every change is journaled by
:class:`~nexus_ray.actors.base.PersistentActor` before it is acknowledged, so a killed
shard comes back with every session of every user it held.

Ops are idempotent because Ray retries a call whose shard died mid-flight: the caller
chooses the session id (creating it twice is one session), a touch sets "last used at
T" (never backwards), removal names the ids. Time is an argument of every op, never
read inside :meth:`UserSessions.apply`, so a replay computes the same state.

A session is valid while ``now < last_used_at + idle_timeout_s`` and
``now < created_at + absolute_timeout_s``. Expired sessions are reported invalid (with
the reason) and pruned by the call that finds them; removed sessions leave nothing behind.
"""

from __future__ import annotations

import time
from typing import Any

from nexus_ray.actors.base import PersistentActor

IDLE = "idle_timeout"
ABSOLUTE = "absolute_timeout"
UNKNOWN = "unknown"


def expiry_reason(session: dict[str, Any], now: float) -> str | None:
    """Why ``session`` is no longer valid at ``now``; None while it is valid."""
    if now >= session["created_at"] + session["absolute_timeout_s"]:
        return ABSOLUTE
    if now >= session["last_used_at"] + session["idle_timeout_s"]:
        return IDLE
    return None


def with_expiries(session: dict[str, Any]) -> dict[str, Any]:
    """``session`` with the two moments it ends (idle, absolute), as epoch seconds."""
    absolute = session["created_at"] + session["absolute_timeout_s"]
    return {**session, "expires_at": absolute,
            "idle_expires_at": min(absolute, session["last_used_at"] + session["idle_timeout_s"])}


class UserSessions(PersistentActor):
    """The live sessions of one user."""

    kind = "session"
    snapshot_every = 200

    def initial_state(self) -> dict[str, Any]:
        return {"sessions": {}}

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        sessions = dict(state["sessions"])
        if op == "create":
            new = data["session"]
            sessions.setdefault(new["session_id"], new)
            # Over the cap: the least recently used others go (ties broken by id, so a replay agrees).
            others = sorted((s["last_used_at"], sid) for sid, s in sessions.items() if sid != new["session_id"])
            for _, sid in others[: max(0, len(sessions) - data["max_sessions"])]:
                del sessions[sid]
        elif op == "touch":
            current = sessions.get(data["session_id"])
            if current is not None and data["at"] > current["last_used_at"]:
                sessions[data["session_id"]] = {**current, "last_used_at": data["at"]}
        elif op == "remove":
            for sid in data["session_ids"]:
                sessions.pop(sid, None)
        else:
            raise ValueError(f"unknown op {op!r}")
        return {"sessions": sessions}

    # -- calls ---------------------------------------------------------------------------

    async def _prune(self, now: float) -> dict[str, str]:
        expired = {sid: r for sid, s in self.state["sessions"].items() if (r := expiry_reason(s, now))}
        if expired:
            await self.commit("remove", session_ids=sorted(expired), reason="expired")
        return expired

    async def create(self, session: dict[str, Any], max_sessions: int) -> dict[str, Any]:
        """Add ``session`` (its id chosen by the caller); returns it as stored (the first one, if retried)."""
        await self._prune(time.time())
        await self.commit("create", session=session, max_sessions=max_sessions)
        return with_expiries(self.state["sessions"][session["session_id"]])

    async def check(self, session_id: str, touch: bool = False, now: float | None = None) -> dict[str, Any]:
        """``{"valid": True, "session": ...}``, marked used now when ``touch``; else ``{"valid": False, "reason"}``."""
        now = time.time() if now is None else now
        session = self.state["sessions"].get(session_id)
        if session is None:
            return {"valid": False, "reason": UNKNOWN}
        reason = expiry_reason(session, now)
        if reason is not None:
            await self._prune(now)
            return {"valid": False, "reason": reason}
        if touch:
            await self.commit("touch", session_id=session_id, at=now)
            session = self.state["sessions"].get(session_id, session)
        return {"valid": True, "session": with_expiries(session)}

    async def list_sessions(self, now: float | None = None) -> list[dict[str, Any]]:
        """The valid sessions, most recently used first; expired ones are pruned."""
        await self._prune(time.time() if now is None else now)
        sessions = sorted(self.state["sessions"].values(), key=lambda s: (-s["last_used_at"], s["session_id"]))
        return [with_expiries(s) for s in sessions]

    async def revoke(self, session_id: str) -> bool:
        """End one session; False if it did not exist (revoking twice is fine)."""
        if session_id not in self.state["sessions"]:
            return False
        await self.commit("remove", session_ids=[session_id], reason="revoked")
        return True

    async def revoke_all(self, keep: str | None = None) -> int:
        """End every session but ``keep``; returns how many ended."""
        ids = sorted(sid for sid in self.state["sessions"] if sid != keep)
        if ids:
            await self.commit("remove", session_ids=ids, reason="revoked")
        return len(ids)

    async def forget(self) -> int:
        """End every session and delete the persisted journal (the user was erased); returns how many ended."""
        count = len(self.state["sessions"])
        await self.erase()
        return count
