"""Services of the ai namespace (see nexus_ray.catalog)."""
