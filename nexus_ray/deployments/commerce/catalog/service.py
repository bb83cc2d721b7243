"""product-catalog's logic: products in the document store, searched without a text index.

Model
-----
A **product** is one document: title, description, brand, a category path, key/value
attributes, and one or more **variants** (SKU, a price per currency in minor units, a tax
category, a weight). A product belongs to the merchant who created it; it is a ``draft``
(seen only by that merchant and catalog administrators), ``active`` (seen and searched by
every shopper) or ``archived`` (seen only by its merchant and administrators; its SKUs stay
reserved so that old orders still name them). Only the merchant (write scope) or an
administrator (admin scope) changes a product.

Every change is one document written whole, so it is atomic without a transaction, and is
conditional on the ``version`` the caller read (``find_one_and_replace`` filtered on
``{_id, version}``): a stale version is a 409, never a lost update. SKUs are unique across the
catalog by a unique multikey index on the product's ``skus`` array (a clash is a 409 naming
the SKU); within one product the schema refuses a SKU given twice.

Search: secantusdb has no text index
------------------------------------
The embedded document store (secantusdb 0.7) refuses text indexes and ``$text``; it does have
multikey and compound indexes, ``$in``/``$all`` on arrays, ``$facet``, ``$bucket``,
``$setIntersection`` and ``explain``. So the catalog analyses its own text
(:mod:`.text`) on every write and keeps, in the product document itself, the terms of the
title (``tt``) and all of its searchable terms (``terms``: title, description, brand and
category), with a multikey index on ``terms``. Being in the same document, the terms are
written in the same atomic write as the product: the index is never behind the data.

A query's terms (at most eight) select the products that have **any** of them
(``terms: {$in: ...}``, an index scan on ``terms``) among the active ones that pass the
filters (category path, brands, price range in a currency, attributes). Each hit is scored in
the store::

    score = 100 * (query terms the product has) + 10 * (query terms in its title)

so a product with every term comes before one with some (a product matches at most eight
terms, so the title bonus, at most 80, never lifts it past one with more terms), and among
those, title matches come before description matches. Ties go by id. One ``$facet`` stage
computes, over the same filtered set, the page (after the keyset cursor ``[score, id]``), the
total, and the facet counts: categories (every ancestor path of each hit), brands, price bands
of the product's lowest variant price in the asked currency, and attribute values. The
facets are those of the filtered result itself (a brand filter leaves one brand facet).

Without a query every active product that passes the filters is a hit, with score 0, in id
order.

Measured (bench/catalog_search.py, bench/RESULTS.md): on 100,000 products secantusdb's planner
scans the collection for this ``$match`` (seconds a query on the shared machine), and forcing
``terms_1`` with a hint is far worse for common words (its index FETCH costs milliseconds per
document: 159 s for one query), so no hint is given. The store, not the pipeline, sets the
latency. So searches are answered by an in-memory index that every serving process builds from
the store and keeps current from its change stream (:mod:`.search_index`: posting arrays per term,
facet columns per field, counted with numpy), with exactly this pipeline's semantics and result
shape; this pipeline answers while that index is not ready (at start, or rebuilding after its
stream failed) and is the reference the tests compare it with (``search(source=...)``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from nexus_ray.deployments.kit.pages import PageRequest, encode_cursor
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.edge.errors import field_name
from nexus_ray.exceptions import Conflict, Forbidden, NotFound, ServiceUnavailable, ValidationFailed
from nexus_ray.stores import documents
from nexus_ray.stores.together import GroupCommit

from .models import (
    CartIn,
    FacetCount,
    Facets,
    PriceBand,
    PricedCart,
    PricedLine,
    ProductCreate,
    ProductRead,
    ProductUpdate,
    SearchHit,
    SearchPage,
    VariantIn,
)
from .search_index import TERM_WEIGHT, TITLE_WEIGHT, Variants, replica
from .settings import CatalogSettings
from .text import query_terms, terms

#: The indexes of the products collection: (keys, options). ``explain`` shows the search using ``terms_1``.
INDEXES: tuple[tuple[list[tuple[str, int]], dict[str, Any]], ...] = (
    ([("skus", ASCENDING)], {"unique": True, "name": "skus_unique"}),
    ([("terms", ASCENDING)], {"name": "terms_1"}),
    ([("categories", ASCENDING)], {"name": "categories_1"}),
    ([("brand", ASCENDING)], {"name": "brand_1"}),
    ([("merchant", ASCENDING), ("_id", ASCENDING)], {"name": "merchant_1__id_1"}),
)

_ready: dict[int, asyncio.Lock] = {}
_indexed: set[int] = set()


async def products() -> AsyncCollection:
    """The products collection, its indexes created on first use by this process."""
    client = documents.mongo_client()
    coll = documents.database()[settings_of(CatalogSettings).catalog_collection]
    key = id(client)
    if key not in _indexed:
        lock = _ready.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in _indexed:
                for keys, options in INDEXES:
                    await coll.create_index(keys, **options)
                _indexed.add(key)
    return coll


def _now() -> datetime:
    return datetime.now(UTC)


# -- documents ------------------------------------------------------------------------------------


def ancestors(category: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b", "a/b/c"]``: a product is found under each of its category's ancestors."""
    parts = category.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _derived(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields search reads, computed from the product's own: written with it, in the same document."""
    variants = doc["variants"]
    title_terms = terms(doc["title"])
    other = terms(" ".join([doc["description"], doc["brand"], doc["category"].replace("/", " ").replace("-", " ")]))
    from_price: dict[str, int] = {}
    for v in variants:
        for cur, amount in v["prices"].items():
            from_price[cur] = min(amount, from_price.get(cur, amount))
    return {
        "tt": title_terms,
        "terms": list(dict.fromkeys(title_terms + other)),
        "categories": ancestors(doc["category"]),
        "attr_kv": [f"{k}={v}" for k, v in sorted(doc["attributes"].items())],
        "skus": [v["sku"] for v in variants],
        "from_price": from_price,
    }


def _priced_if_active(doc: dict[str, Any]) -> None:
    if doc["status"] == "active":
        for i, v in enumerate(doc["variants"]):
            if not v["prices"]:
                raise ValidationFailed.for_field(f"variants[{i}].prices",
                                                 "an active product needs a price in at least one currency")


def _variant(v: VariantIn) -> dict[str, Any]:
    return {"sku": v.sku, "prices": dict(v.prices), "tax_category": v.tax_category, "weight_g": v.weight_g,
            "attributes": dict(v.attributes)}


def _read(doc: dict[str, Any]) -> ProductRead:
    return ProductRead.model_validate({**doc, "id": doc["_id"]})


def _sku_conflict(err: DuplicateKeyError) -> Conflict:
    sku = ((err.details or {}).get("keyValue") or {}).get("skus")
    what = f"SKU {sku}" if sku else "a SKU"
    return Conflict(f"{what} already belongs to another product", extra={"field": "variants", "sku": sku})


def _visible(doc: dict[str, Any], caller: str, privileged: bool) -> bool:
    return doc["status"] == "active" or privileged or doc["merchant"] == caller


# -- products -------------------------------------------------------------------------------------


def new_document(*, caller: str, body: ProductCreate, product_id: str | None = None) -> dict[str, Any]:
    """The stored document of a new product, with the fields search reads (the bench loads these in bulk)."""
    now = _now()
    doc: dict[str, Any] = {
        "_id": product_id or str(uuid.uuid4()), "merchant": caller, "status": body.status, "title": body.title,
        "description": body.description, "brand": body.brand, "category": body.category,
        "attributes": dict(body.attributes), "variants": [_variant(v) for v in body.variants],
        "version": 1, "created_at": now, "updated_at": now,
    }
    doc.update(_derived(doc))
    return doc


async def create_product(*, caller: str, body: ProductCreate) -> ProductRead:
    doc = new_document(caller=caller, body=body)
    _priced_if_active(doc)
    coll = await products()
    try:
        await coll.insert_one(doc)
    except DuplicateKeyError as err:
        raise _sku_conflict(err) from None
    replica.observe(doc)
    return _read(doc)


async def _fetch(product_id: str, caller: str, privileged: bool) -> dict[str, Any]:
    doc = await (await products()).find_one({"_id": product_id})
    if doc is None or not _visible(doc, caller, privileged):
        raise NotFound(f"product {product_id} not found")
    return doc


async def _owned(product_id: str, caller: str, privileged: bool) -> dict[str, Any]:
    doc = await _fetch(product_id, caller, privileged)
    if not privileged and doc["merchant"] != caller:
        raise Forbidden("only the product's merchant or a catalog administrator may change it")
    return doc


def _stale(product_id: str, asked: int, current: int) -> Conflict:
    return Conflict(f"product {product_id} is at version {current}, not {asked}: read it again and retry",
                    extra={"field": "version", "current_version": current})


async def get_product(*, product_id: str, caller: str, privileged: bool) -> ProductRead:
    return _read(await _fetch(product_id, caller, privileged))


async def update_product(*, product_id: str, caller: str, privileged: bool, body: ProductUpdate) -> ProductRead:
    doc = await _owned(product_id, caller, privileged)
    if doc["version"] != body.version:
        raise _stale(product_id, body.version, doc["version"])
    changed = body.model_dump(exclude_unset=True, exclude={"version", "variants"})
    new = {k: v for k, v in doc.items() if k in ProductRead.model_fields or k in ("_id", "merchant")}
    new.update(changed)
    if body.variants is not None:
        new["variants"] = [_variant(v) for v in body.variants]
    _priced_if_active(new)
    new.update(_derived(new), version=body.version + 1, updated_at=_now())
    coll = await products()
    try:
        replaced = await coll.find_one_and_replace({"_id": product_id, "version": body.version}, new,
                                                   return_document=ReturnDocument.AFTER)
    except DuplicateKeyError as err:
        raise _sku_conflict(err) from None
    if replaced is None:  # changed (or deleted) since it was read
        current = await coll.find_one({"_id": product_id}, {"version": 1})
        if current is None:
            raise NotFound(f"product {product_id} not found")
        raise _stale(product_id, body.version, current["version"])
    replica.observe(replaced)
    return _read(replaced)


async def delete_product(*, product_id: str, caller: str, privileged: bool, version: int) -> None:
    doc = await _owned(product_id, caller, privileged)
    if doc["version"] != version:
        raise _stale(product_id, version, doc["version"])
    res = await (await products()).delete_one({"_id": product_id, "version": version})
    if res.deleted_count == 0:
        current = await (await products()).find_one({"_id": product_id}, {"version": 1})
        if current is not None:
            raise _stale(product_id, version, current["version"])
    replica.forget(product_id, version)


async def list_products(*, merchant: str, page: PageRequest) -> Any:
    """A merchant's products (every status), in id order."""
    after = page.after_value(0)
    flt: dict[str, Any] = {"merchant": merchant}
    if after is not None:
        flt["_id"] = {"$gt": str(after)}
    rows = await (await products()).find(flt).sort("_id", ASCENDING).limit(page.fetch_limit).to_list()
    return page.of(rows, key=lambda d: (d["_id"],), item=_read)


# -- search ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchQuery:
    """What a shopper asked for: words, filters, the currency of prices and price bands."""

    q: str = ""
    category: str | None = None
    brands: Sequence[str] = ()
    currency: str = "USD"
    price_min: int | None = None
    price_max: int | None = None
    attributes: Sequence[tuple[str, str]] = ()  # (key, value); values of one key are alternatives

    def match(self) -> dict[str, Any]:
        """The filter of the hits, as one ``$match`` (also what a brute-force count applies)."""
        flt: dict[str, Any] = {"status": "active"}
        words = query_terms(self.q)
        if words:
            flt["terms"] = {"$in": words}
        if self.category:
            flt["categories"] = self.category
        if self.brands:
            flt["brand"] = {"$in": list(dict.fromkeys(self.brands))}
        if self.price_min is not None or self.price_max is not None:
            bounds: dict[str, int] = {}
            if self.price_min is not None:
                bounds["$gte"] = self.price_min
            if self.price_max is not None:
                bounds["$lte"] = self.price_max
            flt[f"from_price.{self.currency}"] = bounds
        by_key: dict[str, list[str]] = {}
        for k, v in self.attributes:
            by_key.setdefault(k, []).append(f"{k}={v}")
        clauses = [{"attr_kv": {"$in": vals}} for vals in by_key.values()]
        if len(clauses) == 1:
            flt.update(clauses[0])
        elif clauses:
            flt["$and"] = clauses
        return flt


def _score(words: list[str]) -> Any:
    if not words:
        return {"$literal": 0}
    return {"$add": [
        {"$multiply": [TERM_WEIGHT, {"$size": {"$setIntersection": ["$terms", words]}}]},
        {"$multiply": [TITLE_WEIGHT, {"$size": {"$setIntersection": ["$tt", words]}}]},
    ]}


def _top(field: str, limit: int, *, unwind: bool = False) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = [{"$unwind": f"${field}"}] if unwind else []
    stages += [{"$group": {"_id": f"${field}", "count": {"$sum": 1}}}, {"$sort": {"count": -1, "_id": 1}}]
    return stages + ([{"$limit": limit}] if limit else [])


def search_pipeline(query: SearchQuery, *, limit: int, after: list[Any] | None, facets: bool,
                    bands: Sequence[int], facet_values: int) -> list[dict[str, Any]]:
    """The one aggregation that answers a search: filter, score, then page + total + facets in one ``$facet``."""
    words = query_terms(query.q)
    price = f"$from_price.{query.currency}"
    hits: list[dict[str, Any]] = []
    if after is not None:
        score, last = after
        hits.append({"$match": {"$or": [{"score": {"$lt": score}}, {"score": score, "_id": {"$gt": last}}]}})
    hits += [{"$sort": {"score": -1, "_id": 1}}, {"$limit": limit},
             {"$project": {"title": 1, "brand": 1, "category": 1, "attributes": 1, "score": 1, "price": price}}]
    branches: dict[str, Any] = {"hits": hits}
    if facets:
        branches |= {
            "total": [{"$count": "n"}],
            "brand": _top("brand", facet_values),
            "category": _top("categories", facet_values, unwind=True),
            # every value here: the top ones per attribute are picked after (a few dozen in all)
            "attributes": _top("attr_kv", 0, unwind=True),
            "price": [{"$match": {f"from_price.{query.currency}": {"$exists": True}}},
                      {"$bucket": {"groupBy": price, "boundaries": [*bands, 2**63 - 1], "default": "other",
                                   "output": {"count": {"$sum": 1}}}}],
        }
    # Only what scoring, paging and faceting read travels past the first stage.
    keep = {"title": 1, "brand": 1, "category": 1, "attributes": 1, "categories": 1, "attr_kv": 1,
            "from_price": 1}
    return [{"$match": query.match()}, {"$project": {**keep, "score": _score(words)}}, {"$facet": branches}]


def _facets(found: dict[str, Any], bands: Sequence[int], facet_values: int) -> Facets:
    by_key: dict[str, list[FacetCount]] = {}
    for row in found["attributes"]:
        key, _, value = str(row["_id"]).partition("=")
        values = by_key.setdefault(key, [])
        if len(values) < facet_values:
            values.append(FacetCount(value=value, count=row["count"]))
    counted = {row["_id"]: row["count"] for row in found["price"]}
    price = [PriceBand(min=lo, max=bands[i + 1] if i + 1 < len(bands) else None, count=counted.get(lo, 0))
             for i, lo in enumerate(bands)]
    return Facets(
        brand=[FacetCount(value=r["_id"], count=r["count"]) for r in found["brand"]],
        category=[FacetCount(value=r["_id"], count=r["count"]) for r in found["category"]],
        price=price, attributes=dict(sorted(by_key.items())))


Source = Literal["auto", "index", "store"]


async def search(*, query: SearchQuery, page: PageRequest, facets: bool | None = None,
                 source: Source = "auto") -> SearchPage:
    """Ranked hits of ``query`` after ``page``'s cursor, with the total and facets (first page by default).

    ``source``: ``auto`` answers from this process's search index when it is ready, else from the store's
    aggregation (the same answer, slower); ``index`` or ``store`` ask for one of them (tests and the bench
    compare them); ``index`` is a 503 while the index is not ready.
    """
    after = page.after
    if after is not None and (len(after) != 2 or not isinstance(after[0], int) or not isinstance(after[1], str)):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this search")
    want_facets = after is None if facets is None else facets
    settings = settings_of(CatalogSettings)
    bands = sorted(set(settings.catalog_price_bands))
    index = replica.usable() if source != "store" else None
    if index is not None:
        found = index.found(words=query_terms(query.q), category=query.category, brands=query.brands,
                            currency=query.currency, price_min=query.price_min, price_max=query.price_max,
                            attributes=query.attributes, limit=page.fetch_limit, after=after, facets=want_facets,
                            bands=bands, facet_values=settings.catalog_facet_values)
        replica.served += 1
    elif source == "index":
        raise ServiceUnavailable("the catalog search index is not ready yet")
    else:
        pipeline = search_pipeline(query, limit=page.fetch_limit, after=after, facets=want_facets, bands=bands,
                                   facet_values=settings.catalog_facet_values)
        found = (await (await (await products()).aggregate(pipeline)).to_list())[0]
    rows = found["hits"]
    shown = rows[: page.limit]
    items = [SearchHit(id=r["_id"], title=r["title"], brand=r["brand"], category=r["category"],
                       attributes=r.get("attributes", {}), score=r["score"], price=r.get("price"),
                       currency=query.currency) for r in shown]
    cursor = encode_cursor([shown[-1]["score"], shown[-1]["_id"]]) if len(rows) > page.limit and shown else None
    if not want_facets:
        return SearchPage(items=items, next_cursor=cursor, total=-1, facets=None)
    total = found["total"][0]["n"] if found["total"] else 0
    return SearchPage(items=items, next_cursor=cursor, total=total,
                      facets=_facets(found, bands, settings.catalog_facet_values))


async def keep_search_index() -> None:
    """Background: build this process's search index from the store and keep it current (see :mod:`.search_index`)."""
    settings = settings_of(CatalogSettings)
    replica.prices.max_products = settings.catalog_price_cache_products
    await replica.run(products, gc_freeze=settings.catalog_search_gc_freeze)


async def explain_search(*, query: SearchQuery) -> dict[str, Any]:
    """The store's plan for a search (the bench records it beside its figures)."""
    settings = settings_of(CatalogSettings)
    coll = await products()
    pipeline = search_pipeline(query, limit=21, after=None, facets=True,
                               bands=sorted(set(settings.catalog_price_bands)),
                               facet_values=settings.catalog_facet_values)
    result: dict[str, Any] = await documents.database().command(
        "explain", {"aggregate": coll.name, "pipeline": pipeline, "cursor": {}}, verbosity="executionStats")
    return result


# -- pricing --------------------------------------------------------------------------------------


async def _look_up(_: None, asks: list[list[str]]) -> list[Variants]:
    """The active products' variants of the SKUs of ``asks`` (carts priced at the same moment), in one query: each
    ask gets the SKU -> (product, variant) map of all of them, read after it was asked."""
    found: Variants = {}
    cursor = (await products()).find({"skus": {"$in": sorted({sku for ask in asks for sku in ask})},
                                       "status": "active"}, {"title": 1, "variants": 1})
    async for doc in cursor:
        for v in doc["variants"]:
            found[v["sku"]] = (doc, v)
    return [found] * len(asks)


#: The SKU look-ups of carts priced at the same moment, read together.
_LOOKUPS: GroupCommit[None, list[str], Variants] = GroupCommit(_look_up)


async def _variants(skus: list[str]) -> Variants:
    """The SKUs' products and variants: from this process's cache of prices while the change stream keeps it
    (:class:`~.search_index.PriceCache`), the rest read from the store (and kept)."""
    cache = replica.price_cache()
    if cache is None:
        return await _LOOKUPS.submit(None, skus)
    found, missing = cache.get(skus)
    if missing:
        generation = cache.generation
        read = await _LOOKUPS.submit(None, missing)
        cache.fill(read, generation)
        found.update(read)
    return found


async def price_lines(*, lines: Sequence[dict[str, Any]], currency: str) -> PricedCart:
    """The cart priced in ``currency``: each SKU's variant price times its quantity; 422 naming each bad line."""
    try:
        cart = CartIn.model_validate({"lines": list(lines), "currency": currency})
    except ValidationError as err:  # named as the edge names a body's fields: lines[0].quantity
        errors = [{"field": field_name(("body", *e["loc"]))[1], "message": e["msg"], "type": e["type"]}
                  for e in err.errors()]
        raise ValidationFailed("; ".join(f"{e['field']}: {e['message']}" for e in errors),
                               extra={"errors": errors}) from None
    found = await _variants(list(dict.fromkeys(line.sku for line in cart.lines)))
    errors = []
    priced = []
    for i, line in enumerate(cart.lines):
        hit = found.get(line.sku)
        if hit is None:
            errors.append({"field": f"lines[{i}].sku", "message": f"no product sells SKU {line.sku}",
                           "type": "unknown_sku"})
            continue
        doc, variant = hit
        unit = variant["prices"].get(cart.currency)
        if unit is None:
            errors.append({"field": f"lines[{i}].sku", "message": f"SKU {line.sku} has no price in {cart.currency}",
                           "type": "no_price"})
            continue
        priced.append(PricedLine(sku=line.sku, product_id=doc["_id"], name=doc["title"], quantity=line.quantity,
                                 unit_price=unit, amount=unit * line.quantity, tax_category=variant["tax_category"],
                                 weight_g=variant["weight_g"]))
    if errors:
        raise ValidationFailed("; ".join(f"{e['field']}: {e['message']}" for e in errors), extra={"errors": errors})
    return PricedCart(currency=cart.currency, lines=priced, total=sum(p.amount for p in priced))

