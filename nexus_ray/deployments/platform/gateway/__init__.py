"""backend-api: the front door's service directory with live health, the platform notice, the OpenAPI index,
the user's home (:mod:`.home`)."""

from .views import router

__all__ = ["router"]
