"""product-catalog's own settings (variables ``NEXUS_CATALOG_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class CatalogSettings(ServiceSettings):
    """Collection name, price bands and facet sizes of the catalog's search."""

    catalog_collection: str = Field(
        "catalog_products", description="The document-store collection that holds the products.")
    catalog_price_bands: list[int] = Field(
        [0, 1000, 2500, 5000, 10000, 25000, 50000, 100000], min_length=2,
        description="Lower bounds (minor units, ascending, from 0) of the price bands counted in search facets; "
        "the last band is open-ended. The same bounds serve every currency.")
    catalog_search_gc_freeze: bool = Field(
        True, description="After building its in-memory search index, a process moves its whole heap out of the "
        "garbage collector's full collections (gc.freeze), which otherwise pause it for hundreds of ms.")
    catalog_facet_values: int = Field(
        30, ge=1, le=500, description="Most values counted per facet (brand, category, each attribute), "
        "the most frequent first.")
    catalog_price_cache_products: int = Field(
        10_000, ge=0, description="Most products whose prices a process keeps from its reads for pricing carts, "
        "each dropped when the change stream brings a change of it (0: every cart reads the store).")
