"""The garbage collector of a serving process: what it scans, and how often.

Reference counting frees almost everything a request makes; the cyclic collector only has to find the rest. With
Python's own thresholds it runs very often in a busy process: in the ledger's in-process batch bench, a young
collection every 700 net new objects (about 6,000 in a 15 s run) and 50 full ones of 27 ms each (bench/RESULTS.md),
each a pause of every request in flight. Measured there, fewer collections did not lower the process's CPU per
transfer; what this module changes is how often, and how long, the process stops for the collector.

:func:`settle` (called by every namespace app once it has started) does two things:

* ``gc.freeze()`` after one collection: what is alive once the process has started is moved into the permanent
  generation, which later collections skip. Reference counting still frees those objects; only a cycle among them
  is never collected, and the collection before the freeze leaves none behind from start-up. Ray Serve does the
  same at the end of a replica's start (``RAY_SERVE_FREEZE_GC_ON_STARTUP``, on by default), so in a deployed
  replica this adds little; it is for an app served any other way (uvicorn, the in-process benches and tests);
* raises the thresholds (``gc_thresholds``, default 50,000, 20, 20): a young collection after 50,000 net new
  container objects, not 700. Serve keeps Python's 700 in its replicas: a platform replica at 800 requests/s ran
  5-38 young collections a second (6-62 ms of every 2 s inside them, each a pause of the requests in flight);
  with these thresholds, none in 40 s of the same load. A cycle that becomes garbage waits longer to be freed:
  until 50,000 more container objects are alive than at the last collection.
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
