"""Background loops: one way to run a pass of work again and again for an app's lifetime.

Every sweep, retry and poll of the services is the same loop. Run a pass. When the pass did something and there may
be more (``drain``: it returned a count above zero), run it again at once. When it fails (a store away, a peer
down), log the failure's type -- never its text, which can carry a row or a secret -- and count it. Then wait the
interval, or less when the loop's ``wake`` event is set (a new row in this process, a kick from a route).

A service lists the loop in its package's ``background`` (:func:`every` makes one), or awaits :func:`repeat` inside
its own background function when the passes share something that must be opened and closed around them.

Each pass is counted in ``nexus_background_passes_total{loop, outcome}`` (``ok`` or ``failed``), so a sweep that
keeps failing shows on the metrics port and in the dashboard's Grafana panels, not only in the logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ray.util.metrics import Counter

log = logging.getLogger(__name__)

PASSES = Counter(
    "nexus_background_passes_total",
    description="Passes of the services' background loops, by loop and outcome (ok, failed).",
    tag_keys=("loop", "outcome"),
)

Interval = float | Callable[[], float]
"""Seconds between passes: a number, or a function read before each wait (so a setting's current value counts)."""


async def _wait(every_s: Interval, wake: asyncio.Event | None) -> None:
    seconds = every_s() if callable(every_s) else every_s
    if wake is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(wake.wait(), seconds)
    except TimeoutError:
        pass


async def repeat(name: str, work: Callable[[], Awaitable[object]], every_s: Interval, *, drain: bool = False,
                 wake: asyncio.Event | None = None, wait_first: bool = False) -> None:
    """Run ``work`` until cancelled, one pass every ``every_s`` seconds.

    ``drain``: a pass that returns a number above zero is followed at once by another (a sweep that took a full
    batch). ``wake``: cleared before each pass; setting it ends the wait early, and a wake-up during a pass makes
    the next pass start at once. ``wait_first``: wait the interval before the first pass (a retry of what the
    request path normally does itself, or a purge that has nothing to do at start).
    """
    tags = {"loop": name, "outcome": "ok"}
    failed = {"loop": name, "outcome": "failed"}
    if wait_first:
        await _wait(every_s, wake)
    while True:
        if wake is not None:
            wake.clear()
        try:
            while True:
                done = await work()
                if not (drain and isinstance(done, int) and done > 0):
                    break
            PASSES.inc(1, tags=tags)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a store or a peer away: the next pass tries again
            PASSES.inc(1, tags=failed)
            log.warning("%s failed: %s", name, type(exc).__name__)
        await _wait(every_s, wake)


def every(name: str, work: Callable[[], Awaitable[object]], every_s: Interval, *, drain: bool = False,
          wake: asyncio.Event | None = None, wait_first: bool = False) -> Callable[[], Awaitable[None]]:
    """A background function (for a package's ``background`` list) that runs :func:`repeat` with these arguments;
    its ``__name__`` (the task's name) is ``name`` with dashes."""

    async def loop() -> None:
        await repeat(name, work, every_s, drain=drain, wake=wake, wait_first=wait_first)

    loop.__name__ = loop.__qualname__ = name.replace(" ", "-")
    return loop


__all__ = ["PASSES", "Interval", "every", "repeat"]
