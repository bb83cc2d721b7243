"""Route dependencies for who may act on what, beyond scopes.

``self_or_admin(SCOPES.write, SCOPES.admin)`` admits the user named by the route's
``{user_id}`` path parameter, or a holder of the admin scope; everyone else gets 403.
It is the dependency form of :func:`nexus_ray.edge.security.ensure_self_or`, so a route
does not open with the same check as its first line.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request

from nexus_ray.edge.security import Principal, authorize, ensure_self_or


def self_or_admin(
    scope: str, admin_scope: str, *, param: str = "user_id", canonical: Callable[[str], str] | None = None
) -> Any:
    """Dependency: a principal holding ``scope`` that is the path's ``param`` itself or holds ``admin_scope``.

    ``canonical`` puts the path's value in the form subjects take (:func:`uuid_id` for UUID ids,
    so an upper-case id in the path is still the caller's own). A value it refuses is left to
    the route's own validation of the same parameter, which answers 422 naming it before the
    route runs -- so ``canonical`` must refuse only what that validation refuses.
    """
    guard = authorize(scope)

    async def check(request: Request, principal: Principal = guard) -> Principal:
        value = str(request.path_params[param])
        if canonical is not None:
            try:
                value = canonical(value)
            except ValueError:
                return principal  # malformed: the route's validation refuses the request (422)
        ensure_self_or(principal, value, admin_scope)
        return principal

    return Depends(check)


def uuid_id(value: str) -> str:
    """The canonical text of a UUID path id (for ``self_or_admin(..., canonical=uuid_id)``)."""
    return str(uuid.UUID(value))
