"""The garbage collector of a serving process: what it scans, and how often.

Reference counting frees almost everything a request makes; the cyclic collector only has to find the rest.
With Python's own settings it does so very often and at length in a busy replica (measured in the ledger's batch
bench, bench/RESULTS.md): a generation-0 collection every 700 net new objects (about 6,000 a run), and full
collections that traverse every tracked object of the process -- the modules, FastAPI's and pydantic's models,
and each request's objects still alive -- at 25-30 ms each: about a sixth of the process's CPU time went to the
collector, and each full collection pauses every request in flight.

:func:`settle` (called by every namespace app once it has started) does two things:

* ``gc.freeze()`` after one collection: what is alive once the process has started is moved into the permanent
  generation, which later collections skip. Reference counting still frees those objects; only a cycle among them
  is never collected, and the collection before the freeze leaves none behind from start-up;
* raises the thresholds (``gc_thresholds``, default 50,000, 20, 20): a young collection after 50,000 net new
  container objects, not 700. A cycle that becomes garbage waits a little longer to be freed (at most that many
  objects' worth of memory, a few MB); the collector's share of a busy replica's time falls several times.
"""

from __future__ import annotations

import gc
import logging

from nexus_ray.config import Settings

log = logging.getLogger(__name__)


def settle(settings: Settings) -> None:
    """Apply the collector's settings to this process (once it has started; calling it again is harmless)."""
    gc.set_threshold(*settings.gc_thresholds)
    if settings.gc_freeze_at_start:
        gc.collect()
        gc.freeze()
    log.debug("collector: thresholds %s, %d objects frozen", gc.get_threshold(), gc.get_freeze_count())
