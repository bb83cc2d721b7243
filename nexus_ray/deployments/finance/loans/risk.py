"""The one place loan-processor asks risk-assessment for a score.

``call("puabo-blac-risk-assessment", "score", application=...)`` returns an object (or a
dict) with ``probability_of_default``, ``band`` and ``reasons``. When it cannot answer --
the export is absent (NotFound), the service does not answer in time (503), it refuses the
application (any platform error) or fails (any other exception) -- or its answer lacks those fields, :func:`score`
returns ``None`` with the reason, and the application goes to ``manual_review`` instead of
failing: a reviewer gives the score (``POST /loans/{id}/review``).
"""

from __future__ import annotations

import logging
from typing import Any

from nexus_ray.deployments.kit.calls import call
from nexus_ray.exceptions import NexusError

from .models import RiskScore

log = logging.getLogger(__name__)

RISK_SERVICE = "puabo-blac-risk-assessment"


def _field(result: Any, name: str) -> Any:
    return result[name] if isinstance(result, dict) else getattr(result, name)


async def score(application: dict[str, Any]) -> tuple[RiskScore | None, str]:
    """The model's score of ``application``, or ``(None, why)`` when risk-assessment cannot give one."""
    try:
        result = await call(RISK_SERVICE, "score", application=application)
    except NexusError as exc:
        log.info("risk score unavailable (%s): %s", type(exc).__name__, exc.detail)
        return None, f"risk-assessment unavailable: {exc.detail or type(exc).__name__}"
    except Exception as exc:  # a failure of the model is no reason to fail the application: a person decides
        log.warning("risk score failed: %s", type(exc).__name__)
        return None, f"risk-assessment failed: {type(exc).__name__}"
    try:
        reasons = [str(r) for r in (_field(result, "reasons") or [])]
        found = RiskScore(probability_of_default=float(_field(result, "probability_of_default")),
                          band=str(_field(result, "band")), reasons=reasons, source="model")
    except (KeyError, AttributeError, TypeError, ValueError):
        return None, "risk-assessment answered without probability_of_default, band and reasons"
    if not 0 <= found.probability_of_default <= 1:
        return None, "risk-assessment answered a probability outside 0..1"
    return found, "scored"
