"""Latency of product-catalog's faceted full-text search over a generated catalog of 100,000 products.

    .venv/bin/python bench/catalog_search.py --data-dir /tmp/nx-catalog [--products 100000] [--duration 120]
        [--rate 0.5] [--open-duration 60] [--load-only] [--mongo-url mongodb://127.0.0.1:N/?directConnection=true]
        [--source index|store] [--verify 3] [--http-rate 50 --http-duration 30] [--wrk2-rate 40 --wrk2-duration 30]

``--source index`` (the default) measures the in-memory search index (``search_index.py``): its build
from the store (one change stream + one scan, as the app's background task does it), its memory,
``--verify`` queries answered by both the index and the store compared field by field, then the closed
loop and an open loop at ``--rate`` through the service function, (``--http-rate``) an open loop
through HTTP over the ASGI transport, and (``--wrk2-rate``) ``wrk2`` at a fixed rate against the app served
by uvicorn on a local port (500 queries of the mix, round robin; needs ``wrk2`` on the path or ``$WRK2``).
``--source store`` measures the store's aggregation (the fallback) as below.

Starts the embedded stores in ``--data-dir`` (kept, so a second run reuses the loaded catalog; the load is
resumable: it continues from the products already there) and loads ``--products`` products from
:mod:`catalog_gen` (seeded) in bulk, each document built by the service's own
:func:`~nexus_ray.deployments.commerce.catalog.service.new_document` (so its search terms are exactly what
a write through the API stores), into the collection whose indexes the service creates first.

Then, in this process:

* ``plan``        -- the store's ``explain`` of a representative query (winning plan, keys and documents
  examined), written beside the figures;
* ``floor``       -- one ``find_one`` by ``_id``: what any query costs at least in this store, here;
* ``closed loop`` -- :func:`service.search` with facets (a first page of 20), one query after another, for
  ``--duration`` seconds, from the generator's query mix: p50/p99 and hits per query;
* ``open loop``   -- the same queries through HTTP (the ``commerce`` app with its edge, over the ASGI
  transport) sent at a fixed ``--rate`` per second whatever the answers take, latency measured from each
  request's intended send time (no coordinated omission).

The machine is shared: note the load average printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog_gen import CatalogGenerator  # noqa: E402
from scratch import machine  # noqa: E402

API = "/commerce/v1/catalog"


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _summary(latencies: list[float], hits: list[int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(latencies), "p50_ms": round(statistics.median(latencies) * 1000, 1),
                           "p99_ms": round(_pct(latencies, 99) * 1000, 1), "max_ms": round(max(latencies) * 1000, 1)}
    if hits:
        out |= {"hits_p50": int(statistics.median(hits)), "hits_max": max(hits)}
    return out


async def _paced(one: Any, gen: Any, rate: float, seconds: float) -> None:
    """Open loop: call ``one(intended, query)`` at ``rate`` per second for ``seconds``, each at its due time."""
    start = time.perf_counter()
    tasks = []
    k = 0
    while (intended := start + k / rate) < start + seconds:
        await asyncio.sleep(max(0.0, intended - time.perf_counter()))
        tasks.append(asyncio.create_task(one(intended, gen.query())))
        k += 1
    await asyncio.gather(*tasks)


async def load(n: int, seed: int) -> dict[str, Any]:
    from nexus_ray.deployments.commerce.catalog import service
    from nexus_ray.deployments.commerce.catalog.models import ProductCreate

    coll = await service.products()  # its indexes first: every insert maintains them
    have = await coll.count_documents({})
    gen = CatalogGenerator(seed)
    started = time.monotonic()
    batch: list[dict[str, Any]] = []
    for i, body in enumerate(gen.products(n)):
        if i < have:
            continue  # the generator is sequential: skip what an earlier run loaded
        pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"catalog-bench/{seed}/{i}"))
        batch.append(service.new_document(caller=f"merchant-{i % 500}", body=ProductCreate.model_validate(body),
                                          product_id=pid))
        if len(batch) == 500 or i == n - 1:
            await coll.insert_many(batch, ordered=True)
            batch = []
            print(f"loaded {i + 1}/{n} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return {"products": await coll.count_documents({}), "loaded_now": max(0, n - have),
            "load_s": round(time.monotonic() - started, 1)}


def _query(params: dict[str, Any]) -> Any:
    from nexus_ray.deployments.commerce.catalog import service

    return service.SearchQuery(q=params["q"], category=params.get("category"), brands=params.get("brands", ()),
                               currency="USD", price_min=params.get("price_min"), price_max=params.get("price_max"),
                               attributes=tuple(tuple(a) for a in params.get("attributes", ())))


async def plan(gen: CatalogGenerator) -> dict[str, Any]:
    from nexus_ray.deployments.commerce.catalog import service

    params = {"q": "wireless headphone", "category": "electronics"}
    found = await service.explain_search(query=_query(params))
    text = json.dumps(found, default=str)
    print(json.dumps(found, default=str), file=sys.stderr, flush=True)  # the whole explain document
    stages = found.get("stages") or []
    cursor = stages[0].get("$cursor", {}) if stages else found
    winning = cursor.get("queryPlanner", {}).get("winningPlan", {})
    stats = cursor.get("executionStats", {})
    return {"query": params, "winning_plan": json.dumps(winning, default=str)[:600],
            "keys_examined": stats.get("totalKeysExamined"), "docs_examined": stats.get("totalDocsExamined"),
            "returned": stats.get("nReturned"), "explain_bytes": len(text)}


async def floor(samples: int = 50) -> dict[str, Any]:
    from nexus_ray.deployments.commerce.catalog import service

    coll = await service.products()
    ids = [d["_id"] for d in await coll.find({}, {"_id": 1}).limit(samples).to_list()]
    lat = []
    for pid in ids:
        t = time.perf_counter()
        await coll.find_one({"_id": pid}, {"title": 1})
        lat.append(time.perf_counter() - t)
    return _summary(lat)


async def closed_loop(gen: CatalogGenerator, seconds: float, source: str = "store") -> dict[str, Any]:
    from nexus_ray.deployments.commerce.catalog import service
    from nexus_ray.deployments.kit.pages import PageRequest

    lat: list[float] = []
    hits: list[int] = []
    worst: tuple[float, dict[str, Any]] = (0.0, {})
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(lat) < 3:
        params = gen.query()
        t = time.perf_counter()
        page = await service.search(query=_query(params), page=PageRequest(limit=20), source=source)  # type: ignore[arg-type]
        dt = time.perf_counter() - t
        lat.append(dt)
        hits.append(page.total)
        worst = max(worst, (dt, {**params, "total": page.total}), key=lambda w: w[0])
        if source == "store":
            print(f"closed {len(lat)}: {dt * 1000:.0f} ms, {page.total} hits", file=sys.stderr, flush=True)
    return {**_summary(lat, hits), "slowest": worst[1]}


async def open_loop(gen: CatalogGenerator, rate: float, seconds: float, *, wait_index: bool = False,
                    warm_up: int = 0) -> dict[str, Any]:
    import httpx

    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.edge import tokens

    get_settings.cache_clear()
    app = build_app("commerce")
    async with app.router.lifespan_context(app):
        if wait_index:
            from nexus_ray.deployments.commerce.catalog.search_index import replica

            while True:  # polled: the bench only waits, the service never does
                if replica.ready:
                    break
                await asyncio.sleep(0.1)
        await tokens.prepare()
        headers = {"Authorization": f"Bearer {tokens.issue('bench-shopper', ['commerce:catalog:read'], ttl_s=3600)}"}
        transport = httpx.ASGITransport(app=app, root_path="/commerce", client=("10.9.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as c:
            lat: list[float] = []
            codes: dict[int, int] = {}
            when: list[tuple[float, float]] = []

            async def one(intended: float, params: dict[str, Any]) -> None:
                q = {"q": params["q"], "limit": 20, **{k: params[k] for k in ("category", "price_min", "price_max")
                                                      if k in params}}
                if "brands" in params:
                    q["brand"] = params["brands"]
                if "attributes" in params:
                    q["attr"] = [f"{k}:{v}" for k, v in params["attributes"]]
                r = await c.get(f"{API}/search", params=q, headers=headers)
                lat.append(time.perf_counter() - intended)
                when.append((lat[-1], intended - start))
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

            start = time.perf_counter()
            for _ in range(warm_up):  # first requests: the edge's keys and limits, connections; not counted
                await one(time.perf_counter(), gen.query())
            lat.clear()
            when.clear()
            codes.clear()
            start = time.perf_counter()  # the slowest requests' send times count from here, as the schedule's do
            await _paced(one, gen, rate, seconds)
    slowest = [{"ms": round(dt * 1000), "sent_at_s": round(at, 2)} for dt, at in sorted(when, reverse=True)[:8]]
    return {"rate_per_s": rate, "seconds": seconds, "warm_up": warm_up, "status": codes, **_summary(lat),
            "slowest": slowest}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def build_index() -> tuple[dict[str, Any], asyncio.Task[None]]:
    """The app's background task, started here: time to ready, and what the index holds and weighs."""
    import gc

    from nexus_ray.deployments.commerce.catalog import service
    from nexus_ray.deployments.commerce.catalog.search_index import replica

    gc.collect()
    rss = _rss_bytes()
    started = time.monotonic()
    task = asyncio.create_task(service.keep_search_index())
    while not replica.ready:
        assert not task.done(), task
        await asyncio.sleep(0.05)
    ready_s = time.monotonic() - started
    gc.collect()
    idx = replica.index
    assert idx is not None
    return {"ready_s": round(ready_s, 1), "products": idx.live, "terms": len(idx.terms.arrays),
            "array_mb": round(idx.nbytes() / 2**20, 1), "rss_growth_mb": round((_rss_bytes() - rss) / 2**20, 1),
            "rss_mb": round(_rss_bytes() / 2**20, 1), "status": replica.status()}, task


async def verify(gen: CatalogGenerator, n: int) -> dict[str, Any]:
    """``n`` queries answered by the index and by the store's aggregation: equal or not, and the store's time."""
    from nexus_ray.deployments.commerce.catalog import service
    from nexus_ray.deployments.kit.pages import PageRequest

    equal, store_s = 0, []
    for _ in range(n):
        query, page = _query(gen.query()), PageRequest(limit=20)
        index = await service.search(query=query, page=page, source="index")
        t = time.perf_counter()
        store = await service.search(query=query, page=page, source="store")
        store_s.append(round(time.perf_counter() - t, 1))
        equal += index == store
        print(f"verify: equal={index == store} total={index.total} store {store_s[-1]} s", file=sys.stderr)
    return {"queries": n, "equal": equal, "store_s": store_s}


async def open_loop_service(gen: CatalogGenerator, rate: float, seconds: float) -> dict[str, Any]:
    """:func:`service.search` (index) at a fixed rate whatever the answers take; latency from the intended start."""
    from nexus_ray.deployments.commerce.catalog import service
    from nexus_ray.deployments.kit.pages import PageRequest

    lat: list[float] = []

    async def one(intended: float, params: dict[str, Any]) -> None:
        await service.search(query=_query(params), page=PageRequest(limit=20), source="index")
        lat.append(time.perf_counter() - intended)

    await _paced(one, gen, rate, seconds)
    return {"rate_per_s": rate, "seconds": seconds, **_summary(lat)}


WRK2_LUA = """
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
"""


async def wrk2_http(gen: CatalogGenerator, rate: int, seconds: int, connections: int) -> dict[str, Any]:
    """The commerce app served by uvicorn in this process, searched by wrk2 at a fixed rate (the query mix)."""
    import socket
    import tempfile
    from urllib.parse import urlencode

    import httpx
    import uvicorn
    from replica_kill import parse_wrk2

    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.deployments.commerce.catalog.search_index import replica
    from nexus_ray.edge import tokens

    get_settings.cache_clear()
    app = build_app("commerce")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, root_path="/commerce"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while True:  # polled: the bench only waits
            if server.started and replica.ready:
                break
            assert not serving.done(), "the server stopped"
            await asyncio.sleep(0.2)
        await tokens.prepare()
        tok = tokens.issue("bench-shopper", ["commerce:catalog:read"], ttl_s=3600)
        paths = []
        for _ in range(500):
            params = gen.query()
            q: list[tuple[str, Any]] = [("q", params["q"]), ("limit", 20)]
            q += [(k, params[k]) for k in ("category", "price_min", "price_max") if k in params]
            q += [("brand", b) for b in params.get("brands", ())]
            q += [("attr", f"{k}:{v}") for k, v in params.get("attributes", ())]
            paths.append(f"{API.removeprefix('/commerce')}/search?{urlencode(q)}")  # uvicorn prepends root_path
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(WRK2_LUA % ",".join(f'"{p}"' for p in paths))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=url) as c:
            probe = await c.get(paths[0], headers={"Authorization": f"Bearer {tok}"})
            assert probe.status_code == 200, (probe.status_code, probe.text[:300])
        for warm in (True, False):
            proc = await asyncio.create_subprocess_exec(
                os.environ.get("WRK2", "wrk2"), "-t1", f"-c{connections}", f"-d{5 if warm else seconds}s",
                f"-R{rate}", "--latency", "-s", f.name, "-H", f"Authorization: Bearer {tok}", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
        os.unlink(f.name)
        assert proc.returncode == 0, err.decode()[-500:]
        return {"rate_per_s": rate, "seconds": seconds, "connections": connections, "warm_up_s": 5,
                **parse_wrk2(out.decode())}
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def run_index(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    from nexus_ray.stores import documents

    if args.verify or args.duration > 0 or args.open_duration > 0:
        results["index_build"], task = await build_index()
        print(json.dumps(results), file=sys.stderr, flush=True)
        if args.verify:
            results["verify"] = await verify(CatalogGenerator(args.seed + 3), args.verify)
        if args.duration > 0:
            results["closed_loop_index"] = await closed_loop(CatalogGenerator(args.seed + 1), args.duration, "index")
            print(json.dumps(results["closed_loop_index"]), file=sys.stderr, flush=True)
        if args.open_duration > 0:
            results["open_loop_service_index"] = await open_loop_service(CatalogGenerator(args.seed + 2), args.rate,
                                                                         args.open_duration)
            print(json.dumps(results["open_loop_service_index"]), file=sys.stderr, flush=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await documents.close_mongo()
    if args.http_duration > 0:  # the app's own background task builds the index again before the first request
        results["open_loop_http_index"] = await open_loop(CatalogGenerator(args.seed + 4), args.http_rate,
                                                          args.http_duration, wait_index=True, warm_up=20)
    if args.wrk2_duration > 0:
        results["wrk2_http_index"] = await wrk2_http(CatalogGenerator(args.seed + 5), args.wrk2_rate,
                                                     args.wrk2_duration, args.wrk2_connections)
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from nexus_ray.config import get_settings
    from nexus_ray.stores import documents

    get_settings.cache_clear()
    results: dict[str, Any] = {"load": await load(args.products, args.seed)}
    print(json.dumps(results["load"]), file=sys.stderr, flush=True)
    if args.load_only:
        return results
    if args.source == "index":
        return await run_index(args, results)
    gen = CatalogGenerator(args.seed + 1)
    results["plan"] = await plan(gen)
    results["floor_find_one_by_id"] = await floor()
    print(json.dumps(results), file=sys.stderr, flush=True)
    results["closed_loop"] = await closed_loop(gen, args.duration)
    print(json.dumps(results["closed_loop"]), file=sys.stderr, flush=True)
    await documents.close_mongo()
    if args.open_duration > 0:
        results["open_loop_http"] = await open_loop(CatalogGenerator(args.seed + 2), args.rate, args.open_duration)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/nexus-bench-catalog"),
                        help="the embedded stores' directory: kept, so a later run reuses the loaded catalog")
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=120.0, help="closed-loop seconds")
    parser.add_argument("--rate", type=float, default=0.5, help="open-loop requests per second (store: through "
                        "HTTP; index: through the service function)")
    parser.add_argument("--open-duration", type=float, default=60.0, help="open-loop seconds (0: skip)")
    parser.add_argument("--load-only", action="store_true", help="load the catalog and stop")
    parser.add_argument("--source", choices=["index", "store"], default="index",
                        help="measure the in-memory search index (default) or the store's aggregation")
    parser.add_argument("--verify", type=int, default=0, help="index: compare this many queries with the store's")
    parser.add_argument("--http-rate", type=float, default=50.0, help="index: HTTP open-loop requests per second")
    parser.add_argument("--http-duration", type=float, default=0.0, help="index: HTTP open-loop seconds (0: skip)")
    parser.add_argument("--wrk2-rate", type=int, default=40, help="index: wrk2 -R against the app under uvicorn")
    parser.add_argument("--wrk2-duration", type=int, default=0, help="index: wrk2 seconds (0: skip)")
    parser.add_argument("--wrk2-connections", type=int, default=8)
    parser.add_argument("--stop", action="store_true", help="stop the stores at the end (default: leave them up)")
    parser.add_argument("--mongo-url", default="", help="a secantusd started by hand (own cache size and oplog "
                        "bounds) instead of the embedded one; the other stores stay embedded")
    args = parser.parse_args()
    os.environ.update({"NEXUS_DATA_DIR": str(args.data_dir), "NEXUS_LOG_LEVEL": "WARNING",
                       "NEXUS_RATE_LIMIT_PER_ADDRESS": str(10**9), "NEXUS_RATE_LIMIT_PER_PRINCIPAL": str(10**9)})
    for k in ("NEXUS_POSTGRES_URL", "NEXUS_REDIS_URL", "NEXUS_MONGO_URL", "NEXUS_KAFKA_BOOTSTRAP"):
        os.environ.pop(k, None)
    from nexus_ray.runtime import embedded

    args.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(embedded.start(args.data_dir).env())
    if args.mongo_url:
        os.environ["NEXUS_MONGO_URL"] = args.mongo_url
    try:
        results = asyncio.run(run(args))
    finally:
        if args.stop:
            embedded.stop(args.data_dir)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
