"""product-catalog's in-memory search index on its own (no store): after any sequence of new versions, status
changes, deletes and compactions it answers exactly what a brute-force evaluation of the store's ``$match``,
score, sort and facet stages over the current documents answers; stale versions change nothing.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter

from nexus_ray.deployments.commerce.catalog import service
from nexus_ray.deployments.commerce.catalog.models import ProductCreate
from nexus_ray.deployments.commerce.catalog.search_index import SearchIndex
from nexus_ray.deployments.commerce.catalog.text import query_terms

BANDS = [0, 1000, 2500, 5000, 10000]
WORDS = ["lamp", "oak", "velvet", "chair", "steel", "wool", "mug", "soft"]
FACETS = 5


def document(rng: random.Random, pid: str, version: int) -> dict:
    usd = rng.randint(100, 20000)
    body = {"title": " ".join(rng.sample(WORDS, 2)), "description": " ".join(rng.choices(WORDS, k=4)),
            "brand": rng.choice(["Acme", "Umbra", "Lumen", "Zeta"]),
            "category": rng.choice(["home/lighting", "home/furniture", "kitchen", "home/lighting/desk"]),
            "attributes": {k: rng.choice(v) for k, v in {"color": ["red", "blue"], "size": ["s", "m", "l"]}.items()
                           if rng.random() < 0.8},
            "variants": [{"sku": f"{pid[:8]}-{j}", "weight_g": 1,
                          "prices": {"USD": usd + j * 300} | ({"EUR": usd} if rng.random() < 0.6 else {})}
                         for j in range(rng.randint(1, 2))],
            "status": "draft"}
    doc = service.new_document(caller="m", body=ProductCreate.model_validate(body), product_id=pid)
    return {**doc, "version": version, "status": rng.choice(["active", "active", "active", "draft", "archived"])}


def brute(docs: dict[str, dict], *, words: list[str], category: str | None, brands: tuple[str, ...],
          currency: str, price_min: int | None, price_max: int | None, attributes: tuple[tuple[str, str], ...],
          limit: int, after: list | None) -> dict:
    hits = []
    by_key: dict[str, set[str]] = {}
    for k, v in attributes:
        by_key.setdefault(k, set()).add(f"{k}={v}")
    for d in docs.values():
        price = d["from_price"].get(currency)
        if d["status"] != "active" or (words and not set(d["terms"]) & set(words)):
            continue
        if (category and category not in d["categories"]) or (brands and d["brand"] not in brands):
            continue
        if (price_min is not None or price_max is not None) and (
                price is None or (price_min is not None and price < price_min)
                or (price_max is not None and price > price_max)):
            continue
        if any(not vals & set(d["attr_kv"]) for vals in by_key.values()):
            continue
        score = 100 * len(set(d["terms"]) & set(words)) + 10 * len(set(d["tt"]) & set(words))
        hits.append((score, d))
    hits.sort(key=lambda h: (-h[0], h[1]["_id"]))
    page = [h for h in hits if after is None or h[0] < after[0] or (h[0] == after[0] and h[1]["_id"] > after[1])]

    def ranked(counter: Counter, n: int) -> list[dict]:
        rows = sorted(counter.items(), key=lambda vc: (-vc[1], vc[0]))
        return [{"_id": v, "count": c} for v, c in (rows[:n] if n else rows)]

    bands: Counter = Counter()
    for _, d in hits:
        if currency in d["from_price"]:
            bands[max(b for b in BANDS if b <= d["from_price"][currency])] += 1
    rows = []
    for score, d in page[:limit]:
        row = {"_id": d["_id"], "title": d["title"], "brand": d["brand"], "category": d["category"],
               "attributes": d["attributes"], "score": score}
        if currency in d["from_price"]:
            row["price"] = d["from_price"][currency]
        rows.append(row)
    return {"hits": rows, "total": [{"n": len(hits)}] if hits else [],
            "brand": ranked(Counter(d["brand"] for _, d in hits), FACETS),
            "category": ranked(Counter(c for _, d in hits for c in d["categories"]), FACETS),
            "attributes": ranked(Counter(kv for _, d in hits for kv in d["attr_kv"]), 0),
            "price": [{"_id": b, "count": bands[b]} for b in BANDS if bands[b]]}


def check(index: SearchIndex, docs: dict[str, dict], rng: random.Random, rounds: int = 40) -> None:
    for _ in range(rounds):
        args = {"words": query_terms(" ".join(rng.sample(WORDS, rng.randint(0, 3)))),
                "category": rng.choice([None, "home", "home/lighting", "kitchen", "nowhere"]),
                "brands": tuple(rng.sample(["Acme", "Umbra", "Nobody"], rng.randint(0, 2))),
                "currency": rng.choice(["USD", "EUR", "GBP"]),
                "price_min": rng.choice([None, 500, 2000]), "price_max": rng.choice([None, 9000]),
                "attributes": tuple(rng.sample([("color", "red"), ("color", "blue"), ("size", "m")],
                                               rng.randint(0, 2))),
                "limit": rng.choice([1, 3, 50])}
        first = brute(docs, **args, after=None)
        after = None
        if first["hits"] and rng.random() < 0.5:
            last = first["hits"][len(first["hits"]) // 2]
            after = [last["score"], last["_id"]]
        got = index.found(**args, after=after, facets=True, bands=BANDS, facet_values=FACETS)
        assert got == brute(docs, **args, after=after), args


def test_the_index_answers_what_a_brute_force_evaluation_of_the_store_answers():
    rng = random.Random(11)
    index = SearchIndex(capacity=8)  # grows
    docs: dict[str, dict] = {}
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(120)]
    ids += [f"{ids[0][:8]}-same-prefix-{i}" for i in range(5)]  # order keys that tie: the id decides
    for pid in ids:
        docs[pid] = document(rng, pid, 1)
        assert index.apply(docs[pid])
    check(index, docs, rng)
    for step in range(400):  # new versions (any status), deletes, re-inserts, stale events
        pid = rng.choice(ids)
        roll = rng.random()
        if roll < 0.1 and pid in docs:
            index.remove(pid, version=docs.pop(pid)["version"])
        elif roll < 0.15 and pid in docs:
            assert not index.apply({**document(rng, pid, docs[pid]["version"] - 1)})  # late, older: ignored
        else:
            version = docs[pid]["version"] + 1 if pid in docs else 1
            if pid not in docs:
                index.remove(pid)  # the stream's delete event forgets the id: version 1 may come again
            docs[pid] = document(rng, pid, version)
            assert index.apply(docs[pid])
        if step % 100 == 99:
            check(index, docs, rng, rounds=10)
    dead = index.n - index.live
    assert dead > 0
    index.compact()
    assert index.n == index.live == sum(d["status"] == "active" for d in docs.values())
    check(index, docs, rng)


def test_a_local_delete_keeps_older_versions_out_until_the_stream_forgets_the_id():
    rng = random.Random(3)
    pid = str(uuid.uuid4())
    index = SearchIndex()
    v1, v2 = {**document(rng, pid, 1), "status": "active"}, {**document(rng, pid, 2), "status": "active"}
    assert index.apply(v2)
    index.remove(pid, version=2)  # this process deleted it
    assert not index.apply(v1) and not index.apply(v2)  # the stream's older events: ignored
    assert index.live == 0
    index.remove(pid)  # the stream's delete
    assert index.apply(v1) and index.live == 1  # a product created again under the same id
