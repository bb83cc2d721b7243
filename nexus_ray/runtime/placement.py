"""Where each service runs: in its namespace's ingress (the default) or in a deployment of its own.

A laptop runs nine ingress replicas, not 44 (DESIGN.md); a service that needs its own
replicas, CPUs or GPUs is *dedicated*: :data:`nexus_ray.catalog.DEDICATED` names the
catalog's choices and the setting ``dedicated_services`` adds or overrides them, e.g.
``NEXUS_DEDICATED_SERVICES='{"ledger-mgr": {"min_replicas": 2, "max_replicas": 4, "num_cpus": 1}}'``.
The generated Serve config follows: a dedicated service gets one application per API
version, ``<namespace>-<slug>-<version>`` with route prefix ``/<namespace>/<version>/<slug>``
(Serve routes the longest matching prefix, so its paths stay what they were), and its
namespace's ingress stops mounting it. Its code does not change.
"""

from __future__ import annotations

from nexus_ray.catalog import DEDICATED, Placement, Service, service
from nexus_ray.config import get_settings


def ingress_deployment(namespace: str) -> str:
    """Name of a namespace's ingress deployment inside its Serve application."""
    return f"{namespace}-ingress"


def dedicated() -> dict[str, Placement]:
    """Every dedicated service with its placement: the catalog's, then the setting's."""
    found = dict(DEDICATED)
    for name, spec in get_settings().dedicated_services.items():
        service(name)  # KeyError for a name the catalog does not know
        found[name] = Placement(
            min_replicas=int(spec.get("min_replicas", 1)),
            max_replicas=int(spec.get("max_replicas", spec.get("min_replicas", 1))),
            num_cpus=float(spec.get("num_cpus", 0.0)),
            num_gpus=float(spec.get("num_gpus", 0.0)),
        )
    return found


def service_app(s: Service, version: str) -> str:
    """Name of the Serve application (and of its one deployment) of a dedicated service's version."""
    return f"{s.namespace}-{s.slug}-{version}"
