"""user-auth: identity. Users and profiles, email verification, roles and permissions (RBAC)
mapped to the scopes the edge checks, scoped API keys, personal-data export and erasure.

``models`` (schemas), ``service`` (logic; :func:`service.scopes_for` gives the scopes of a
user's tokens), ``mail`` (the provider interface and the in-database mailbox), ``views``
(routes under ``/auth/v1/users``).
"""

from nexus_ray.deployments.auth.users.service import scopes_for
from nexus_ray.deployments.auth.users.views import router

__all__ = ["router", "scopes_for"]
