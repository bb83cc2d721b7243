"""Services of the auth namespace (see nexus_ray.catalog)."""
