"""Counts what a piece of work sends to PostgreSQL: the statements a batch handler promises to keep to a few."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from nexus_ray.stores import postgres

#: What asyncpg sends of its own the first time a connection meets a type (an array of uuid, of jsonb...): its look-up
#: of the type, with JIT turned off around it. Once a connection, so not the work's.
_ASYNCPG_OWN = ("typeinfo_tree", "set_config('jit'")


async def sent_in_transaction(work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> list[str]:
    """Runs ``work`` on a connection in a transaction of its own (committed after); the statements it sent, in
    order (the transaction's own BEGIN and COMMIT are not among them, nor asyncpg's look-ups of types)."""
    sent: list[str] = []

    def logged(record: Any) -> None:
        if not any(mark in record.query for mark in _ASYNCPG_OWN):
            sent.append(record.query)

    async with postgres.transaction() as conn:
        conn.add_query_logger(logged)
        try:
            await work(conn)
        finally:
            conn.remove_query_logger(logged)
    return sent
