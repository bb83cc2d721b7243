"""The live room's forwarding loop: what queued up goes out as one ``batch`` frame only for a member that asked.

The loop is driven with a real :class:`asyncio.Queue` holding the bytes the fan-out hands over, and a
recording WebSocket (the frames it was given to send); the queue ends with the fan-out's LOST marker,
so each run ends with the same error a lost subscription gives. The linger between a member's frames
(``chat_batch_linger_ms``) is set by each test that depends on it.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from nexus_ray.config import get_settings
from nexus_ray.deployments.platform.chat import live
from nexus_ray.exceptions import ServiceUnavailable
from nexus_ray.stores.fanout import LOST, OVERFLOW


class Recorder:
    def __init__(self) -> None:
        self.frames: list[dict] = []

    async def send_text(self, text: str) -> None:
        self.frames.append(orjson.loads(text))


@pytest.fixture
def linger_ms(monkeypatch):
    def set_to(ms: float) -> None:
        monkeypatch.setenv("NEXUS_CHAT_BATCH_LINGER_MS", str(ms))
        get_settings.cache_clear()

    yield set_to
    monkeypatch.delenv("NEXUS_CHAT_BATCH_LINGER_MS", raising=False)
    get_settings.cache_clear()


def message(seq: int) -> bytes:
    return orjson.dumps({"type": "message", "message": {"seq": seq, "text": f"m{seq}"}})


async def forwarded(items: list[object], *, delivered: int = 0, batch: bool) -> list[dict]:
    queue: asyncio.Queue[object] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    ws = Recorder()
    with pytest.raises(ServiceUnavailable):
        await live._Connection(ws, "room", "alice").live(queue, delivered, batch=batch)  # type: ignore[arg-type]
    return ws.frames


async def test_queued_events_go_out_as_one_batch_in_order():
    typing = orjson.dumps({"type": "typing", "user_id": "bob"})
    frames = await forwarded([message(1), message(2), typing, message(3), LOST], batch=True)
    assert frames == [{"type": "batch", "events": [orjson.loads(message(1)), orjson.loads(message(2)),
                                                   orjson.loads(typing), orjson.loads(message(3))]}]


async def test_without_batch_every_event_is_a_frame_of_its_own():
    frames = await forwarded([message(1), message(2), message(3), LOST], batch=False)
    assert [f["type"] for f in frames] == ["message"] * 3
    assert [f["message"]["seq"] for f in frames] == [1, 2, 3]


async def test_one_queued_event_is_sent_as_itself_not_as_a_batch():
    assert await forwarded([message(7), LOST], batch=True) == [orjson.loads(message(7))]


async def test_messages_already_delivered_are_skipped_inside_a_batch():
    frames = await forwarded([message(4), message(5), message(6), message(7), LOST], delivered=5, batch=True)
    assert frames == [{"type": "batch", "events": [orjson.loads(message(6)), orjson.loads(message(7))]}]


async def test_a_batch_holds_at_most_batch_most_events():
    frames = await forwarded([message(s) for s in range(1, live.BATCH_MOST + 45)] + [LOST], batch=True)
    assert [len(f["events"]) for f in frames] == [live.BATCH_MOST, 44]
    seqs = [e["message"]["seq"] for f in frames for e in f["events"]]
    assert seqs == list(range(1, live.BATCH_MOST + 45))


async def test_what_came_before_an_overflow_is_sent_then_the_connection_ends():
    queue: asyncio.Queue[object] = asyncio.Queue()
    for item in (message(1), message(2), OVERFLOW, message(3)):
        queue.put_nowait(item)
    ws = Recorder()
    with pytest.raises(ServiceUnavailable, match="too far behind"):
        await live._Connection(ws, "room", "alice").live(queue, 0, batch=True)  # type: ignore[arg-type]
    assert ws.frames == [{"type": "batch", "events": [orjson.loads(message(1)), orjson.loads(message(2))]}]


async def trickled(until) -> list[dict]:
    """Message 1 into an idle connection; once it is out, message 2, a few turns of the loop, then message 3."""
    queue: asyncio.Queue[object] = asyncio.Queue()
    ws = Recorder()
    task = asyncio.create_task(live._Connection(ws, "room", "alice").live(queue, 0, batch=True))  # type: ignore[arg-type]
    queue.put_nowait(message(1))
    await until(lambda: ws.frames, within_s=5, every=0.001)  # message 2 follows message 1 at once
    queue.put_nowait(message(2))
    for _ in range(5):
        await asyncio.sleep(0)  # the forwarding loop runs: without a linger it sends message 2 now
    queue.put_nowait(message(3))
    queue.put_nowait(LOST)
    with pytest.raises(ServiceUnavailable):
        await task
    return ws.frames


async def test_events_within_the_linger_after_a_frame_go_out_together(linger_ms, until):
    linger_ms(500)
    assert await trickled(until) == [
        orjson.loads(message(1)),  # after a quiet spell: at once, not held for the linger
        {"type": "batch", "events": [orjson.loads(message(2)), orjson.loads(message(3))]},
    ]


async def test_without_a_linger_each_event_goes_out_as_soon_as_the_connection_is_free(linger_ms, until):
    linger_ms(0)
    frames = await trickled(until)
    assert frames == [orjson.loads(message(1)), orjson.loads(message(2)), orjson.loads(message(3))]
