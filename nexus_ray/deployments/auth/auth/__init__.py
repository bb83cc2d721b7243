"""auth-service (legacy): username and password login (argon2id) to an opaque session token kept
in Redis, logout, password change, lockout and per-address throttling of failed logins, and the
exchange of a legacy session for a v2 access token.

``passwords`` (policy, argon2id), ``sessions`` (the Redis session store), ``lockout``,
``service`` (logic; :func:`service.session_principal` lets the edge accept legacy tokens),
``views`` (routes under ``/auth/v1/auth``).
"""

from nexus_ray.deployments.auth.auth.service import session_principal, verify_credentials
from nexus_ray.deployments.auth.auth.views import router

__all__ = ["router", "session_principal", "verify_credentials"]
