"""The Serve config of the platform, generated from the catalog.

``cluster/serve_config.yaml`` is this output, checked in so that plain
``serve deploy cluster/serve_config.yaml`` works on any cluster where the package is
installed; a test keeps the two equal (``nexus serve-config --write`` regenerates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nexus_ray.catalog import DEDICATED, NAMESPACES, PLACEMENT, Placement, service
from nexus_ray.runtime.placement import dedicated, ingress_deployment, service_app

CONFIG_PATH = Path(__file__).resolve().parents[2] / "cluster" / "serve_config.yaml"
IMPORT_PATH = "nexus_ray.deployments.ingress:app_builder"
HEADER = "# Generated from nexus_ray/catalog.py by `nexus serve-config --write`; do not edit by hand.\n"


def _deployment(name: str, p: Placement, max_ongoing_requests: int) -> dict[str, Any]:
    replicas: dict[str, Any]
    if p.max_replicas > p.min_replicas:
        replicas = {"autoscaling_config": {"min_replicas": p.min_replicas, "max_replicas": p.max_replicas,
                                           "target_ongoing_requests": 64}}
    else:
        replicas = {"num_replicas": p.min_replicas}
    actor_options: dict[str, Any] = {"num_cpus": p.num_cpus}
    if p.num_gpus:
        actor_options["num_gpus"] = p.num_gpus
    return {"name": name, **replicas, "max_ongoing_requests": max_ongoing_requests, "ray_actor_options": actor_options}


def build(
    *, host: str = "0.0.0.0", port: int = 8000, max_ongoing_requests: int = 256,
    dedicated_services: dict[str, Placement] | None = None,
) -> dict[str, Any]:
    """The Serve deploy config (ServeDeploySchema): nine namespace applications and one per dedicated service version.

    ``dedicated_services`` defaults to :func:`nexus_ray.runtime.placement.dedicated` (catalog and settings).
    """
    alone = dedicated() if dedicated_services is None else dedicated_services
    apps = []
    for ns in NAMESPACES:
        excluded = sorted(name for name in alone if service(name).namespace == ns)
        args: dict[str, Any] = {"namespace": ns}
        if excluded:
            args["dedicated"] = excluded
        apps.append({
            "name": ns,
            "route_prefix": f"/{ns}",
            "import_path": IMPORT_PATH,
            "args": args,
            "deployments": [_deployment(ingress_deployment(ns), PLACEMENT[ns], max_ongoing_requests)],
        })
    for name, p in sorted(alone.items()):
        s = service(name)
        for version in s.versions:
            app = service_app(s, version)
            apps.append({
                "name": app,
                "route_prefix": s.path(version),
                "import_path": IMPORT_PATH,
                "args": {"namespace": s.namespace, "service": name, "version": version},
                "deployments": [_deployment(app, p, max_ongoing_requests)],
            })
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": host, "port": port, "keep_alive_timeout_s": 30},
        "logging_config": {"encoding": "JSON", "log_level": "INFO", "enable_access_log": False},
        "applications": apps,
    }


def render(config: dict[str, Any] | None = None) -> str:
    """The YAML text of the config, as checked in."""
    # The checked-in file places services as the catalog does, whatever this machine's settings say.
    return HEADER + yaml.safe_dump(config or build(dedicated_services=dict(DEDICATED)), sort_keys=False)


def write(path: Path = CONFIG_PATH) -> Path:
    """Write the generated config to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path
