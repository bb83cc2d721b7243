"""The collector's settings of a serving process (nexus_ray.runtime.heap): applied by every namespace app."""

import gc

import pytest

from nexus_ray.config import get_settings
from nexus_ray.runtime import heap


@pytest.fixture
def collector():
    """Put the collector back as it was (thresholds; what was frozen stays frozen) after a test."""
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)


def _seen_by_collector(obj: object) -> bool:
    # gc.get_objects() lists generations 0-2; the permanent generation (what gc.freeze moved) is not among them.
    return any(o is obj for o in gc.get_objects())


def test_settle_takes_what_is_alive_out_of_the_collections_and_sets_the_thresholds(collector):
    before = [[]]
    assert _seen_by_collector(before)
    heap.settle(get_settings().model_copy(update={"gc_thresholds": (1234, 5, 6), "gc_freeze_at_start": True}))
    assert gc.get_threshold() == (1234, 5, 6)
    assert not _seen_by_collector(before)  # frozen: later collections skip it
    after = [[]]
    assert _seen_by_collector(after)  # what is made later is collected as ever


def test_settle_without_the_freeze_leaves_the_heap_in_the_collections(collector):
    before = [[]]
    heap.settle(get_settings().model_copy(update={"gc_thresholds": (2345, 10, 10), "gc_freeze_at_start": False}))
    assert gc.get_threshold() == (2345, 10, 10)
    assert _seen_by_collector(before)


async def test_every_namespace_app_settles_the_heap_when_it_starts(migrated, monkeypatch, collector):
    from nexus_ray.deployments.app import build_app

    monkeypatch.setattr(get_settings(), "gc_thresholds", (4321, 7, 8))
    app = build_app("platform")
    before = [[]]
    assert gc.get_threshold() != (4321, 7, 8)
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == (4321, 7, 8)
        assert not _seen_by_collector(before)
