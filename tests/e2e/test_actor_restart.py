"""A named actor killed with SIGKILL comes back, under the same name, with every acknowledged write."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from typing import Any

import pytest
import ray
from ray import cloudpickle

from nexus_ray.actors import NAMESPACE, PersistentActor, actor_name, get_or_create

pytestmark = pytest.mark.e2e

# Ray workers do not have the tests folder on their path: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Ledger(PersistentActor):
    """Named values; snapshots every 10 ops so a restart reads a snapshot and a journal tail."""

    kind = "e2e-ledger"
    snapshot_every = 10

    def initial_state(self) -> dict[str, Any]:
        return {"values": {}}

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        if op != "set":
            raise ValueError(f"unknown op {op!r}")
        return {"values": {**state["values"], data["name"]: data["value"]}}

    async def set(self, name: str, value: Any) -> str:
        return await self.commit("set", name=name, value=value)

    def values(self) -> dict[str, Any]:
        return self.state["values"]


def _kill(handle) -> int:
    pid = ray.get(handle.pid.remote(), timeout=60)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_actor_restart_loses_no_acknowledged_write(ray_cluster):
    key = uuid.uuid4().hex
    ledger = get_or_create(Ledger, key)
    try:
        # Concurrent calls: the actor serialises the commits; each reply is an acknowledgement.
        acknowledged = {f"k{i}": i for i in range(25)}
        ray.get([ledger.set.remote(name, value) for name, value in acknowledged.items()], timeout=120)

        first_pid = _kill(ledger)
        # The call waits for the restart (max_task_retries=-1) and finds the state restored.
        assert ray.get(ledger.values.remote(), timeout=120) == acknowledged
        second_pid = ray.get(ledger.pid.remote(), timeout=60)
        assert second_pid != first_pid

        # Writes after a restart are as durable as before it.
        more = {f"k{i}": -i for i in range(20, 32)}
        ray.get([ledger.set.remote(name, value) for name, value in more.items()], timeout=120)
        acknowledged.update(more)
        assert _kill(ledger) == second_pid

        # Anyone resolving the name gets the restarted actor, not a fresh empty one.
        again = get_or_create(Ledger, key)
        assert ray.get(again.values.remote(), timeout=120) == acknowledged
        assert ray.get(again.pid.remote(), timeout=60) not in (first_pid, second_pid)
        assert ray.get_actor(actor_name(Ledger, key), namespace=NAMESPACE)._actor_id == ledger._actor_id
    finally:
        ray.get(ledger.erase.remote(), timeout=60)
        ray.kill(ledger, no_restart=True)
