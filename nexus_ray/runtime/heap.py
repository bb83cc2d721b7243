"""The garbage collector of a serving process: what it scans, and how often.

Reference counting frees almost everything a request makes; the cyclic collector only has to find the rest.
With Python's own settings it does so very often and at length in a busy process that froze nothing (measured in
the ledger's in-process batch bench, bench/RESULTS.md): a generation-0 collection every 700 net new objects (about
6,000 a run), and full collections that traverse every tracked object of the process -- the modules, FastAPI's and
pydantic's models, and each request's objects still alive -- at 25-30 ms each: about a sixth of the process's CPU
time went to the collector, and each full collection pauses every request in flight.

:func:`settle` (called by every namespace app once it has started) does two things:

* ``gc.freeze()`` after one collection: what is alive once the process has started is moved into the permanent
  generation, which later collections skip. Reference counting still frees those objects; only a cycle among them
  is never collected, and the collection before the freeze leaves none behind from start-up. Ray Serve does the
  same at the end of a replica's start (``RAY_SERVE_FREEZE_GC_ON_STARTUP``, on by default), so in a deployed
  replica this adds little; an app served any other way (uvicorn, the in-process benches and tests) had nothing
  frozen, and its full collections traversed all of it;
* raises the thresholds (``gc_thresholds``, default 50,000, 20, 20): a young collection after 50,000 net new
  container objects, not 700. Serve keeps Python's 700 in its replicas: a platform replica at 800 requests/s ran
  5-38 young collections a second (up to 3 % of its core, each a pause of the requests in flight); with these
  thresholds, none in 40 s of the same load. A cycle that becomes garbage waits longer to be freed: until 50,000
  more container objects are alive than at the last collection.
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
