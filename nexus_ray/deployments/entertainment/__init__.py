"""Services of the entertainment namespace (see nexus_ray.catalog)."""
