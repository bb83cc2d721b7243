"""One package per namespace, one module per service; see :mod:`nexus_ray.deployments.app`."""
