"""Services of the content namespace (see nexus_ray.catalog)."""
