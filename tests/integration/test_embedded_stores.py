"""The embedded store servers: started detached, reached with the platform's own clients, durable across restarts.

All tests share one data directory (started once by a separate process, stopped at the end whatever
happens); each test calls ``embedded.start`` itself, which reuses what runs, so the tests do not depend
on their order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

from nexus_ray.runtime import embedded

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory whose servers are started by another process (as `nexus up --detach` does)."""
    root = tmp_path_factory.mktemp("embedded")
    directory = root / "stores"
    try:
        yield directory
    finally:
        embedded.stop(directory, timeout=10.0)


def _start_in_another_process(cwd: Path, data_dir: str) -> dict:
    """Run `embedded.start` in a fresh interpreter that exits right after; return what it started."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from nexus_ray.runtime import embedded\n"
        "started = embedded.start(Path(sys.argv[1]), progress=lambda m: print(m, file=sys.stderr))\n"
        "print(json.dumps({'pids': started.pids, 'env': started.env(), 'data_dir': str(started.data_dir)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    # capture_output also proves the daemons hold no copy of our pipes: run() would wait for EOF forever.
    done = subprocess.run(
        [sys.executable, "-c", script, data_dir], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_servers_outlive_the_process_that_started_them(store_dir: Path) -> None:
    began = time.monotonic()
    # A relative data directory, resolved against the starting process's working directory.
    started = _start_in_another_process(store_dir.parent, store_dir.name)
    print(f"cold start in a fresh process: {time.monotonic() - began:.2f} s")

    assert started["data_dir"] == str(store_dir.resolve())
    assert set(started["pids"]) == set(embedded.STORE_NAMES)
    report = embedded.status(store_dir)
    for name in embedded.STORE_NAMES:
        assert report[name]["alive"] and report[name]["ready"], (name, report[name])
        assert report[name]["pid"] == started["pids"][name]
    assert {report[name]["url"] for name in embedded.STORE_NAMES} == set(started["env"].values())
    for name in embedded.STORE_NAMES:
        assert (store_dir / "logs" / f"{name}.log").stat().st_size > 0


def test_start_is_idempotent(store_dir: Path) -> None:
    first = embedded.start(store_dir)
    began = time.monotonic()
    second = embedded.start(store_dir)
    print(f"warm start: {time.monotonic() - began:.3f} s")

    assert second == first
    assert second.pids == {name: embedded.status(store_dir)[name]["pid"] for name in embedded.STORE_NAMES}
    assert second.env() == {
        "NEXUS_POSTGRES_URL": second.postgres_url,
        "NEXUS_REDIS_URL": second.redis_url,
        "NEXUS_MONGO_URL": second.mongo_url,
        "NEXUS_KAFKA_BOOTSTRAP": second.kafka_bootstrap,
        "NEXUS_SMTP_URL": second.smtp_url,
    }
    # Another process sees the same servers rather than starting its own.
    assert _start_in_another_process(store_dir.parent, str(store_dir))["pids"] == second.pids


@pytest.mark.asyncio
async def test_postgres_answers_asyncpg(store_dir: Path) -> None:
    stores = embedded.start(store_dir)
    connection = await asyncpg.connect(stores.postgres_url)
    try:
        assert await connection.fetchval("SELECT current_database()") == "nexus"
        assert (await connection.fetchval("SHOW server_version")).startswith("16.")
        await connection.execute("CREATE TABLE IF NOT EXISTS probe (id text PRIMARY KEY, body jsonb NOT NULL)")
        key = uuid.uuid4().hex
        await connection.execute("INSERT INTO probe VALUES ($1, $2::jsonb)", key, json.dumps({"n": 1}))
        assert json.loads(await connection.fetchval("SELECT body FROM probe WHERE id = $1", key)) == {"n": 1}
        # Autovacuum takes the tables a burst grew on within seconds, not a minute (embedded.py says why).
        settings = {r["name"]: r["setting"] for r in await connection.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'autovacuum_naptime', "
            "'autovacuum_vacuum_scale_factor', 'autovacuum_analyze_scale_factor')")}
        assert settings == {"autovacuum": "on", "autovacuum_naptime": "10", "autovacuum_vacuum_scale_factor": "0.05",
                            "autovacuum_analyze_scale_factor": "0.02"}
    finally:
        await connection.close()


@pytest.mark.asyncio
async def test_redis_answers_redis_asyncio(store_dir: Path) -> None:
    stores = embedded.start(store_dir)
    client = aioredis.Redis.from_url(stores.redis_url)
    try:
        key = f"probe:{uuid.uuid4().hex}"
        assert await client.set(key, b"value")
        assert await client.get(key) == b"value"
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_mongo_answers_async_mongo_client(store_dir: Path) -> None:
    stores = embedded.start(store_dir)
    client: AsyncMongoClient = AsyncMongoClient(stores.mongo_url, serverSelectionTimeoutMS=10_000)
    try:
        collection = client["nexus"]["probe"]
        key = uuid.uuid4().hex
        await collection.insert_one({"_id": key, "n": 1})
        assert await collection.find_one({"_id": key}) == {"_id": key, "n": 1}
    finally:
        await client.close()


async def _round_trip(bootstrap: str) -> None:
    """Produce one record to a fresh topic and read it back through a consumer group."""
    topic = f"probe-{uuid.uuid4().hex[:12]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"payload", key=b"key")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"group-{uuid.uuid4().hex[:12]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
        assert (record.key, record.value) == (b"key", b"payload")
    finally:
        await consumer.stop()


@pytest.mark.asyncio
async def test_kafka_answers_aiokafka(store_dir: Path) -> None:
    stores = embedded.start(store_dir)
    await _round_trip(stores.kafka_bootstrap)


@pytest.mark.asyncio
async def test_data_survives_stop_and_start(store_dir: Path) -> None:
    before = embedded.start(store_dir)
    key = uuid.uuid4().hex

    connection = await asyncpg.connect(before.postgres_url)
    await connection.execute("CREATE TABLE IF NOT EXISTS kept (id text PRIMARY KEY)")
    await connection.execute("INSERT INTO kept VALUES ($1)", key)
    await connection.close()
    cache = aioredis.Redis.from_url(before.redis_url)
    await cache.set(f"kept:{key}", b"1")
    await cache.aclose()
    documents: AsyncMongoClient = AsyncMongoClient(before.mongo_url)
    await documents["nexus"]["kept"].insert_one({"_id": key})
    await documents.close()

    assert embedded.stop(store_dir) == list(embedded.STORE_NAMES)
    report = embedded.status(store_dir)
    assert not any(report[name]["alive"] for name in embedded.STORE_NAMES)
    assert all(report[name]["pid"] is None for name in embedded.STORE_NAMES)
    assert embedded.stop(store_dir) == []

    began = time.monotonic()
    after = embedded.start(store_dir)
    print(f"restart after stop: {time.monotonic() - began:.2f} s")
    assert after.env() == before.env()  # same ports
    assert set(after.pids.values()).isdisjoint(before.pids.values())

    connection = await asyncpg.connect(after.postgres_url)
    try:
        assert await connection.fetchval("SELECT id FROM kept WHERE id = $1", key) == key
    finally:
        await connection.close()
    cache = aioredis.Redis.from_url(after.redis_url)
    try:
        assert await cache.get(f"kept:{key}") == b"1"
    finally:
        await cache.aclose()
    documents = AsyncMongoClient(after.mongo_url)
    try:
        assert await documents["nexus"]["kept"].find_one({"_id": key}) == {"_id": key}
    finally:
        await documents.close()


@pytest.mark.asyncio
async def test_restart_kafka_keeps_the_bootstrap_address(store_dir: Path) -> None:
    before = embedded.start(store_dir)
    await _round_trip(before.kafka_bootstrap)

    after = embedded.restart_kafka(store_dir)

    assert after.kafka_bootstrap == before.kafka_bootstrap
    assert after.pids["kafka"] != before.pids["kafka"]
    assert {k: v for k, v in after.pids.items() if k != "kafka"} == {
        k: v for k, v in before.pids.items() if k != "kafka"
    }
    assert embedded.status(store_dir)["kafka"]["ready"]
    await _round_trip(after.kafka_bootstrap)


async def test_a_dead_or_reused_pid_is_started_again(store_dir: Path, until) -> None:
    before = embedded.start(store_dir)
    os.kill(before.pids["kafka"], signal.SIGKILL)
    await until(lambda: not embedded.status(store_dir)["kafka"]["alive"], within_s=15)
    # As after a reboot: the recorded pid now belongs to some other live process.
    state_file = store_dir / "run" / "stores.json"
    state = json.loads(state_file.read_text())
    state["stores"]["kafka"]["pid"] = os.getpid()
    state_file.write_text(json.dumps(state))
    assert not embedded.status(store_dir)["kafka"]["alive"]

    messages: list[str] = []
    after = embedded.start(store_dir, progress=messages.append)

    assert after.pids["kafka"] not in (before.pids["kafka"], os.getpid())
    assert after.kafka_bootstrap == before.kafka_bootstrap
    assert {k: v for k, v in after.pids.items() if k != "kafka"} == {
        k: v for k, v in before.pids.items() if k != "kafka"
    }
    assert any(message.startswith("kafka ready") for message in messages), messages
    assert embedded.status(store_dir)["kafka"]["ready"]


@pytest.mark.asyncio
async def test_postgres_comes_back_after_a_crash_with_a_stale_pid_file(store_dir: Path, until) -> None:
    before = embedded.start(store_dir)
    key = uuid.uuid4().hex
    connection = await asyncpg.connect(before.postgres_url)
    await connection.execute("CREATE TABLE IF NOT EXISTS crash (id text PRIMARY KEY)")
    await connection.execute("INSERT INTO crash VALUES ($1)", key)
    await connection.close()

    os.kill(before.pids["postgres"], signal.SIGKILL)
    await until(lambda: not _pid_alive(before.pids["postgres"]), within_s=15)
    # As after a reboot: postmaster.pid names a pid that another live program now has.
    pid_file = store_dir / "postgres" / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    pid_file.write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")

    after = embedded.start(store_dir)

    assert after.pids["postgres"] != before.pids["postgres"]
    assert after.postgres_url == before.postgres_url
    connection = await asyncpg.connect(after.postgres_url)
    try:
        assert await connection.fetchval("SELECT id FROM crash WHERE id = $1", key) == key
    finally:
        await connection.close()


@pytest.mark.asyncio
async def test_postgres_comes_back_while_its_killed_postmaster_is_an_uncollected_zombie(store_dir: Path, until) -> None:
    """A postmaster killed outright stays a zombie until its parent collects it, and PostgreSQL took the zombie
    named in postmaster.pid for a live server ("lock file already exists"): a crashed store could not be started
    again until then (found by bench/saga_faults.py)."""
    import psutil

    before = embedded.start(store_dir)
    os.kill(before.pids["postgres"], signal.SIGKILL)
    await until(lambda: not _pid_alive(before.pids["postgres"]), within_s=15)
    # A zombie that is not this process's child (so nothing here collects it), of the user PostgreSQL runs as
    # (PostgreSQL ignores a pid it may not signal): the shell starts a short sleep and becomes a long one, which
    # never collects the short one when it ends (the shell itself could, had the child ended before its exec).
    parent = await asyncio.create_subprocess_exec("/bin/sh", "-c", "sleep 1 & echo $!; exec sleep 120",
                                                  stdout=asyncio.subprocess.PIPE,
                                                  **embedded._as_user(embedded._pg_system_user()))
    try:
        assert parent.stdout is not None
        zombie = int(await parent.stdout.readline())
        await until(lambda: psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE, within_s=15)
        pid_file = store_dir / "postgres" / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(zombie), *lines[1:]]) + "\n")

        after = embedded.start(store_dir)

        assert psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE  # still there: the start did not need it gone
        connection = await asyncpg.connect(after.postgres_url)
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()
    finally:
        parent.kill()
        await parent.wait()


def test_a_taken_port_moves_the_server(store_dir: Path) -> None:
    import socket

    before = embedded.start(store_dir)
    embedded.stop(store_dir)
    port = int(before.kafka_bootstrap.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        after = embedded.start(store_dir)
    assert after.kafka_bootstrap != before.kafka_bootstrap
    assert after.redis_url == before.redis_url
    assert embedded.status(store_dir)["kafka"]["ready"]


def test_servers_listen_below_the_ephemeral_range(store_dir: Path) -> None:
    # A port the kernel may hand to an outgoing connection could be taken while its server restarts.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    embedded.start(store_dir)
    ports = {name: report["port"] for name, report in embedded.status(store_dir).items()}
    assert all(port < low for port in ports.values()), ports
    assert len(set(ports.values())) == len(ports)


def test_a_lost_state_file_leaves_no_duplicate_servers(store_dir: Path) -> None:
    before = embedded.start(store_dir)
    (store_dir / "run" / "stores.json").unlink()

    after = embedded.start(store_dir)

    # PostgreSQL is adopted from its postmaster.pid; the others cannot be reached without their port,
    # so they are stopped rather than left to share their files with a second server.
    assert after.pids["postgres"] == before.pids["postgres"]
    assert after.postgres_url == before.postgres_url
    for name in ("redis", "mongo", "kafka"):
        assert not _pid_alive(before.pids[name]), name
    assert all(embedded.status(store_dir)[name]["ready"] for name in embedded.STORE_NAMES)

    # And `stop` finds servers the state file forgot.
    (store_dir / "run" / "stores.json").unlink()
    assert sorted(embedded.stop(store_dir)) == sorted(embedded.STORE_NAMES)
    for name, pid in after.pids.items():
        assert not _pid_alive(pid), name


def test_stop_ends_every_server(store_dir: Path) -> None:
    stores = embedded.start(store_dir)
    assert sorted(embedded.stop(store_dir)) == sorted(embedded.STORE_NAMES)
    for name, pid in stores.pids.items():
        assert not _pid_alive(pid), name
    assert embedded.stop(store_dir) == []


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
