"""Services of the specialized namespace (see nexus_ray.catalog)."""
