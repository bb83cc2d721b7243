"""The kit's background loop (``kit.loops``): the one loop every sweep, retry and poll of the services runs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nexus_ray.deployments.kit import loops

HOUR = 3600.0


async def _stopped(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failed_pass_is_logged_by_its_type_only_and_the_loop_goes_on(until, caplog):
    calls = []

    async def work() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("password=hunter2 in the failure's text")

    caplog.set_level(logging.WARNING, logger="nexus_ray.deployments.kit.loops")
    task = asyncio.create_task(loops.repeat("test sweep", work, 0.01))
    try:
        await until(lambda: len(calls) >= 2, within_s=10)
    finally:
        await _stopped(task)
    failures = [r.getMessage() for r in caplog.records if r.name == "nexus_ray.deployments.kit.loops"]
    assert failures == ["test sweep failed: RuntimeError"]
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize(("drain", "passes"), [(True, 3), (False, 1)])
async def test_a_pass_that_did_work_is_followed_at_once_only_when_draining(until, drain, passes):
    left = [3, 2, 0, 5]
    calls = []

    async def work() -> int:
        calls.append(1)
        return left.pop(0)

    task = asyncio.create_task(loops.repeat("test drain", work, HOUR, drain=drain))
    try:
        # Draining: three passes at once (3, 2, then 0 ends the run), the fourth only after an hour. Not draining:
        # the first pass did work, and the next still waits its hour.
        await until(lambda: len(calls) == passes, within_s=10)
        await asyncio.sleep(0.05)
        assert len(calls) == passes
    finally:
        await _stopped(task)


async def test_a_wake_up_ends_the_wait_and_one_during_a_pass_is_not_lost(until):
    wake = asyncio.Event()
    calls = []
    entered = asyncio.Event()
    go_on = asyncio.Event()

    async def work() -> None:
        calls.append(1)
        if len(calls) == 2:  # woken while this pass runs: the next pass must follow without an hour's wait
            entered.set()
            await go_on.wait()

    task = asyncio.create_task(loops.repeat("test wake", work, HOUR, wake=wake, wait_first=True))
    try:
        await asyncio.sleep(0.05)
        assert calls == []  # wait_first: nothing before the interval or a wake-up
        wake.set()
        await until(lambda: len(calls) == 1, within_s=10)
        wake.set()
        await asyncio.wait_for(entered.wait(), 10)
        wake.set()
        go_on.set()
        await until(lambda: len(calls) == 3, within_s=10)
    finally:
        await _stopped(task)


async def test_every_makes_a_named_background_function():
    async def work() -> None:
        return None

    fn = loops.every("reservation expiry sweep", work, HOUR)
    assert fn.__name__ == "reservation-expiry-sweep"
    assert asyncio.iscoroutinefunction(fn)
