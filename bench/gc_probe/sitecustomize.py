"""Time every garbage collection of every Python process that starts with this folder on ``PYTHONPATH``.

    PYTHONPATH=bench/gc_probe GC_PROBE=1 .venv/bin/python bench/ledger.py ...     # one line at the process's exit
    GC_PROBE_DIR=/tmp/gc PYTHONPATH=bench/gc_probe:$PYTHONPATH bash bench/with_stack.sh python bench/rate_cpu.py
        # every process (Ray's workers included) appends its running totals to GC_PROBE_DIR/<pid>.log every 2 s

Python imports ``sitecustomize`` at start-up when it is on the path; this one does nothing unless ``GC_PROBE`` or
``GC_PROBE_DIR`` is set. It counts collections and their time per generation through ``gc.callbacks``. A log line:
time, the process's title (Ray names its workers ``ray::ServeReplica:...``), then count and seconds for generations
0, 1 and 2, the thresholds and how many objects are frozen.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
import time
from typing import Any

if os.environ.get("GC_PROBE") or os.environ.get("GC_PROBE_DIR"):
    _totals = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
    _began = [0.0]

    def _timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _began[0] = time.perf_counter()
        else:
            done = _totals[info["generation"]]
            done[0] += 1
            done[1] += time.perf_counter() - _began[0]

    gc.callbacks.append(_timed)

    def _line() -> str:
        counts = "\t".join(f"{n}\t{s:.4f}" for n, s in _totals.values())
        with open("/proc/self/cmdline", "rb") as f:
            title = f.read().split(b"\0")[0].decode(errors="replace")[:80]
        return f"{time.time():.1f}\t{title}\t{counts}\t{gc.get_threshold()}\t{gc.get_freeze_count()}\n"

    if os.environ.get("GC_PROBE"):
        atexit.register(lambda: sys.stderr.write("gc probe: " + _line()))
    if os.environ.get("GC_PROBE_DIR"):
        def _write_every_2_s() -> None:
            path = os.path.join(os.environ["GC_PROBE_DIR"], f"{os.getpid()}.log")
            while True:
                time.sleep(2)
                with open(path, "a") as f:
                    f.write(_line())

        threading.Thread(target=_write_every_2_s, name="gc-probe", daemon=True).start()
