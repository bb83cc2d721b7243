"""Batch entry points run as Ray jobs (``ray job submit``, the scheduler, or an API that starts one).

Each module here is one job: ``python -m nexus_ray.jobs.<name> [--options]``. A job

* connects with ``ray.init()`` (no address: inside a submitted job Ray provides it), so the same
  entry point runs on a laptop head or a multi-node cluster without change;
* does its work with :mod:`nexus_ray.compute` tasks and writes results to the platform's stores;
* reports progress by printing one JSON object per line (``{"progress": 0.42, ...}``), which
  :func:`nexus_ray.runtime.jobs.progress` reads back from the job's logs, and ends with a final
  ``{"result": {...}}`` line;
* exits non-zero on failure, so Ray marks the job FAILED.

Submit one with :func:`nexus_ray.runtime.jobs.submit`; never shell out to ``ray job submit``.
"""
