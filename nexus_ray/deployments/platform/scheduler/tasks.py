"""Internal tasks: named async callables that services register and schedules run in the scheduler's process.

A service registers its task at import time (``register("inventory.expire_reservations", fn)`` or the
decorator form) and a schedule names it with ``target_type: "task"``. A task takes its schedule's ``args``
as keyword arguments and returns a JSON-able value (or None). Runs are at least once: a task taken over
after its holder crashed runs again, so a task must be idempotent (as every purge or expiry is).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Task = Callable[..., Awaitable[Any]]

_REGISTRY: dict[str, Task] = {}


def register(name: str, fn: Task | None = None) -> Any:
    """Register ``fn`` under ``name`` (``<service>.<what>``); usable as ``@register("x.y")``."""

    def add(f: Task) -> Task:
        if not name or " " in name:
            raise ValueError(f"not a task name: {name!r}")
        _REGISTRY[name] = f
        return f

    return add(fn) if fn is not None else add


def get(name: str) -> Task | None:
    return _REGISTRY.get(name)


def names() -> list[str]:
    return sorted(_REGISTRY)


async def _noop(**_: Any) -> dict[str, Any]:
    """Does nothing: a probe that the scheduler runs tasks (and a target for tests of scheduling itself)."""
    return {"ok": True}


register("scheduler.noop", _noop)
