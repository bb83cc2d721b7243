"""A bench in one process on the embedded stores of a fresh temporary directory (no Ray, no Serve).

    DIR = private_stores("nexus-bench-orders-")   # at the top, before anything reads the settings
    ...
    asyncio.run(on_stores(DIR, run))             # run(store_pids) runs with the stores up; stopped and
                                                 # the directory removed after
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path


def private_stores(prefix: str) -> Path:
    """A fresh data directory, and this process's settings pointed at it (test environment, a new master key)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update({"NEXUS_ENVIRONMENT": "test", "NEXUS_MASTER_KEY": secrets.token_urlsafe(48),
                       "NEXUS_DATA_DIR": str(directory), "NEXUS_LOG_LEVEL": "WARNING"})
    return directory


async def on_stores(directory: Path, run: Callable[[list[int]], Awaitable[None]]) -> None:
    """Start the embedded stores in ``directory``, await ``run`` with their server pids, stop them and remove
    ``directory`` (it holds nothing but this bench's stores: about 56 MB each run)."""
    from nexus_ray.config import get_settings
    from nexus_ray.runtime import embedded

    try:  # a start that fails part-way leaves the servers it did start recorded: stop stops them too
        stores = embedded.start(directory)
        os.environ.update(stores.env())
        get_settings.cache_clear()
        await run(list(stores.pids.values()))
    finally:
        embedded.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)
