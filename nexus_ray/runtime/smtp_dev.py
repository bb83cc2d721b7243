"""The embedded development SMTP server: accepts mail on 127.0.0.1 and stores each message in a maildir.

Run by :mod:`nexus_ray.runtime.embedded` as a separate process (``python -m nexus_ray.runtime.smtp_dev
--port N --maildir DIR``), like the other embedded servers; it relays nothing and asks no authentication,
as any development server. Each accepted message is one file in ``DIR/new`` (:class:`mailbox.Maildir`),
with the envelope in ``X-Envelope-From``/``X-Envelope-To`` headers prepended.

Three reserved test domains (RFC 2606 ``.test``) make it answer as real servers do when delivery fails
or drags, so clients exercise their real failure paths:

* ``<anything>@reject.test``: ``550 5.1.1`` at RCPT -- a permanent failure;
* ``tempfail-<N>-<tag>@tempfail.test``: ``451 4.3.0`` at RCPT the first N times that address is offered
  (counted since this server started), then accepted -- a transient failure;
* ``slow-<MS>-<tag>@slow.test``: the RCPT answer comes after MS milliseconds (at most 60,000), then the
  address is accepted -- a relay that is slow but works.
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

_TEMPFAIL = re.compile(r"^tempfail-(\d+)-[^@]*@tempfail\.test$", re.IGNORECASE)
_SLOW = re.compile(r"^slow-(\d+)-[^@]*@slow\.test$", re.IGNORECASE)
_SLOWEST_MS = 60_000


class MaildirHandler:
    """aiosmtpd handler: every accepted message into one maildir."""

    def __init__(self, maildir: Path) -> None:
        self.box = mailbox.Maildir(str(maildir), create=True)
        self.offered: Counter[str] = Counter()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        lowered = address.lower()
        if lowered.endswith("@reject.test"):
            return "550 5.1.1 mailbox unavailable"
        failing = _TEMPFAIL.match(lowered)
        if failing is not None:
            self.offered[lowered] += 1
            if self.offered[lowered] <= int(failing.group(1)):
                return "451 4.3.0 temporary failure, try again later"
        dragging = _SLOW.match(lowered)
        if dragging is not None:  # only this session waits: the server goes on answering others
            await asyncio.sleep(min(int(dragging.group(1)), _SLOWEST_MS) / 1000)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or b""
        head = (f"X-Envelope-From: {envelope.mail_from}\r\n"
                f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        self.box.add(head + bytes(content))
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, maildir: Path) -> None:
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="nexus-dev-smtp", data_size_limit=10 * 1024 * 1024), host=host, port=port)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print(f"smtp_dev listening on {host}:{port}, maildir {maildir}", flush=True)
    await stopped.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.maildir))


if __name__ == "__main__":
    main()
