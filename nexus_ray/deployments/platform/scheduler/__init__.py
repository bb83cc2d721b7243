"""scheduler: persistent cron (in a time zone) and one-off schedules that run Ray jobs or internal tasks,
with run history, a missed-run policy per schedule, and leases so a run is live at most once.

Routes in :mod:`.views`; logic, leases and the planning rules in :mod:`.service`; cron in :mod:`.cron`;
the registry of internal tasks in :mod:`.tasks` (services register theirs with
``nexus_ray.deployments.platform.scheduler.tasks.register``). ``background`` runs this process's
scheduler loop; any number of loops may run (one per replica).
"""

from __future__ import annotations

from . import service
from .views import router

background = [service.run_forever]

__all__ = ["background", "router"]
