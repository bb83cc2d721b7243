"""Run compute functions as Ray tasks with the resources the call site asks for.

A compute function is written once, for plain data, with no Ray in it. Where it runs
is decided here, at the call site: ``num_gpus=1`` puts it on a GPU node, and the
function itself picks its device (e.g. ``torch.cuda.is_available()``), so there is
never a CPU and a GPU version of the same code::

    from nexus_ray.compute import map_tasks, remote
    from nexus_ray.compute.geo import distance_matrix_km

    matrix = ray.get(remote(distance_matrix_km).remote(points))
    scores = map_tasks(score_batch, batches, num_gpus=1)

These need a connected Ray (``ray.init`` by the caller, or a Serve replica / job).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import ray
from ray.remote_function import RemoteFunction

T = TypeVar("T")
R = TypeVar("R")

# One RemoteFunction per function: Ray exports (pickles and uploads) a function once
# per RemoteFunction, and `.options()` reuses that export. Pass module-level functions:
# a lambda made per call would be a new key, exported again and kept here.
_remote_functions: dict[Callable[..., Any], RemoteFunction] = {}


def remote(fn: Callable[..., R], *, num_cpus: float = 1, num_gpus: float = 0, **options: Any) -> Any:
    """``fn`` as a Ray task needing ``num_cpus`` and ``num_gpus``; call ``.remote(...)`` on it.

    ``options`` are any further ``ray.remote`` task options (``max_retries``,
    ``memory``, ``scheduling_strategy``, ``runtime_env``, ...).
    """
    base = _remote_functions.get(fn)
    if base is None:
        base = _remote_functions[fn] = ray.remote(fn)
    return base.options(num_cpus=num_cpus, num_gpus=num_gpus, **options)


def map_tasks(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_in_flight: int | None = None,
) -> list[R]:
    """``[fn(item) for item in items]``, computed by Ray tasks; results in input order.

    At most ``max_in_flight`` tasks are submitted and unfinished at a time (default:
    twice as many as the cluster fits with these resources), so a long input neither
    floods the scheduler nor holds every result in the object store. ``items`` is
    consumed lazily. If a task fails, no further item is submitted and the error is
    raised; the tasks already in flight (at most ``max_in_flight``) run to their end and
    their results are dropped. They are not cancelled: in this Ray, cancelling a task
    whose reply the caller is handling at that moment trips a check inside Ray that ends
    the whole calling process ("Tried to complete task that was not pending",
    ray-project/ray#54846). That ended a test session here, and again in CI after the
    cancel was narrowed to the tasks that looked unfinished: short tasks finish while
    they are being cancelled. A few wasted tasks cost less than a lost process.
    Blocks: from async code use :func:`amap_tasks`.
    """
    task = remote(fn, num_cpus=num_cpus, num_gpus=num_gpus)
    limit = _in_flight_limit(max_in_flight, num_cpus, num_gpus)
    results: list[Any] = []
    pending: dict[ray.ObjectRef, int] = {}
    for item in items:
        if len(pending) >= limit:
            ready, _ = ray.wait(list(pending), num_returns=1)
            _collect(ready, pending, results)
        pending[task.remote(item)] = len(results)
        results.append(None)
    _collect(list(pending), pending, results)
    return results


async def amap_tasks(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_in_flight: int | None = None,
) -> list[R]:
    """:func:`map_tasks` for async callers (Serve replicas, actors): awaits, never blocks the loop."""
    task = remote(fn, num_cpus=num_cpus, num_gpus=num_gpus)
    slots = asyncio.Semaphore(_in_flight_limit(max_in_flight, num_cpus, num_gpus))

    async def run(item: T) -> R:
        async with slots:
            return await task.remote(item)

    # A TaskGroup stops submitting the rest as soon as one task fails.
    async with asyncio.TaskGroup() as group:
        runs = [group.create_task(run(item)) for item in items]
    return [done.result() for done in runs]


def _collect(ready: list[ray.ObjectRef], pending: dict[ray.ObjectRef, int], results: list[Any]) -> None:
    for ref, value in zip(ready, ray.get(ready), strict=True):
        results[pending.pop(ref)] = value


def _in_flight_limit(max_in_flight: int | None, num_cpus: float, num_gpus: float) -> int:
    if max_in_flight is not None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        return max_in_flight
    total = ray.cluster_resources()
    fits = [total.get(name, 0) / need for name, need in (("CPU", num_cpus), ("GPU", num_gpus)) if need]
    slots = int(min(fits)) if fits else int(total.get("CPU", 1))
    # Twice what runs at once: when a task ends, the next is already queued at its node.
    # At least one slot, so a cluster that has no GPU node yet still asks the autoscaler.
    return 2 * max(1, slots)
