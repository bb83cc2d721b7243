"""product-catalog over HTTP on the real document store: ranked search, facets equal to a brute-force count,
keyset pages that cover every hit once, per-currency price filters, unique SKUs, optimistic concurrency, the
``price_lines`` export, and who may write.

Searches are answered by the process's in-memory search index (``search_index.replica``): the module waits
until it is ready and every search through :func:`search` checks that the index answered it. One test
checks that the store's aggregation (the fallback) gives the same answers; others that writes made
outside this process's service (straight into the collection) reach the index through the change stream.

Each test's products live under a category root of their own, so the catalogs of other tests (and of the
authorization sweep) never reach its searches: every search here filters on that root.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

import pytest

from nexus_ray.deployments.commerce.catalog import service
from nexus_ray.deployments.commerce.catalog.search_index import replica
from nexus_ray.deployments.commerce.catalog.text import query_terms, terms
from nexus_ray.deployments.kit.pages import PageRequest

pytestmark = pytest.mark.integration

API = "/commerce/v1/catalog"
SCOPE = "commerce:catalog"
BANDS = [0, 1000, 2500, 5000, 10000, 25000, 50000, 100000]


@pytest.fixture(scope="module", autouse=True)
async def indexed(client, until):
    """The app's background task has built this process's search index (the searches below use it)."""
    await until(lambda: replica.ready, within_s=60)


@pytest.fixture(scope="module")
def merchant(bearer):
    return bearer(f"{SCOPE}:read", f"{SCOPE}:write", subject="merchant-a")


@pytest.fixture(scope="module")
def other_merchant(bearer):
    return bearer(f"{SCOPE}:read", f"{SCOPE}:write", subject="merchant-b")


@pytest.fixture(scope="module")
def shopper(bearer):
    return bearer(f"{SCOPE}:read", subject="shopper-1")


@pytest.fixture(scope="module")
def admin(bearer):
    return bearer(f"{SCOPE}:*", subject="catalog-ops")


def root() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def product(category: str, title: str, description: str = "", *, brand: str = "Acme", skus: list[str] | None = None,
            usd: int = 1999, eur: int | None = None, attributes: dict | None = None, status: str = "active") -> dict:
    prices = {"USD": usd} | ({"EUR": eur} if eur is not None else {})
    return {"title": title, "description": description, "brand": brand, "category": category,
            "attributes": attributes or {}, "status": status,
            "variants": [{"sku": s, "prices": prices, "tax_category": "standard", "weight_g": 250}
                         for s in (skus or [uuid.uuid4().hex[:16]])]}


async def create(client, headers, body) -> dict:
    r = await client.post(f"{API}/products", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


# -- a small generated catalog --------------------------------------------------------------------------------

TITLE_WORDS = ["lamp", "chair", "table", "jacket", "boot", "speaker", "headphone", "kettle", "blanket", "mug",
               "velvet", "oak", "wireless", "leather", "ceramic", "wool", "steel", "vintage", "compact", "classic"]
DESC_WORDS = [*TITLE_WORDS, "durable", "soft", "bright", "quiet", "handmade", "warm", "light", "premium",
              "recycled", "waterproof", "portable", "elegant"]
BRANDS = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Wingtip", "Litware"]
CATEGORIES = ["home/lighting", "home/furniture", "apparel/outerwear", "apparel/footwear", "audio/speakers",
              "audio/headphones", "kitchen"]
ATTRIBUTES = {"color": ["red", "blue", "black", "white", "green"], "size": ["s", "m", "l", "xl"],
              "material": ["cotton", "steel", "oak"]}


def generated_catalog(top: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        attrs = {k: rng.choice(v) for k, v in ATTRIBUTES.items() if rng.random() < 0.7}
        usd = int(rng.lognormvariate(8.3, 1.1))
        body = product(f"{top}/{rng.choice(CATEGORIES)}", " ".join(rng.sample(TITLE_WORDS, rng.randint(2, 4))),
                       " ".join(rng.choices(DESC_WORDS, k=rng.randint(5, 12))),
                       brand=rng.choices(BRANDS, weights=[1 / (j + 1) for j in range(len(BRANDS))])[0],
                       skus=[f"{top}-{i}-{j}" for j in range(rng.randint(1, 3))], usd=usd,
                       eur=usd * 9 // 10 if rng.random() < 0.7 else None, attributes=attrs,
                       status="draft" if rng.random() < 0.1 else "active")
        out.append(body)
    return out


@pytest.fixture(scope="module")
async def catalog(client, merchant):
    """About 240 products under one category root, created through the API; returned as created."""
    top = root()
    bodies = generated_catalog(top, 240, seed=7)
    created = []
    for start in range(0, len(bodies), 24):
        created += await asyncio.gather(*(create(client, merchant, b) for b in bodies[start:start + 24]))
    return top, created


def brute_force(products: list[dict], *, q: str = "", category: str | None = None, brands=(), currency="USD",
                price_min=None, price_max=None, attrs: dict[str, list[str]] | None = None) -> list[tuple[int, str]]:
    """(score, id) of every hit, computed from the products as created, in the order search must return them."""
    words = query_terms(q)
    hits = []
    for p in products:
        if p["status"] != "active":
            continue
        if category and not (p["category"] == category or p["category"].startswith(category + "/")):
            continue
        if brands and p["brand"] not in brands:
            continue
        prices = [v["prices"][currency] for v in p["variants"] if currency in v["prices"]]
        if price_min is not None or price_max is not None:
            if not prices or (price_min is not None and min(prices) < price_min) or (
                    price_max is not None and min(prices) > price_max):
                continue
        if attrs and not all(p["attributes"].get(k) in vals for k, vals in attrs.items()):
            continue
        title = set(terms(p["title"]))
        every = title | set(terms(" ".join([p["description"], p["brand"], p["category"].replace("/", " ")])))
        matched = len(every & set(words))
        if words and not matched:
            continue
        hits.append((100 * matched + 10 * len(title & set(words)), p["id"]))
    return sorted(hits, key=lambda h: (-h[0], h[1]))


def expected_facets(products: list[dict], hits: list[tuple[int, str]], currency="USD") -> dict:
    by_id = {p["id"]: p for p in products}
    chosen = [by_id[i] for _, i in hits]
    cats: Counter = Counter()
    for p in chosen:
        parts = p["category"].split("/")
        cats.update("/".join(parts[: k + 1]) for k in range(len(parts)))
    bands: Counter = Counter()
    for p in chosen:
        prices = [v["prices"][currency] for v in p["variants"] if currency in v["prices"]]
        if prices:
            bands[max(b for b in BANDS if b <= min(prices))] += 1
    attributes: dict[str, Counter] = {}
    for p in chosen:
        for k, v in p["attributes"].items():
            attributes.setdefault(k, Counter())[v] += 1
    return {"brand": dict(Counter(p["brand"] for p in chosen)), "category": dict(cats),
            "price": {b: bands.get(b, 0) for b in BANDS},
            "attributes": {k: dict(c) for k, c in attributes.items()}}


def got_facets(facets: dict) -> dict:
    return {"brand": {f["value"]: f["count"] for f in facets["brand"]},
            "category": {f["value"]: f["count"] for f in facets["category"]},
            "price": {b["min"]: b["count"] for b in facets["price"]},
            "attributes": {k: {f["value"]: f["count"] for f in v} for k, v in facets["attributes"].items()}}


async def search(client, headers, **params) -> dict:
    served = replica.served
    r = await client.get(f"{API}/search", params=params, headers=headers)
    assert r.status_code == 200, r.text
    assert replica.served == served + 1, "the search index did not answer"
    return r.json()


async def every_page(client, headers, limit: int, **params) -> list[dict]:
    items, cursor, pages = [], None, 0
    while True:
        page = await search(client, headers, limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit and pages < 200


# -- search ---------------------------------------------------------------------------------------------------


async def test_all_terms_rank_above_some_and_title_matches_above_description_matches(client, merchant, shopper):
    top = root()
    cat = f"{top}/home"
    both_title = await create(client, merchant, product(cat, "Velvet lamp", "for a reading corner"))
    one_title = await create(client, merchant, product(cat, "Velvet chair", "matches the lamp"))
    none_title = await create(client, merchant, product(cat, "Oak table", "velvet top, lamp included"))
    lamp_title = await create(client, merchant, product(cat, "Lamps", "brass"))
    velvet_desc = await create(client, merchant, product(cat, "Cushion", "crushed velvet"))
    await create(client, merchant, product(cat, "Kettle", "steel"))  # no term: not a hit
    await create(client, merchant, product(cat, "Velvet lamp deluxe", "", status="draft"))  # drafts are not searched

    page = await search(client, shopper, q="velvet lamp", category=top)
    order = [hit["id"] for hit in page["items"]]
    assert order[:3] == [both_title["id"], one_title["id"], none_title["id"]]
    assert order[3:] == [lamp_title["id"], velvet_desc["id"]]
    assert [hit["score"] for hit in page["items"]] == [220, 210, 200, 110, 100]
    assert page["total"] == 5 and page["next_cursor"] is None


@pytest.mark.parametrize("params", [
    {"q": "velvet lamp"},
    {"q": "wireless speaker premium", "brand": ["Northwind", "Contoso"]},
    {"q": "oak", "sub": "home", "price_min": 1000, "price_max": 9000},
    {"attr": ["color:red", "color:blue", "size:m"]},
    {"q": "leather boot jacket", "currency": "EUR", "attr": ["material:oak"]},
])
async def test_facet_counts_equal_a_brute_force_count_over_the_same_filter(client, shopper, catalog, params):
    top, products = catalog
    params = dict(params)
    category = f"{top}/{params.pop('sub')}" if "sub" in params else top
    attrs: dict[str, list[str]] = {}
    for a in params.get("attr", []):
        k, _, v = a.partition(":")
        attrs.setdefault(k, []).append(v)
    hits = brute_force(products, q=params.get("q", ""), category=category, brands=params.get("brand", ()),
                       currency=params.get("currency", "USD"), price_min=params.get("price_min"),
                       price_max=params.get("price_max"), attrs=attrs)
    assert hits, "the filter should select something"
    page = await search(client, shopper, category=category, limit=100, **params)
    assert page["total"] == len(hits)
    assert got_facets(page["facets"]) == expected_facets(products, hits, params.get("currency", "USD"))
    assert [(h["score"], h["id"]) for h in page["items"]] == hits[:100]


async def test_pages_cover_every_hit_once_in_rank_order(client, shopper, catalog):
    top, products = catalog
    for params in ({"q": "velvet oak wireless soft"}, {}):
        expected = brute_force(products, category=top, **params)
        assert len(expected) > 30
        items = await every_page(client, shopper, 30, category=top, **params)
        ids = [h["id"] for h in items]
        assert len(ids) == len(set(ids)), "a hit was shown twice"
        assert [(h["score"], h["id"]) for h in items] == expected
    # later pages carry no facets unless asked; a cursor that is not one is a 422 naming it
    first = await search(client, shopper, q="velvet", category=top, limit=5)
    second = await search(client, shopper, q="velvet", category=top, limit=5, cursor=first["next_cursor"])
    assert first["facets"] is not None and second["facets"] is None
    r = await client.get(f"{API}/search", params={"q": "velvet", "cursor": "bm90LWEtY3Vyc29y"}, headers=shopper)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor"


async def test_price_filter_is_in_the_asked_currency(client, shopper, merchant):
    top = root()
    both = await create(client, merchant, product(top, "Mug", usd=1500, eur=900))
    usd_only = await create(client, merchant, product(top, "Mug", usd=900))
    pricey_eur = await create(client, merchant, product(top, "Mug", usd=900, eur=3000))
    two = product(top, "Mug", usd=5000, skus=[uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]])
    two["variants"][1]["prices"] = {"USD": 800, "EUR": 700}  # the product's price is its lowest variant's
    cheap_variant = await create(client, merchant, two)

    eur = await search(client, shopper, q="mug", category=top, currency="EUR", price_min=500, price_max=1000)
    assert {h["id"] for h in eur["items"]} == {both["id"], cheap_variant["id"]}
    assert {h["id"]: h["price"] for h in eur["items"]} == {both["id"]: 900, cheap_variant["id"]: 700}
    usd = await search(client, shopper, q="mug", category=top, currency="USD", price_min=500, price_max=1000)
    assert {h["id"] for h in usd["items"]} == {usd_only["id"], pricey_eur["id"], cheap_variant["id"]}
    assert sum(b["count"] for b in eur["facets"]["price"]) == 2
    r = await client.get(f"{API}/search", params={"price_min": 10, "price_max": 5}, headers=shopper)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "price_min"


# -- the search index: the store's answers, kept current by the change stream ---------------------------------


def query_of(params: dict, category: str) -> service.SearchQuery:
    return service.SearchQuery(q=params.get("q", ""), category=category, brands=tuple(params.get("brand", ())),
                               currency=params.get("currency", "USD"), price_min=params.get("price_min"),
                               price_max=params.get("price_max"),
                               attributes=tuple(tuple(a.split(":", 1)) for a in params.get("attr", ())))


async def both(query: service.SearchQuery, limit: int = 20, cursor: str | None = None, facets: bool | None = None):
    page = PageRequest(limit=limit, cursor=cursor)
    index = await service.search(query=query, page=page, facets=facets, source="index")
    store = await service.search(query=query, page=page, facets=facets, source="store")
    return index, store


async def test_the_store_pipeline_fallback_gives_the_index_s_answers(catalog):
    top, _ = catalog
    queries = [{"q": "velvet lamp"}, {"q": "wireless speaker premium", "brand": ["Northwind", "Contoso"]},
               {"q": "oak soft", "price_min": 1000, "price_max": 9000, "currency": "EUR"},
               {"attr": ["color:red", "color:blue", "size:m"]}, {"q": "nothing-matches-this"}, {}]
    for params in queries:
        query = query_of(params, top)
        index, store = await both(query, limit=7)
        assert index == store, params
        pages = 0
        while index.next_cursor and pages < 3:  # later pages, with and without facets
            pages += 1
            index, store = await both(query, limit=7, cursor=index.next_cursor, facets=pages == 2)
            assert index == store, (params, pages)
    assert (await both(query_of({}, top), limit=100))[0].total > 100  # the pages above were not all first ones


async def direct_write(doc: dict) -> None:
    """A write by another writer: straight into the collection, not through this process's service."""
    coll = await service.products()
    await coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)


def stored(top: str, title: str, *, version: int, status: str = "active", brand: str = "Umbra", usd: int = 1999,
           color: str = "red", product_id: str | None = None) -> dict:
    from nexus_ray.deployments.commerce.catalog.models import ProductCreate

    body = product(f"{top}/lighting", title, "a stored product", brand=brand, usd=usd, attributes={"color": color})
    doc = service.new_document(caller="another-writer", body=ProductCreate.model_validate({**body, "status": "draft"}),
                               product_id=product_id)
    return {**doc, "status": status, "version": version}


async def found_by_index(top: str, q: str) -> list[str]:
    page = await service.search(query=service.SearchQuery(q=q, category=top), page=PageRequest(limit=20),
                                source="index")
    return [h.id for h in page.items]


async def test_another_writers_changes_reach_the_index_through_the_change_stream(until):
    top = root()
    first = stored(top, "Copper pendant", version=1)
    await direct_write(first)
    pid = first["_id"]
    await until(lambda: found_by_index(top, "pendant"), within_s=20)
    assert await found_by_index(top, "pendant") == [pid]

    # a new version replaces the old one's terms and facets: title, brand, price band, attribute
    await direct_write(stored(top, "Brass sconce", version=2, brand="Lumen", usd=30000, color="blue", product_id=pid))

    async def replaced() -> bool:
        return await found_by_index(top, "sconce") == [pid]

    await until(replaced, within_s=20)
    assert await found_by_index(top, "pendant") == []
    index, store = await both(service.SearchQuery(q="sconce brass copper", category=top))
    assert index == store
    assert index.facets is not None
    assert [(f.value, f.count) for f in index.facets.brand] == [("Lumen", 1)]
    assert index.facets.attributes == {"color": [service.FacetCount(value="blue", count=1)]}
    assert [b.min for b in index.facets.price if b.count] == [25000]
    assert [h.score for h in index.items] == [220]  # brass and sconce, both in the title

    # an older version arriving late changes nothing
    replica.observe(stored(top, "Copper pendant", version=1, product_id=pid))
    assert await found_by_index(top, "sconce") == [pid]

    # archived (or drafted) by the other writer: it leaves the results; deleted: stays out
    await direct_write(stored(top, "Brass sconce", version=3, status="archived", product_id=pid))

    async def gone() -> bool:
        return await found_by_index(top, "sconce") == []

    await until(gone, within_s=20)
    await direct_write(stored(top, "Brass sconce", version=4, product_id=pid))
    await until(replaced, within_s=20)
    await (await service.products()).delete_one({"_id": pid})
    await until(gone, within_s=20)


async def test_a_failed_change_stream_falls_back_to_the_store_and_rebuilds_the_index(client, merchant, shopper,
                                                                                     until):
    top = root()
    before = await create(client, merchant, product(top, "Cork coaster"))
    builds = replica.builds
    await replica.stream.close()  # the stream fails under the index (as when the store restarts)
    await until(lambda: not replica.ready, within_s=10)
    assert replica.price_cache() is None and len(replica.prices) == 0  # pricing reads the store meanwhile
    meanwhile = stored(top, "Cork coaster", version=1)  # written while the index is down: the rebuild has it
    await direct_write(meanwhile)
    page = await service.search(query=service.SearchQuery(q="coaster", category=top), page=PageRequest(limit=5))
    assert {h.id for h in page.items} == {before["id"], meanwhile["_id"]}  # answered meanwhile: by the store
    await until(lambda: replica.ready and replica.builds == builds + 1, within_s=30)
    assert set(await found_by_index(top, "coaster")) == {before["id"], meanwhile["_id"]}


async def test_drafted_or_archived_products_leave_the_results_at_once(client, merchant, shopper):
    top = root()
    kept = await create(client, merchant, product(top, "Linen towel"))
    drafted = await create(client, merchant, product(top, "Linen towel"))
    archived = await create(client, merchant, product(top, "Linen towel"))
    assert len((await search(client, shopper, q="towel", category=top))["items"]) == 3
    for p, status in ((drafted, "draft"), (archived, "archived")):
        r = await client.patch(f"{API}/products/{p['id']}", json={"version": 1, "status": status}, headers=merchant)
        assert r.status_code == 200, r.text
    page = await search(client, shopper, q="towel", category=top)
    assert [h["id"] for h in page["items"]] == [kept["id"]] and page["total"] == 1
    assert page["facets"]["brand"] == [{"value": "Acme", "count": 1}]


# -- products -------------------------------------------------------------------------------------------------


async def test_a_sku_belongs_to_one_product(client, merchant):
    top = root()
    sku = f"{top}-shared"
    first = await create(client, merchant, product(top, "Boot", skus=[sku]))
    r = await client.post(f"{API}/products", json=product(top, "Other boot", skus=[f"{top}-x", sku]), headers=merchant)
    assert r.status_code == 409, r.text
    assert r.json()["sku"] == sku
    second = await create(client, merchant, product(top, "Third boot", skus=[f"{top}-y"]))
    r = await client.patch(f"{API}/products/{second['id']}", headers=merchant, json={
        "version": 1, "variants": [{"sku": sku, "prices": {"USD": 100}, "weight_g": 1}]})
    assert r.status_code == 409, r.text
    r = await client.post(f"{API}/products", json=product(top, "Twice", skus=[f"{top}-z", f"{top}-z"]),
                          headers=merchant)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "variants"
    got = await client.get(f"{API}/products/{first['id']}", headers=merchant)
    assert [v["sku"] for v in got.json()["variants"]] == [sku]


async def test_a_change_from_a_stale_version_is_a_409(client, merchant, shopper):
    top = root()
    p = await create(client, merchant, product(top, "Wool blanket", "warm"))
    r = await client.patch(f"{API}/products/{p['id']}", json={"version": 1, "title": "Merino blanket"},
                           headers=merchant)
    assert r.status_code == 200 and r.json()["version"] == 2
    r = await client.patch(f"{API}/products/{p['id']}", json={"version": 1, "title": "Cotton blanket"},
                           headers=merchant)
    assert r.status_code == 409 and r.json()["current_version"] == 2
    # the accepted change is what search sees: the new title's terms, not the old one's
    assert [h["id"] for h in (await search(client, shopper, q="merino", category=top))["items"]] == [p["id"]]
    assert (await search(client, shopper, q="wool", category=top))["items"] == []
    r = await client.delete(f"{API}/products/{p['id']}", params={"version": 1}, headers=merchant)
    assert r.status_code == 409
    r = await client.delete(f"{API}/products/{p['id']}", params={"version": 2}, headers=merchant)
    assert r.status_code == 204
    assert (await client.get(f"{API}/products/{p['id']}", headers=merchant)).status_code == 404


async def test_bad_input_names_the_field(client, merchant):
    body = product(root(), "Mug")
    body["variants"][0]["prices"] = {"USD": 19.99}
    r = await client.post(f"{API}/products", json=body, headers=merchant)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "variants[0].prices.USD"
    body = product(root(), "Mug")
    body["variants"][0]["prices"] = {}  # a draft may be priced later; an active product may not
    r = await client.post(f"{API}/products", json=body, headers=merchant)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "variants[0].prices"
    draft = await create(client, merchant, {**body, "status": "draft"})
    r = await client.patch(f"{API}/products/{draft['id']}", json={"version": 1, "status": "active"}, headers=merchant)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "variants[0].prices"
    body = product(root(), "Mug", attributes={"Bad Key": "x"})
    r = await client.post(f"{API}/products", json=body, headers=merchant)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "attributes"
    r = await client.post(f"{API}/products", json={**product(root(), "Mug"), "category": "Not/A Path"},
                          headers=merchant)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "category"


# -- price_lines ----------------------------------------------------------------------------------------------


async def test_price_lines_prices_a_cart_and_names_an_unknown_sku(client, merchant, shopper):
    from nexus_ray.deployments.commerce.catalog import exports
    from nexus_ray.exceptions import ValidationFailed

    top = root()
    body = product(top, "Steel kettle", skus=[f"{top}-k1", f"{top}-k2"], usd=3499, eur=2999)
    body["variants"][1].update(tax_category="reduced", weight_g=1200)
    kettle = await create(client, merchant, body)
    ebook = product(top, "Cookbook", skus=[f"{top}-e"], usd=999)
    ebook["variants"][0].update(tax_category="digital", weight_g=0)
    await create(client, merchant, ebook)

    cart = await exports["price_lines"](lines=[{"sku": f"{top}-k2", "quantity": 2}, {"sku": f"{top}-e", "quantity": 1}],
                                        currency="USD")
    assert cart.currency == "USD" and cart.total == 2 * 3499 + 999
    first = cart.lines[0]
    assert (first.sku, first.product_id, first.name, first.quantity, first.unit_price, first.amount,
            first.tax_category, first.weight_g) == (f"{top}-k2", kettle["id"], "Steel kettle", 2, 3499, 6998,
                                                    "reduced", 1200)
    assert cart.lines[1].tax_category == "digital"

    with pytest.raises(ValidationFailed) as err:
        await exports["price_lines"](lines=[{"sku": f"{top}-k1", "quantity": 1}, {"sku": f"{top}-nope", "quantity": 1}],
                                     currency="USD")
    assert [e["field"] for e in err.value.extra["errors"]] == ["lines[1].sku"]
    with pytest.raises(ValidationFailed) as err:  # the cookbook has no EUR price
        await exports["price_lines"](lines=[{"sku": f"{top}-k1", "quantity": 1}, {"sku": f"{top}-e", "quantity": 1}],
                                     currency="EUR")
    assert [e["field"] for e in err.value.extra["errors"]] == ["lines[1].sku"]

    # Carts priced at the same moment are looked up together, and each is still priced (or refused) as its own.
    carts = await asyncio.gather(
        exports["price_lines"](lines=[{"sku": f"{top}-k1", "quantity": 1}], currency="USD"),
        exports["price_lines"](lines=[{"sku": f"{top}-e", "quantity": 4}], currency="USD"),
        exports["price_lines"](lines=[{"sku": f"{top}-k2", "quantity": 1}, {"sku": f"{top}-gone", "quantity": 1}],
                               currency="USD"),
        exports["price_lines"](lines=[{"sku": f"{top}-k2", "quantity": 5}], currency="EUR"),
        return_exceptions=True)
    assert [c.total for c in (carts[0], carts[1], carts[3])] == [3499, 4 * 999, 5 * 2999]
    assert [[ln.sku for ln in c.lines] for c in (carts[0], carts[1], carts[3])] == [[f"{top}-k1"], [f"{top}-e"],
                                                                                    [f"{top}-k2"]]
    assert isinstance(carts[2], ValidationFailed)
    assert [e["field"] for e in carts[2].extra["errors"]] == ["lines[1].sku"]

    r = await client.post(f"{API}/price-lines", headers=shopper, json={
        "currency": "EUR", "lines": [{"sku": f"{top}-k1", "quantity": 3}]})
    assert r.status_code == 200 and r.json()["total"] == 3 * 2999
    r = await client.post(f"{API}/price-lines", headers=shopper, json={
        "currency": "EUR", "lines": [{"sku": f"{top}-unknown", "quantity": 3}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "lines[0].sku"


async def test_carts_priced_again_come_from_the_cache_until_a_change_of_the_product_reaches_this_process(
        client, merchant, until):
    """Pricing keeps what it read (``search_index.PriceCache``) and drops a product when the change stream brings a
    change of it: another writer's new price is charged once the stream delivers it, an archived product is
    refused, and this process's own change is priced at once."""
    from nexus_ray.deployments.commerce.catalog import exports
    from nexus_ray.exceptions import ValidationFailed

    top = root()
    doc = stored(top, "Slate coaster", version=1, usd=1200)
    await direct_write(doc)
    sku = doc["variants"][0]["sku"]
    await until(lambda: found_by_index(top, "coaster"), within_s=20)  # the stream delivered the insert

    async def priced(which: str = sku) -> int:
        return (await exports["price_lines"](lines=[{"sku": which, "quantity": 1}], currency="USD")).total

    assert await priced() == 1200
    hits, misses = replica.prices.hits, replica.prices.misses
    assert await priced() == 1200
    assert (replica.prices.hits, replica.prices.misses) == (hits + 1, misses)  # the second from the cache

    await direct_write({**doc, "version": 2, "variants": [{**doc["variants"][0], "prices": {"USD": 1500}}]})

    async def costs_1500() -> bool:
        return await priced() == 1500

    await until(costs_1500, within_s=20)
    await direct_write({**doc, "version": 3, "status": "archived"})

    async def refused() -> bool:
        try:
            await priced()
        except ValidationFailed as exc:
            return exc.extra["errors"][0]["type"] == "unknown_sku"
        return False

    await until(refused, within_s=20)

    own = await create(client, merchant, product(top, "Clay coaster", skus=[f"{top}-clay"], usd=800))
    assert await priced(f"{top}-clay") == 800
    assert await priced(f"{top}-clay") == 800
    r = await client.patch(f"{API}/products/{own['id']}", headers=merchant, json={
        "version": 1, "variants": [{"sku": f"{top}-clay", "prices": {"USD": 950}, "weight_g": 250}]})
    assert r.status_code == 200, r.text
    assert await priced(f"{top}-clay") == 950  # no waiting: this process's write dropped its entry


# -- who may do what ------------------------------------------------------------------------------------------


async def test_shoppers_read_merchants_write_their_own_and_drafts_stay_private(
        client, bearer, other_merchant, shopper, admin):
    top = root()
    me = f"merchant-{top}"
    merchant = bearer(f"{SCOPE}:read", f"{SCOPE}:write", subject=me)
    r = await client.post(f"{API}/products", json=product(top, "Lamp"), headers=shopper)
    assert r.status_code == 403
    active = await create(client, merchant, product(top, "Brass lamp"))
    draft = await create(client, merchant, product(top, "Secret lamp", status="draft"))
    assert draft["status"] == "draft" and draft["merchant"] == me

    assert (await client.get(f"{API}/products/{active['id']}", headers=shopper)).status_code == 200
    assert (await client.get(f"{API}/products/{draft['id']}", headers=shopper)).status_code == 404
    assert (await client.get(f"{API}/products/{draft['id']}", headers=other_merchant)).status_code == 404
    assert (await client.get(f"{API}/products/{draft['id']}", headers=admin)).status_code == 200
    assert [h["id"] for h in (await search(client, shopper, q="lamp", category=top))["items"]] == [active["id"]]

    r = await client.patch(f"{API}/products/{active['id']}", json={"version": 1, "title": "Mine"}, headers=shopper)
    assert r.status_code == 403
    r = await client.patch(f"{API}/products/{active['id']}", json={"version": 1, "title": "Mine"},
                           headers=other_merchant)
    assert r.status_code == 403
    r = await client.patch(f"{API}/products/{draft['id']}", json={"version": 1, "status": "active"},
                           headers=other_merchant)
    assert r.status_code == 404
    r = await client.patch(f"{API}/products/{draft['id']}", json={"version": 1, "status": "active"}, headers=admin)
    assert r.status_code == 200
    assert {h["id"] for h in (await search(client, shopper, q="lamp", category=top))["items"]} == {
        active["id"], draft["id"]}

    mine = await client.get(f"{API}/products", headers=merchant)
    assert sorted(p["id"] for p in mine.json()["items"]) == sorted([active["id"], draft["id"]])
    assert (await client.get(f"{API}/products", params={"merchant": me}, headers=other_merchant)).status_code == 403
    theirs = await client.get(f"{API}/products", params={"merchant": me}, headers=admin)
    assert len(theirs.json()["items"]) == 2
