"""puabo-blac-risk-assessment: credit-risk models trained as Ray jobs, online and batch scoring with reasons.

Routes in :mod:`.views`; logic in :mod:`.service`; the model itself (design matrix, calibrated
logit with stumps, forest, reasons) in :mod:`nexus_ray.compute.risk`; the Ray jobs in :mod:`nexus_ray.jobs.train_risk`
and :mod:`nexus_ray.jobs.score_risk`. Other namespaces call ``exports`` with
:func:`nexus_ray.deployments.kit.calls.call`::

    score = await call("puabo-blac-risk-assessment", "score", application={...})

``application`` is a dict with the keys of :class:`.models.Application` (listed in
:mod:`.models`); a bad one raises a 422 naming the field. The answer is a :class:`.models.RiskScore`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from nexus_ray.edge.errors import field_name
from nexus_ray.exceptions import ValidationFailed

from . import service
from .models import Application, RiskScore
from .views import router

background = [service.load_active_model]


async def score(*, application: dict[str, Any]) -> RiskScore:
    """Probability of default, band and reasons of ``application`` (keys: :class:`.models.Application`)."""
    try:
        app = Application.model_validate(application)
    except ValidationError as exc:
        errors = [{"field": field_name(("call", "application", *e["loc"]))[1], "in": "call", "message": e["msg"],
                   "type": e["type"]} for e in exc.errors()]
        fields = ", ".join(sorted({e["field"] for e in errors}))
        raise ValidationFailed(f"invalid fields: {fields}", extra={"errors": errors}) from None
    return await service.score(application=app)


#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"score": score}

__all__ = ["exports", "router"]
