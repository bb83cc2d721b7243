"""Throughput of notification-service's email: messages per second through real SMTP (the embedded server).

    .venv/bin/python bench/notifications.py [--messages 2000] [--connections 8] [--batch 64]

In-process: starts the embedded stores and SMTP server in a temporary data directory. Two runs:

* ``smtp only``   -- :class:`SmtpEmail` sends ``--messages`` rendered messages, ``--connections`` at once over
  kept-open connections: what the SMTP client and server cost (the dev server writes each to its maildir);
* ``end to end``  -- the same number queued through :func:`service.send_direct` (render, insert), then
  delivered by the service's delivery rounds (take with a lease, send, record ``sent``) until none is left:
  the queue rate and the delivery rate, from first take to last ``sent``.

The SMTP server is one Python process (aiosmtpd) on the same cores as this one, so the figures are a
floor for the client side; every message is checked to have arrived (one maildir file each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mailbox
import sys
import time
import uuid
from pathlib import Path

from scratch import scratch_stores  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def run(args: argparse.Namespace, data_dir: Path) -> dict[str, float]:
    from nexus_ray.deployments.kit.settings import settings_of
    from nexus_ray.deployments.platform.notifications import providers, service
    from nexus_ray.deployments.platform.notifications.models import MessageCreate
    from nexus_ray.deployments.platform.notifications.settings import NotificationSettings
    from nexus_ray.stores import postgres

    s = settings_of(NotificationSettings)
    s.notifications_smtp_connections = args.connections
    s.notifications_batch = args.batch
    await postgres.pool()
    box = mailbox.Maildir(str(data_dir / "smtp" / "maildir"), create=True)
    out: dict[str, float] = {}

    smtp = providers.SmtpEmail()
    html = "<p>Hello,</p><p>we received your order <b>42</b> of 4200 EUR.</p>" * 3
    began = time.perf_counter()
    await asyncio.gather(*(smtp.send(providers.Outgoing(
        id=uuid.uuid4(), channel="email", recipient=f"bench-{i}@shop.test", subject=f"Order {i} received",
        text="Hello, we received your order.\n" * 5, html=html)) for i in range(args.messages)))
    elapsed = time.perf_counter() - began
    smtp.close()
    assert len(box) == args.messages, (len(box), args.messages)
    out["smtp_only_msgs_per_s"] = args.messages / elapsed

    providers.reset()
    began = time.perf_counter()
    for i in range(0, args.messages, 200):
        await asyncio.gather(*(service.send_direct(caller="bench", body=MessageCreate(
            channel="email", to=f"e2e-{n}@shop.test", data={"subject": f"Order {n}", "text": "Hello " * 20}))
            for n in range(i, min(i + 200, args.messages))))
    out["queue_msgs_per_s"] = args.messages / (time.perf_counter() - began)
    began = time.perf_counter()
    while await service.deliver_due():
        pass
    elapsed = time.perf_counter() - began
    p = await postgres.pool()
    sent = await p.fetchval("SELECT count(*) FROM notif_messages WHERE status = 'sent'")
    assert sent == args.messages and len(box) == 2 * args.messages, (sent, len(box))
    out["end_to_end_delivery_msgs_per_s"] = args.messages / elapsed
    providers.reset()
    await postgres.close_pool()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="Messages per run.")
    parser.add_argument("--connections", type=int, default=8, help="SMTP connections (and sends in flight).")
    parser.add_argument("--batch", type=int, default=64, help="Messages one delivery round takes.")
    args = parser.parse_args()
    with scratch_stores("nexus-bench-notif-") as data_dir:
        figures = asyncio.run(run(args, data_dir))
    print(json.dumps({"messages": args.messages, "connections": args.connections, "batch": args.batch,
                      **{k: round(v, 1) for k, v in figures.items()}}, indent=2))


if __name__ == "__main__":
    main()
