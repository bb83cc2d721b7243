"""Services of the commerce namespace (see nexus_ray.catalog)."""
