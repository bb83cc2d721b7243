"""backend-api's own settings (variables ``NEXUS_HOME_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """How long the home view waits for its sources."""

    home_deadline_s: float = Field(
        0.8, gt=0, le=10, description="Deadline of each source of the home view, seconds; a source that has not "
        "answered by then is marked `timeout` and the view answers without it.",
    )
