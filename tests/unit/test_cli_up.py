"""``nexus up`` (``make run``): an interrupt at any moment stops what it started, a detached start keeps it."""

from __future__ import annotations

import os
import signal

import pytest

from nexus_ray import cli


@pytest.fixture
def calls(monkeypatch):  # type: ignore[no-untyped-def]
    """What ``up`` called, with ``down`` recorded instead of run; SIGTERM's handler restored after the test."""
    made: list[str] = []
    monkeypatch.setattr(cli, "down", lambda: made.append("down"))
    before = signal.getsignal(signal.SIGTERM)
    yield made
    signal.signal(signal.SIGTERM, before)


def test_an_interrupt_while_it_starts_stops_what_it_started(monkeypatch, calls):  # type: ignore[no-untyped-def]
    def start(detach: bool, timeout: float) -> bool:
        calls.append("start")
        raise KeyboardInterrupt  # Ctrl-C while the stores, Ray or the services come up

    monkeypatch.setattr(cli, "_start", start)
    cli.up(detach=False, timeout=1.0)
    assert calls == ["start", "down"]


def test_sigterm_while_it_starts_is_an_interrupt(monkeypatch, calls):  # type: ignore[no-untyped-def]
    def start(detach: bool, timeout: float) -> bool:
        calls.append("start")
        os.kill(os.getpid(), signal.SIGTERM)  # a process manager stopping it mid-start
        calls.append("not reached")
        return False

    monkeypatch.setattr(cli, "_start", start)
    cli.up(detach=True, timeout=1.0)
    assert calls == ["start", "down"]


def test_a_detached_start_leaves_everything_running(monkeypatch, calls):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cli, "_start", lambda detach, timeout: calls.append("start") or detach)
    cli.up(detach=True, timeout=1.0)
    assert calls == ["start"]
