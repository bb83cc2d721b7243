"""session-mgr: a user's sessions (device, address, user agent, last use), kept in sharded entities.

Routes in :mod:`.views`; logic in :mod:`.service`; ``background`` forgets erased users' sessions.
"""

from .service import forget_erased_users, forget_user, sessions_client
from .views import router

background = [forget_erased_users]

__all__ = ["background", "forget_user", "router", "sessions_client"]
