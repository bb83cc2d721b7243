"""The live room's feed and forwarding loop: frames made once per room, batches only for members that asked.

A room's :class:`live._Feed` is driven as the fan-out drives it (called with each event's bytes, in
order, then the fan-out's LOST marker, so each run ends with the error a lost subscription gives);
each member is a :class:`live._Connection` on a recording WebSocket (the frames it was given to send).
The linger (``chat_batch_linger_ms``, fixed unless a test is about how it adapts) is set by each test that
depends on it.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from nexus_ray.config import get_settings
from nexus_ray.deployments.platform.chat import live
from nexus_ray.exceptions import ServiceUnavailable
from nexus_ray.stores.fanout import LOST


class Recorder:
    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.texts: list[str] = []

    async def send_text(self, text: str) -> None:
        self.texts.append(text)
        self.frames.append(orjson.loads(text))


@pytest.fixture
def chat_setting(monkeypatch):
    def set_to(name: str, value: float) -> None:
        monkeypatch.setenv(f"NEXUS_CHAT_{name.upper()}", str(value))
        get_settings.cache_clear()

    yield set_to
    get_settings.cache_clear()


@pytest.fixture
def linger_ms(chat_setting):
    """A fixed linger of ``ms`` (the shortest and the longest the same)."""
    def fixed(ms: float) -> None:
        chat_setting("batch_linger_ms", ms)
        chat_setting("batch_linger_min_ms", ms)

    return fixed


def message(seq: int) -> bytes:
    return orjson.dumps({"type": "message", "message": {"seq": seq, "text": f"m{seq}"}})


def member(feed: live._Feed, *, batch: bool, ws: Recorder | None = None) -> tuple[live._Connection, Recorder]:
    ws = ws or Recorder()
    conn = live._Connection(ws, "room", "alice", batch=batch)  # type: ignore[arg-type]
    feed.join(conn)
    return conn, ws


async def forwarded(items: list[object], *, delivered: int = 0, batch: bool) -> list[dict]:
    """What a member that starts reading after ``items`` came into its room's feed is sent."""
    feed = live._Feed("room")
    conn, ws = member(feed, batch=batch)
    for item in items:
        feed(item)
    with pytest.raises(ServiceUnavailable):
        await conn.live(delivered)
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


async def test_what_came_before_an_overflow_is_sent_then_the_connection_ends(chat_setting):
    chat_setting("client_backlog", 10)
    chat_setting("batch_linger_ms", 0)  # every event a frame of its own: the eleventh takes it past 10
    feed = live._Feed("room")
    conn, ws = member(feed, batch=True)
    for seq in range(1, 13):
        feed(message(seq))
    with pytest.raises(ServiceUnavailable, match="too far behind"):
        await conn.live(0)
    assert ws.frames == [{"type": "batch", "events": [orjson.loads(message(s)) for s in range(1, 11)]}]


async def trickled(until) -> list[dict]:
    """Message 1 into an idle room; once it is out, message 2, a few turns of the loop, then message 3."""
    feed = live._Feed("room")
    conn, ws = member(feed, batch=True)
    task = asyncio.create_task(conn.live(0))
    feed(message(1))
    await until(lambda: ws.frames, within_s=5, every=0.001)  # message 2 follows message 1 at once
    feed(message(2))
    for _ in range(5):
        await asyncio.sleep(0)  # the forwarding loop runs: without a linger it sends message 2 now
    feed(message(3))
    feed(LOST)
    with pytest.raises(ServiceUnavailable):
        await task
    return ws.frames


async def test_events_within_the_linger_of_each_other_go_out_together(linger_ms, until):
    linger_ms(500)
    assert await trickled(until) == [
        orjson.loads(message(1)),  # after a quiet spell: at once, not held for the linger
        {"type": "batch", "events": [orjson.loads(message(2)), orjson.loads(message(3))]},
    ]


async def test_without_a_linger_each_event_goes_out_as_soon_as_the_connection_is_free(linger_ms, until):
    linger_ms(0)
    frames = await trickled(until)
    assert frames == [orjson.loads(message(1)), orjson.loads(message(2)), orjson.loads(message(3))]


async def test_every_member_is_sent_the_frame_made_once_for_the_room(linger_ms, until):
    linger_ms(500)
    feed = live._Feed("room")
    members = [member(feed, batch=True) for _ in range(3)]
    tasks = [asyncio.create_task(conn.live(0)) for conn, _ in members]
    feed(message(1))
    await until(lambda: all(ws.frames for _, ws in members), within_s=5, every=0.001)
    feed(message(2))
    feed(message(3))
    await until(lambda: all(len(ws.frames) == 2 for _, ws in members), within_s=5, every=0.005)  # the linger ends
    feed(LOST)
    for task in tasks:
        with pytest.raises(ServiceUnavailable):
            await task
    batch = {"type": "batch", "events": [orjson.loads(message(2)), orjson.loads(message(3))]}
    first = members[0][1]
    assert first.frames == [orjson.loads(message(1)), batch]
    for _, ws in members[1:]:
        assert [a is b for a, b in zip(ws.texts, first.texts, strict=True)] == [True, True]  # the same object


async def test_a_member_that_replayed_part_of_a_frame_gets_only_the_rest():
    feed = live._Feed("room")
    conn, ws = member(feed, batch=True)
    task = asyncio.create_task(conn.live(5))  # replayed up to 5 from history, as a resuming member has
    conn.push(live._Frame([message(s) for s in (4, 5, 6, 7)], [4, 5, 6, 7]), 4)
    for _ in range(5):
        await asyncio.sleep(0)  # the frame alone in its inbox: sent before LOST comes
    feed(LOST)
    with pytest.raises(ServiceUnavailable):
        await task
    assert ws.frames == [{"type": "batch", "events": [orjson.loads(message(6)), orjson.loads(message(7))]}]


async def test_a_plain_member_gets_each_event_at_once_beside_a_batch_member(linger_ms, until):
    linger_ms(500)
    feed = live._Feed("room")
    plain, plain_ws = member(feed, batch=False)
    batched, batched_ws = member(feed, batch=True)
    tasks = [asyncio.create_task(plain.live(0)), asyncio.create_task(batched.live(0))]
    for seq in (1, 2, 3):
        feed(message(seq))
    await until(lambda: len(plain_ws.frames) == 3, within_s=5, every=0.001)
    assert len(batched_ws.frames) == 1  # message 1 at once; 2 and 3 wait for the linger
    feed(LOST)
    for task in tasks:
        with pytest.raises(ServiceUnavailable):
            await task
    assert [f["message"]["seq"] for f in plain_ws.frames] == [1, 2, 3]
    assert batched_ws.frames[1]["type"] == "batch"


async def test_an_event_waits_at_most_the_linger_from_when_it_came_not_from_the_frame_before(linger_ms):
    linger_ms(400)
    feed = live._Feed("room")
    member(feed, batch=True)
    loop = asyncio.get_running_loop()
    feed(message(1))  # after a quiet spell: at once
    assert feed._due is None
    feed._last = loop.time() - 0.3  # message 1 came 300 ms ago: the room is not quiet for a linger yet
    feed(message(2))
    assert feed._due is not None  # held ...
    came = loop.time()
    assert came + 0.4 - 0.05 <= feed._due.when() <= came + 0.4 + 0.05  # ... for a linger from its own coming
    feed(message(3))
    assert feed._pending == [message(2), message(3)]  # the one behind it joins its frame
    feed._stop()


class SlowSocket(Recorder):
    """A member's socket whose sends take ``delay_s`` each, or never end (``stuck``): a slow or busy path."""

    def __init__(self, delay_s: float = 0.0, *, stuck: bool = False) -> None:
        super().__init__()
        self.delay_s, self.stuck = delay_s, stuck

    async def send_text(self, text: str) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay_s)  # the simulated send's own duration, not a wait for a condition
        await super().send_text(text)


async def handed_out(sockets: list[Recorder], until) -> live._Feed:
    """A room's feed whose batch members are ``sockets``, after one frame reached nine in ten of them."""
    feed = live._Feed("room")
    tasks = [asyncio.create_task(member(feed, batch=True, ws=ws)[0].live(0)) for ws in sockets]
    feed(message(1))
    await until(lambda: feed._handout_s is not None, within_s=5, every=0.002)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return feed


@pytest.fixture
def adaptive(chat_setting):
    # The shortest linger well above three times what handing a frame to instant sockets takes, even in a loop
    # that also runs the in-process platform's background work (up to about 5 ms there, so 3 x 5 = 15 ms):
    # with 10 ms, a busy moment of the suite made the measured linger 14 ms.
    chat_setting("batch_linger_ms", 500)
    chat_setting("batch_linger_min_ms", 50)
    chat_setting("batch_linger_factor", 3)


async def test_the_linger_is_the_longest_until_a_frame_has_been_handed_out(adaptive):
    assert live._Feed("room").linger() == pytest.approx(0.5)


async def test_frames_that_reach_the_members_slowly_hold_a_longer_linger(adaptive, until):
    feed = await handed_out([SlowSocket(0.05) for _ in range(10)], until)
    assert 0.05 <= feed._handout_s < 0.5
    assert feed.linger() == pytest.approx(3 * feed._handout_s)  # within the bounds: the factor times the time
    assert feed.linger() >= 0.15


async def test_frames_that_reach_the_members_at_once_bring_the_linger_to_its_shortest(adaptive, until):
    feed = await handed_out([Recorder() for _ in range(10)], until)
    assert feed.linger() == pytest.approx(0.05)


async def test_one_stuck_member_does_not_keep_the_linger_at_its_longest(adaptive, until):
    feed = await handed_out([Recorder() for _ in range(9)] + [SlowSocket(stuck=True)], until)
    assert feed.linger() == pytest.approx(0.05)


async def test_the_linger_never_exceeds_the_longest_however_slow_the_frames(adaptive):
    feed = live._Feed("room")
    feed.took(2.0)
    assert feed.linger() == pytest.approx(0.5)
    for _ in range(40):
        feed.took(0.0)  # a moving average: it comes down over the frames that follow
    assert feed.linger() == pytest.approx(0.05)
