"""Throwaway embedded stores for in-process benchmarks (``from scratch import scratch_stores``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STORE_URLS = ("NEXUS_POSTGRES_URL", "NEXUS_REDIS_URL", "NEXUS_MONGO_URL", "NEXUS_KAFKA_BOOTSTRAP", "NEXUS_SMTP_URL")


@contextmanager
def scratch_stores(prefix: str, **env: str) -> Iterator[Path]:
    """The embedded stores (and SMTP server) in a new temporary data dir, with their URLs and ``env`` in this
    process's environment (set before any settings are read); stopped and removed afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update({"NEXUS_DATA_DIR": str(data_dir), "NEXUS_LOG_LEVEL": "WARNING", **env})
    for k in _STORE_URLS:
        os.environ.pop(k, None)
    from nexus_ray.runtime import embedded

    try:
        os.environ.update(embedded.start(data_dir).env())
        yield data_dir
    finally:
        embedded.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
