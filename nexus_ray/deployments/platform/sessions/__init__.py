"""session-mgr: a user's sessions (device, address, user agent, last use), kept in sharded entities.

Routes in :mod:`.views`; logic in :mod:`.service`; ``background`` forgets erased users' sessions.
"""

from .service import forget_erased_users, forget_user, revoke_all_sessions, sessions_client
from .views import router

background = [forget_erased_users]

#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"revoke_all_sessions": revoke_all_sessions, "forget_user": forget_user}

__all__ = ["background", "exports", "forget_user", "router", "sessions_client"]
