"""puabo-nexus-route-optimizer: vehicle routing with capacities and time windows as asynchronous jobs.

Routes in :mod:`.views`; the job store and the runner that solves jobs as Ray tasks in
:mod:`.service`; the solvers, problem format and GeoJSON in :mod:`nexus_ray.compute.vrp`.
``background`` runs each replica's runner.
"""

from __future__ import annotations

from . import service
from .views import router

background = [service.run_jobs_forever]

__all__ = ["background", "router"]
