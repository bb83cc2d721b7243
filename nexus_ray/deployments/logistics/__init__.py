"""Services of the logistics namespace (see nexus_ray.catalog)."""
