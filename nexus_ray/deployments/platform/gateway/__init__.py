"""backend-api: the front door's service directory with live health, the platform notice, the OpenAPI index."""

from .views import router

__all__ = ["router"]
