"""The group commit (``stores/together.py``): what goes out together, and what each request gets."""

from __future__ import annotations

import asyncio

import pytest

from nexus_ray.stores.together import GroupCommit


def recording(batches: list[list[int]], *, fail_item: int | None = None):
    async def write(_key: str, items: list[int]) -> list[int | BaseException]:
        batches.append(list(items))
        await asyncio.sleep(0.001)  # a round trip: the requests that come meanwhile queue for the next batch
        return [ValueError(f"item {i} refused") if i == fail_item else i * 10 for i in items]

    return write


async def test_items_handed_over_at_one_moment_go_out_in_one_batch_and_each_gets_its_own_outcome():
    batches: list[list[int]] = []
    stage = GroupCommit(recording(batches, fail_item=3))
    outcomes = await asyncio.gather(*(stage.submit("k", i) for i in range(5)), return_exceptions=True)
    assert batches == [[0, 1, 2, 3, 4]]
    assert outcomes[:3] == [0, 10, 20] and outcomes[4] == 40
    assert isinstance(outcomes[3], ValueError) and "item 3" in str(outcomes[3])


async def test_the_requests_one_batch_answers_hand_their_next_items_over_together():
    """Twelve requests go through two stages. The first stage answers them in one batch; between the two, some go
    on at once and some take a turn or two of the event loop more (as a saga step run in a task of its own does),
    yet their items for the second stage still go out as one batch, not the quickest alone and then the rest."""
    first: list[list[int]] = []
    second: list[list[int]] = []
    one, two = GroupCommit(recording(first)), GroupCommit(recording(second))

    async def request(i: int) -> int:
        await one.submit("k", i)
        for _ in range(i % 3):
            await asyncio.sleep(0)
        return await two.submit("k", i)

    assert await asyncio.gather(*(request(i) for i in range(12))) == [i * 10 for i in range(12)]
    assert first == [list(range(12))]
    assert [sorted(batch) for batch in second] == [list(range(12))]  # one batch, in the order they came


async def test_items_that_come_while_a_batch_is_out_wait_for_the_next_one():
    batches: list[list[int]] = []
    gate, started = asyncio.Event(), asyncio.Event()

    async def write(_key: str, items: list[int]) -> list[int]:
        batches.append(list(items))
        started.set()
        if len(batches) == 1:
            await gate.wait()
        return items

    stage: GroupCommit[str, int, int] = GroupCommit(write)
    first = asyncio.ensure_future(stage.submit("k", 1))
    await started.wait()
    later = [asyncio.ensure_future(stage.submit("k", i)) for i in (2, 3)]
    other_key = await stage.submit("other", 9)  # another key is not held up by this one's batch
    assert other_key == 9 and not first.done()
    gate.set()
    assert await asyncio.gather(first, *later) == [1, 2, 3]
    assert batches == [[1], [9], [2, 3]]


async def test_a_writer_that_fails_fails_every_item_of_its_batch_and_the_next_batch_still_goes():
    calls = 0

    async def write(_key: str, items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store away")
        return items

    stage: GroupCommit[str, int, int] = GroupCommit(write)
    failed = await asyncio.gather(*(stage.submit("k", i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(x, ConnectionError) for x in failed)
    assert await stage.submit("k", 7) == 7


async def test_a_request_that_stops_waiting_leaves_its_item_to_be_written_with_its_batch():
    written: list[int] = []
    gate, started = asyncio.Event(), asyncio.Event()

    async def write(_key: str, items: list[int]) -> list[int]:
        started.set()
        await gate.wait()
        written.extend(items)
        return items

    stage: GroupCommit[str, int, int] = GroupCommit(write)
    waiter = asyncio.ensure_future(stage.submit("k", 5))
    await started.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    assert await stage.submit("k", 6) == 6
    assert written == [5, 6]


async def test_with_no_turns_a_lone_item_is_written_at_once_and_those_that_come_meanwhile_go_next_together():
    """``turns=0`` (the edge's admissions): an item with nothing of its key out is written at once, by its own
    request, before the loop turns again; what comes while it is out waits, and goes in one batch after it."""
    batches: list[list[int]] = []
    stage = GroupCommit(recording(batches, fail_item=4), turns=0)
    first = asyncio.ensure_future(stage.submit("k", 1))
    await asyncio.sleep(0)  # one turn: the first item's batch is out already
    assert batches == [[1]]
    later = [asyncio.ensure_future(stage.submit("k", i)) for i in (2, 3, 4)]
    outcomes = await asyncio.gather(first, *later, return_exceptions=True)
    assert outcomes[:3] == [10, 20, 30] and isinstance(outcomes[3], ValueError)
    assert batches == [[1], [2, 3, 4]]
    with pytest.raises(ValueError, match="item 4"):  # alone too, the item's own refusal is raised to its request
        await stage.submit("k", 4)
    assert await stage.submit("k", 5) == 50
    assert batches == [[1], [2, 3, 4], [4], [5]]


async def test_with_a_spacing_items_that_come_within_it_wait_for_one_batch_unless_enough_are_waiting():
    """``spacing`` (the saga's creations), where items come often: those that come before the spacing has passed
    since the last batch began wait, together, for one batch after it, and go early once ``enough`` wait."""
    batches: list[list[int]] = []
    spacing = {"s": 30.0}  # far longer than the test: only ``enough`` can end the wait
    stage = GroupCommit(recording(batches), spacing=lambda: spacing["s"], enough=4)
    assert await asyncio.gather(stage.submit("k", 1), stage.submit("k", 2)) == [10, 20]  # two at once: items come often
    later = [asyncio.ensure_future(stage.submit("k", i)) for i in (3, 4)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert batches == [[1, 2]] and not any(x.done() for x in later)  # held by the spacing, not written one by one
    spacing["s"] = 0.0  # read as the next batch ends: the drain then stops at once
    later += [asyncio.ensure_future(stage.submit("k", i)) for i in (5, 6)]  # four waiting: enough
    assert await asyncio.gather(*later) == [30, 40, 50, 60]
    assert batches == [[1, 2], [3, 4, 5, 6]]


async def test_with_a_spacing_an_item_after_a_quiet_spell_goes_at_once(until):
    """Items come often (two at once), so the batch's drain waits out the spacing; once it has passed with
    nothing waiting, the drain ends, and the next item goes at once instead of waiting a spacing of its own."""
    batches: list[list[int]] = []
    stage = GroupCommit(recording(batches), spacing=lambda: 0.5)
    assert await asyncio.gather(stage.submit("k", 1), stage.submit("k", 2)) == [10, 20]
    assert stage._draining  # waiting out the spacing
    await until(lambda: not stage._draining, within_s=10)  # the spacing passes with nothing waiting: the drain ends
    third = asyncio.ensure_future(stage.submit("k", 3))
    for _ in range(6):  # the request's turn, the batch's two, then it is out: no spacing is waited
        await asyncio.sleep(0)
    assert batches == [[1, 2], [3]]
    assert await third == 30


async def test_with_a_spacing_items_that_come_less_often_than_twice_in_it_are_not_held(until):
    """Where items come apart by more than half the spacing, a wait would mostly hold one item back alone: each
    goes at once, as without a spacing."""
    batches: list[list[int]] = []
    stage = GroupCommit(recording(batches), spacing=lambda: 1.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await stage.submit("k", 1) == 10
    await until(lambda: loop.time() > began + 0.6, within_s=10, every=0.05)  # 0.6 s apart: more than half of 1 s
    second = asyncio.ensure_future(stage.submit("k", 2))
    for _ in range(6):  # the request's turn, the batch's two, then it is out
        await asyncio.sleep(0)
    assert batches == [[1], [2]] and await second == 20
    third = asyncio.ensure_future(stage.submit("k", 3))  # at once after it: the mean gap is still over 0.5 s
    for _ in range(6):
        await asyncio.sleep(0)
    assert batches == [[1], [2], [3]] and await third == 30
