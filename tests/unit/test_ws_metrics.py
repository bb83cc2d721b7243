"""WebSocket message counts: summed in the process, added to Ray's counter once per interval and on close."""

from __future__ import annotations

import pytest

from nexus_ray.edge import metrics

TAGS = {"namespace": "platform", "service": "chat-service", "route": "/platform/v1/chat/rooms/{room_id}/live"}


class Sink:
    """Stands in for Ray's counter (a no-op outside a Ray worker): what was added, with which labels."""

    def __init__(self) -> None:
        self.added: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.added.append((value, dict(tags or {})))

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for value, tags in self.added:
            out[tags["direction"]] = out.get(tags["direction"], 0) + value
        return out


@pytest.fixture
def sink(monkeypatch):
    metrics.flush_ws_messages()  # nothing left over from another test
    s = Sink()
    monkeypatch.setattr(metrics, "WS_MESSAGES", s)
    monkeypatch.setattr(metrics, "WS_CLOSED", Sink())
    monkeypatch.setattr(metrics, "WS_DURATION", type("H", (), {"observe": lambda *a, **k: None})())
    return s


async def test_messages_are_summed_and_added_once_the_interval_has_passed(sink, monkeypatch, until):
    monkeypatch.setattr(metrics, "WS_MESSAGES_FLUSH_S", 0.05)
    for _ in range(500):
        metrics.ws_message(TAGS, "out")
    metrics.ws_message(TAGS, "in")
    assert sink.added == []  # not one call per message
    await until(lambda: sink.added)
    assert sink.totals() == {"out": 500, "in": 1} and len(sink.added) == 2
    assert all(tags["route"] == TAGS["route"] for _, tags in sink.added)


async def test_a_closing_connection_adds_what_was_counted(sink):
    for _ in range(3):
        metrics.ws_message(TAGS, "out")
    metrics.ws_closed(TAGS, "1000", 1.5)
    assert sink.totals() == {"out": 3}


def test_without_an_event_loop_each_message_is_added_at_once(sink):
    metrics.ws_message(TAGS, "in")
    assert sink.totals() == {"in": 1}
