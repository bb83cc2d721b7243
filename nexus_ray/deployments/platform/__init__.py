"""Services of the platform namespace (see nexus_ray.catalog)."""
