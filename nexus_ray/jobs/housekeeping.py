"""Housekeeping: purge the expired rows the platform keeps (the scheduler's first schedule).

``python -m nexus_ray.jobs.housekeeping [--run-retention-days N] [--message-retention-days N]
[--event-retention-days N]``

Deletes finished scheduler runs and finished notification messages older than their retention, and
published outbox events, consumers' records of processed events and dead letters replayed longer ago
than ``event_retention_days`` (:func:`nexus_ray.stores.events.purge_events`). Idempotent: a second run
finds nothing.
Ends with a ``{"result": {...}}`` line counting what each purge removed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from nexus_ray.config import get_settings
from nexus_ray.runtime.jobs import report
from nexus_ray.stores import events, postgres


async def purge(*, run_retention_days: int, message_retention_days: int,
                event_retention_days: int | None = None) -> dict[str, int]:
    from nexus_ray.deployments.platform.notifications.service import purge_messages
    from nexus_ray.deployments.platform.scheduler.service import purge_runs

    counts: dict[str, Any] = {}
    async with postgres.transaction() as conn:
        counts["scheduler_runs"] = await purge_runs(conn=conn, older_than_days=run_retention_days)
    report(progress=0.5, **counts)
    async with postgres.transaction() as conn:
        counts["notification_messages"] = await purge_messages(conn=conn, older_than_days=message_retention_days)
    report(progress=0.7, **counts)
    async with postgres.transaction() as conn:
        counts.update(await events.purge_events(
            conn=conn, older_than_days=get_settings().event_retention_days if event_retention_days is None
            else event_retention_days))
    await postgres.close_pool()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nexus_ray.jobs.housekeeping", description=__doc__.splitlines()[0])
    parser.add_argument("--run-retention-days", type=int, default=90, help="Keep finished runs this long.")
    parser.add_argument("--message-retention-days", type=int, default=30, help="Keep sent/dead messages this long.")
    parser.add_argument("--event-retention-days", type=int, default=None,
                        help="Keep published events and consumers' records this long (default: event_retention_days).")
    args = parser.parse_args(argv)
    counts = asyncio.run(purge(run_retention_days=args.run_retention_days,
                               message_retention_days=args.message_retention_days,
                               event_retention_days=args.event_retention_days))
    report(result=counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
