"""FleetActor: one fleet's vehicles, their status and positions, a spatial index and geofences.

One actor per fleet (key: the fleet id), reached through
``EntityClient(FleetActor, shards=None)``: a fleet is one of the few large entities that
get a process of their own (DESIGN.md, principle 4).

Two kinds of state, kept durable two ways
-----------------------------------------
* **Vehicles and geofences** (registration, status, driver, fence polygons) change
  rarely and matter: each change is a journaled op of :class:`PersistentActor` (Redis
  Stream, acknowledged once written), so a restart loses none of them.
* **Positions** arrive as high-rate telemetry (thousands of updates a second). Journaling
  each would put a Redis write and a state copy in front of every update, so they live in
  numpy arrays beside a :class:`~nexus_ray.compute.spatial.GridIndex` and are written as
  one **positions snapshot** (Redis key ``...:positions``) every ``positions_snapshot_s``
  seconds while they change, and when the actor writes its state snapshot. A restarted
  actor restores the journaled state, then the last positions snapshot.

  **What a crash can lose**: the position updates received after the last positions
  snapshot (at most ``positions_snapshot_s`` seconds of telemetry, 2 s by default): those
  vehicles show their previous position until their next update. Geofence membership is
  saved with the positions, so it rolls back with them: an enter/exit event emitted in
  that window may be emitted again when the next update crosses the fence again (events
  are at-least-once; each carries the update's ``ts``, which tells a duplicate apart).

Geofences
---------
A geofence is a polygon of ``(lat, lon)`` vertices. After each telemetry batch the actor
compares, for every fence whose box the batch touches, which of the batch's vehicles are
inside now against before, and records ``geofence.entered`` / ``geofence.exited`` events
through the outbox (one PostgreSQL transaction per batch that crosses a fence). A vehicle
whose first known position is inside a fence enters it.

Telemetry ops are idempotent in effect: an update older than the vehicle's last one
(``ts``) is ignored, so a retried batch changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import numpy as np
import orjson
from numpy.typing import NDArray

from nexus_ray.actors.base import PersistentActor
from nexus_ray.compute.spatial import GridIndex, bbox_of, points_in_polygon
from nexus_ray.stores import postgres
from nexus_ray.stores.cache import redis_client
from nexus_ray.stores.events import emit_many

log = logging.getLogger(__name__)

GEOFENCE_ENTERED = "geofence.entered"
GEOFENCE_EXITED = "geofence.exited"
STATUSES = ("available", "busy", "offline", "maintenance")

_NO_TS = -np.inf


class FleetActor(PersistentActor):
    """Vehicles, status, positions, geofences of one fleet; nearest-vehicle and area queries."""

    kind = "fleet"
    snapshot_every = 500
    positions_snapshot_s: ClassVar[float] = 2.0
    """Seconds between positions snapshots while telemetry arrives: the most a crash loses."""
    cell_deg: ClassVar[float] = 0.01
    """Grid cell of the spatial index, degrees (about 1.1 km north-south)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self._slot: dict[str, int] = {}
        self._ids: list[str] = []
        self._lat: NDArray[np.float64] = np.zeros(0)
        self._lon: NDArray[np.float64] = np.zeros(0)
        self._ts: NDArray[np.float64] = np.zeros(0)
        self._available: NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._inside: dict[str, NDArray[np.bool_]] = {}
        self._index = GridIndex(self.cell_deg)
        self._dirty = False
        self._flusher: asyncio.Task[None] | None = None
        self.updates = 0

    # -- journaled state --------------------------------------------------------------------

    def initial_state(self) -> dict[str, Any]:
        return {"vehicles": {}, "geofences": {}}

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        if op == "upsert_vehicles":
            vehicles = dict(state["vehicles"])
            for v in data["vehicles"]:
                vehicles[v["vehicle_id"]] = {**vehicles.get(v["vehicle_id"], {}), **v}
            return {**state, "vehicles": vehicles}
        if op == "remove_vehicle":
            vehicles = dict(state["vehicles"])
            vehicles.pop(data["vehicle_id"], None)
            return {**state, "vehicles": vehicles}
        if op == "put_geofence":
            return {**state, "geofences": {**state["geofences"], data["geofence_id"]: data}}
        if op == "remove_geofence":
            fences = dict(state["geofences"])
            fences.pop(data["geofence_id"], None)
            return {**state, "geofences": fences}
        raise ValueError(f"unknown op {op!r}")

    async def restore(self) -> None:
        await super().restore()
        raw = await redis_client().get(self.positions_key)
        self._rebuild(orjson.loads(raw) if raw else None)

    @property
    def positions_key(self) -> str:
        return f"nexus:actor:{self.kind}:{self.key}:positions"

    def _rebuild(self, saved: dict[str, Any] | None) -> None:
        """Arrays and index from the journaled vehicles and a positions snapshot (if any)."""
        self._slot, self._ids = {}, []
        n = len(self.state["vehicles"])
        self._lat, self._lon = np.zeros(n), np.zeros(n)
        self._ts = np.full(n, _NO_TS)
        self._available = np.zeros(n, dtype=bool)
        self._index = GridIndex(self.cell_deg)
        for vehicle_id in self.state["vehicles"]:
            self._sync_vehicle(vehicle_id)
        self._inside = {g: np.zeros(len(self._ids), dtype=bool) for g in self.state["geofences"]}
        if saved:
            known = [(self._slot[v], i) for i, v in enumerate(saved["ids"]) if v in self._slot]
            if known:
                slots = np.array([s for s, _ in known], dtype=np.int64)
                rows = np.array([i for _, i in known], dtype=np.int64)
                self._lat[slots] = np.asarray(saved["lat"])[rows]
                self._lon[slots] = np.asarray(saved["lon"])[rows]
                self._ts[slots] = np.asarray(saved["ts"])[rows]
                self._index.place_many(slots, self._lat[slots], self._lon[slots])
            for fence_id, members in saved.get("inside", {}).items():
                if fence_id in self._inside:
                    for vehicle_id in members:
                        if vehicle_id in self._slot:
                            self._inside[fence_id][self._slot[vehicle_id]] = True

    def _sync_vehicle(self, vehicle_id: str) -> None:
        """Give a registered vehicle a slot (new ones) and its availability."""
        vehicle = self.state["vehicles"].get(vehicle_id)
        slot = self._slot.get(vehicle_id)
        if vehicle is None:
            if slot is not None:  # removed: its slot stays (ids never reuse one) but leaves the index
                self._index.remove(slot)
                self._available[slot] = False
                self._ts[slot] = _NO_TS
            return
        if slot is None:
            slot = len(self._ids)
            self._slot[vehicle_id] = slot
            self._ids.append(vehicle_id)
            if slot >= len(self._lat):
                grow = max(16, len(self._lat))
                self._lat = np.concatenate([self._lat, np.zeros(grow)])
                self._lon = np.concatenate([self._lon, np.zeros(grow)])
                self._ts = np.concatenate([self._ts, np.full(grow, _NO_TS)])
                self._available = np.concatenate([self._available, np.zeros(grow, dtype=bool)])
                self._inside = {g: np.concatenate([m, np.zeros(grow, dtype=bool)]) for g, m in self._inside.items()}
        self._available[slot] = vehicle.get("status", "available") == "available"

    # -- vehicles and geofences (journaled) -------------------------------------------------

    async def upsert_vehicles(self, vehicles: list[dict[str, Any]]) -> int:
        """Register vehicles or change their fields (status, driver, type, capacity); returns how many."""
        for v in vehicles:
            if v.get("status", "available") not in STATUSES:
                raise ValueError(f"unknown status {v.get('status')!r}")
        await self.commit("upsert_vehicles", vehicles=vehicles)
        for v in vehicles:
            self._sync_vehicle(v["vehicle_id"])
        return len(vehicles)

    async def remove_vehicle(self, vehicle_id: str) -> bool:
        known = vehicle_id in self.state["vehicles"]
        if known:
            await self.commit("remove_vehicle", vehicle_id=vehicle_id)
            self._sync_vehicle(vehicle_id)
        return known

    async def put_geofence(self, geofence_id: str, name: str, polygon: list[list[float]]) -> dict[str, Any]:
        """Create or replace a geofence; membership starts from the vehicles' current positions, silently."""
        await self.commit("put_geofence", geofence_id=geofence_id, name=name, polygon=polygon)
        inside = np.zeros(len(self._lat), dtype=bool)
        n = len(self._ids)
        if n:
            known = np.isfinite(self._ts[:n])
            inside[:n] = known & points_in_polygon(self._lat[:n], self._lon[:n], polygon)
        self._inside[geofence_id] = inside
        self._dirty = True
        return dict(self.state["geofences"][geofence_id])

    async def remove_geofence(self, geofence_id: str) -> bool:
        known = geofence_id in self.state["geofences"]
        if known:
            await self.commit("remove_geofence", geofence_id=geofence_id)
            self._inside.pop(geofence_id, None)
        return known

    def geofences(self) -> list[dict[str, Any]]:
        return [dict(g) for g in self.state["geofences"].values()]

    # -- telemetry --------------------------------------------------------------------------

    async def ingest(
        self, vehicle_ids: list[str], lats: list[float] | NDArray[np.float64],
        lons: list[float] | NDArray[np.float64], ts: list[float] | NDArray[np.float64],
    ) -> dict[str, int]:
        """Apply a batch of position updates (columns of equal length); one call per batch.

        Returns ``{"applied", "stale", "unknown"}``: unknown vehicles and updates older than
        the vehicle's last one are skipped. Geofence crossings are recorded as events before
        this returns.
        """
        slot_of = self._slot
        vehicles = self.state["vehicles"]
        slots = np.fromiter((slot_of.get(v, -1) if v in vehicles else -1 for v in vehicle_ids),
                            dtype=np.int64, count=len(vehicle_ids))
        lat = np.asarray(lats, dtype=np.float64)
        lon = np.asarray(lons, dtype=np.float64)
        t = np.asarray(ts, dtype=np.float64)
        known = slots >= 0
        unknown = int((~known).sum())
        slots, lat, lon, t = slots[known], lat[known], lon[known], t[known]
        # The newest update of each vehicle in the batch, and only if newer than what is held.
        if len(slots):
            order = np.lexsort((t, slots))
            last = np.ones(len(order), dtype=bool)
            last[:-1] = slots[order][1:] != slots[order][:-1]
            pick = order[last]
            slots, lat, lon, t = slots[pick], lat[pick], lon[pick], t[pick]
        fresh = t > self._ts[slots]
        stale = int(known.sum()) - int(fresh.sum())
        slots, lat, lon, t = slots[fresh], lat[fresh], lon[fresh], t[fresh]
        if not len(slots):
            return {"applied": 0, "stale": stale, "unknown": unknown}
        self._lat[slots], self._lon[slots], self._ts[slots] = lat, lon, t
        self._index.place_many(slots, lat, lon)
        self.updates += len(slots)
        self._dirty = True
        crossings = self._crossings(slots, lat, lon, t)
        if crossings:
            await self._record_crossings(crossings)
        self._ensure_flusher()
        return {"applied": len(slots), "stale": stale, "unknown": unknown}

    def _crossings(
        self, slots: NDArray[np.int64], lat: NDArray[np.float64], lon: NDArray[np.float64], t: NDArray[np.float64],
    ) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for fence_id, fence in self.state["geofences"].items():
            polygon = fence["polygon"]
            min_lat, min_lon, max_lat, max_lon = bbox_of(polygon)
            member = self._inside[fence_id]
            was = member[slots]
            near = (lat >= min_lat) & (lat <= max_lat) & (lon >= min_lon) & (lon <= max_lon)
            if not near.any() and not was.any():
                continue
            now = np.zeros(len(slots), dtype=bool)
            if near.any():
                now[near] = points_in_polygon(lat[near], lon[near], polygon)
            changed = np.nonzero(now != was)[0]
            member[slots] = now
            for i in changed.tolist():
                slot = int(slots[i])
                out.append((GEOFENCE_ENTERED if now[i] else GEOFENCE_EXITED, {
                    "fleet_id": self.key, "geofence_id": fence_id, "geofence_name": fence["name"],
                    "vehicle_id": self._ids[slot], "lat": float(lat[i]), "lon": float(lon[i]), "ts": float(t[i]),
                }))
        return out

    async def _record_crossings(self, crossings: list[tuple[str, dict[str, Any]]]) -> None:
        async with postgres.transaction() as conn:
            for topic in (GEOFENCE_ENTERED, GEOFENCE_EXITED):
                items: list[tuple[str | None, dict[str, Any]]] = [
                    (f"{self.key}:{d['vehicle_id']}", d) for tp, d in crossings if tp == topic]
                if items:
                    await emit_many(conn, topic, items)

    # -- positions snapshot -----------------------------------------------------------------

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name=f"fleet-{self.key}-positions")

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.positions_snapshot_s)
            if not self._dirty:
                return  # quiet: the next ingest starts another
            try:
                await self.snapshot_positions()
            except Exception as exc:  # Redis away: positions stay in memory, the next round tries again
                log.warning("positions snapshot of fleet %s failed: %s", self.key, type(exc).__name__)

    async def snapshot_positions(self) -> int:
        """Write the positions snapshot now; returns how many vehicles it holds."""
        self._dirty = False
        n = len(self._ids)
        known = np.nonzero(np.isfinite(self._ts[:n]))[0]
        body = orjson.dumps({
            "ids": [self._ids[i] for i in known.tolist()],
            "lat": self._lat[known], "lon": self._lon[known], "ts": self._ts[known],
            "inside": {g: [self._ids[i] for i in np.nonzero(m[:n])[0].tolist()] for g, m in self._inside.items()},
            "at": time.time(),
        }, option=orjson.OPT_SERIALIZE_NUMPY)
        await redis_client().set(self.positions_key, body)
        return len(known)

    async def snapshot_now(self) -> str | None:
        await self.snapshot_positions()
        return await super().snapshot_now()

    async def erase(self) -> None:
        await super().erase()
        await redis_client().delete(self.positions_key)
        self._rebuild(None)

    async def close(self) -> None:
        """Stop the positions flusher (for instances used without Ray)."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None

    # -- queries ------------------------------------------------------------------------------

    def _vehicle(self, slot: int, km: float | None = None) -> dict[str, Any]:
        vehicle_id = self._ids[slot]
        out = {**self.state["vehicles"][vehicle_id]}
        has_position = bool(np.isfinite(self._ts[slot]))
        out.update(lat=float(self._lat[slot]) if has_position else None,
                   lon=float(self._lon[slot]) if has_position else None,
                   ts=float(self._ts[slot]) if has_position else None)
        out.setdefault("status", "available")
        if km is not None:
            out["distance_km"] = km
        return out

    def nearest(self, lat: float, lon: float, k: int, available_only: bool = True,
                max_km: float | None = None) -> list[dict[str, Any]]:
        """The ``k`` vehicles with a known position nearest ``(lat, lon)``, nearest first, with ``distance_km``."""
        accept = (lambda s: self._available[s]) if available_only else None
        hits = self._index.nearest(lat, lon, k, self._lat, self._lon, accept=accept, max_km=max_km)
        return [self._vehicle(slot, km) for slot, km in hits]

    def in_area(self, *, bbox: list[float] | None = None, polygon: list[list[float]] | None = None,
                available_only: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
        """Vehicles inside a box ``[min_lat, min_lon, max_lat, max_lon]`` or a polygon of ``[lat, lon]``."""
        if polygon is not None:
            slots = self._index.in_polygon(polygon, self._lat, self._lon)
        elif bbox is not None:
            min_lat, min_lon, max_lat, max_lon = bbox
            slots = self._index.in_bbox(min_lat, min_lon, max_lat, max_lon, self._lat, self._lon)
        else:
            raise ValueError("bbox or polygon is required")
        if available_only:
            slots = slots[self._available[slots]]
        slots.sort()
        return [self._vehicle(int(s)) for s in slots[:limit]]

    def vehicles(self, vehicle_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Vehicles with their last position: all of them, or the named ones that exist."""
        wanted = self._ids if vehicle_ids is None else vehicle_ids
        return [self._vehicle(self._slot[v]) for v in wanted if v in self.state["vehicles"] and v in self._slot]

    def stats(self) -> dict[str, Any]:
        n = len(self._ids)
        return {"vehicles": len(self.state["vehicles"]), "positioned": int(np.isfinite(self._ts[:n]).sum()),
                "available": int(self._available[:n].sum()), "geofences": len(self.state["geofences"]),
                "updates": self.updates, "indexed": len(self._index)}
