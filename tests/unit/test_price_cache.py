"""The catalog's cache of prices (``search_index.PriceCache``): what it keeps, what a change drops, what it never
keeps, and its bound."""

from __future__ import annotations

from nexus_ray.deployments.commerce.catalog.search_index import PriceCache


def read(pid: str, *skus: str, usd: int = 100) -> dict:
    doc = {"_id": pid, "title": pid, "variants": [{"sku": s, "prices": {"USD": usd}} for s in skus]}
    return {v["sku"]: (doc, v) for v in doc["variants"]}


def test_a_read_is_kept_and_a_drop_of_its_product_removes_all_its_skus():
    cache = PriceCache()
    cache.fill(read("p1", "a", "b") | read("p2", "c"), cache.generation)
    found, missing = cache.get(["a", "c", "z"])
    assert set(found) == {"a", "c"} and missing == ["z"]
    cache.drop("p1")
    found, missing = cache.get(["a", "b", "c"])
    assert set(found) == {"c"} and missing == ["a", "b"]


def test_a_read_that_overlapped_a_drop_is_not_kept():
    cache = PriceCache()
    began = cache.generation
    cache.drop("p9")  # any product changed while the read was out: its answer may predate the change
    cache.fill(read("p1", "a"), began)
    assert cache.get(["a"]) == ({}, ["a"])
    cache.fill(read("p1", "a"), cache.generation)
    assert set(cache.get(["a"])[0]) == {"a"}


def test_the_cache_holds_at_most_its_bound_of_products_the_oldest_going_first():
    cache = PriceCache(max_products=2)
    for pid in ("p1", "p2", "p3"):
        cache.fill(read(pid, f"{pid}-x", f"{pid}-y"), cache.generation)
    assert len(cache) == 2
    found, missing = cache.get(["p1-x", "p2-x", "p3-y"])
    assert set(found) == {"p2-x", "p3-y"} and missing == ["p1-x"]
    off = PriceCache(max_products=0)
    off.fill(read("p1", "a"), off.generation)
    assert len(off) == 0 and off.get(["a"]) == ({}, ["a"])
