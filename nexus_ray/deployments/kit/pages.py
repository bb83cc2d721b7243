"""One page shape for every list endpoint: keyset pagination with an opaque cursor; fetch-one-or-404.

A list route takes ``page: PageRequest = page_params()`` and returns ``Page[XRead]``::

    @router.get("/things", response_model=Page[ThingRead])
    async def list_things(page: PageRequest = page_params(), ...):
        rows = await pg.fetch("... WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
                              page.after_value(0), page.fetch_limit)
        return page.of(rows, key=lambda r: (r["id"],))

The cursor is the sort key of the last item shown (base64url JSON), so a page is as fast
as the first one and rows added meanwhile are neither skipped nor repeated. ``limit`` is
bounded (422 naming ``limit`` past the bound, 422 naming ``cursor`` for a cursor that is
not one of ours).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from fastapi import Depends, Query
from pydantic import BaseModel, Field

from nexus_ray.exceptions import NotFound, ValidationFailed

T = TypeVar("T")
R = TypeVar("R")


class Page(BaseModel, Generic[T]):
    """One page of a list: its items, and the cursor of the next page (null on the last)."""

    items: list[T]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next page; null when this is the last page."
    )


def encode_cursor(key: Sequence[Any]) -> str:
    """The opaque cursor of a sort key (JSON-able values)."""
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> list[Any]:
    """The sort key inside ``cursor``; 422 naming ``cursor`` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None
    if not isinstance(key, list) or not key:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
    return key


@dataclass(frozen=True)
class PageRequest:
    """What a list route was asked for: how many items, after which sort key (the cursor's)."""

    limit: int
    cursor: str | None = None

    @property
    def after(self) -> list[Any] | None:
        """The sort key of the last item already shown; 422 naming ``cursor`` for a cursor that is not one.

        Decoded on use, in the service, not while FastAPI resolves the route's parameters: a bad
        cursor must not answer 422 before the guard answers 401 to a caller without credentials.
        """
        return decode_cursor(self.cursor) if self.cursor else None

    @property
    def fetch_limit(self) -> int:
        """Rows to fetch: one more than the page, to know whether another page follows."""
        return self.limit + 1

    def after_value(self, index: int = 0, default: Any = None) -> Any:
        """Component ``index`` of the cursor's sort key, or ``default`` on the first page."""
        after = self.after
        if after is None:
            return default
        if index >= len(after):
            raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
        return after[index]

    def of(self, rows: Sequence[R], *, key: Callable[[R], Sequence[Any]],
           item: Callable[[R], Any] | None = None) -> Page[Any]:
        """The page of ``rows`` (fetched with :attr:`fetch_limit`), its cursor made from ``key`` of the last item."""
        shown = list(rows[: self.limit])
        more = len(rows) > self.limit
        items = [item(r) for r in shown] if item is not None else shown
        return Page(items=items, next_cursor=encode_cursor(key(shown[-1])) if more and shown else None)


def page_params(*, default: int = 50, maximum: int = 500) -> Any:
    """Dependency: ``limit`` (1..maximum) and ``cursor`` query parameters as a :class:`PageRequest`."""

    def params(
        limit: int = Query(default, ge=1, le=maximum, description=f"Items per page (at most {maximum})."),
        cursor: str | None = Query(None, max_length=512, description="`next_cursor` of the previous page."),
    ) -> PageRequest:
        return PageRequest(limit=limit, cursor=cursor or None)

    return Depends(params)


async def one_or_404(found: Awaitable[T | None] | T | None, what: str, ident: Any) -> T:
    """``found`` (awaited if need be), or 404 naming ``what`` and ``ident`` when it is None."""
    value = await found if isinstance(found, Awaitable) else found
    if value is None:
        raise NotFound(f"{what} {ident} not found")
    return value
