"""Services of the finance namespace (see nexus_ray.catalog)."""
