"""Route dependencies for who may act on what, beyond scopes.

``self_or_admin(SCOPES.write, SCOPES.admin)`` admits the user named by the route's
``{user_id}`` path parameter, or a holder of the admin scope; everyone else gets 403.
It is the dependency form of :func:`nexus_ray.edge.security.ensure_self_or`, so a route
does not open with the same check as its first line.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from nexus_ray.edge.security import Principal, authorize, ensure_self_or


def self_or_admin(scope: str, admin_scope: str, *, param: str = "user_id") -> Any:
    """Dependency: a principal holding ``scope`` that is the path's ``param`` itself or holds ``admin_scope``."""
    guard = authorize(scope)

    async def check(request: Request, principal: Principal = guard) -> Principal:
        ensure_self_or(principal, str(request.path_params[param]), admin_scope)
        return principal

    return Depends(check)
