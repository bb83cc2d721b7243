"""chat-service: real-time chat rooms held by sharded entities, history in the document store.

Routes in :mod:`.views` (HTTP) and :mod:`.live` (the WebSocket protocol, resume and fan-out);
logic in :mod:`.service`; the room entity in :mod:`nexus_ray.actors.chat_room`.
"""

from .service import home_summary, rooms_client
from .views import router

#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"home_summary": home_summary}

__all__ = ["exports", "home_summary", "rooms_client", "router"]
