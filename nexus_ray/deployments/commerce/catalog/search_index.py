"""product-catalog's search index: the active products held in memory by each process that searches them.

Why in memory
-------------
On 100,000 products the store's one aggregation (:func:`.service.search_pipeline`) takes seconds
(bench/RESULTS.md): secantusdb scans the collection at about 80 µs a document, its index FETCH costs
milliseconds a document, and its ``$facet`` stages add more per hit. A query's cost there grows with
the catalog and its hits; the goal (p99 <= 50 ms) needs a cost that does neither. Keeping the
posting lists and facet columns as documents in the store (read per query) would still pay the
store's per-document cost on every read and every write; a replica in the serving process pays
it once, at start.

So every process that serves searches keeps its own replica of what search reads, as arrays
indexed by a product **ordinal**:

* per term, the ordinals of the products that have it (``terms``), and of those that have it in
  their title (``tt``): numpy ``int32`` arrays, a query adds 100 (resp. 10) per term into a score
  array, so matching and scoring is a few vector additions over at most eight posting arrays;
* per field, a column: brand code, category-set code (the stored ``categories``, every ancestor
  path), the lowest variant price per currency (``int64``, -1 when the product has none), and
  the attribute values as (ordinal, ``k=v`` code) pairs;
* per ordinal, what a hit shows (id, title, category, attributes) and an order key of the id (its
  first 8 UTF-8 bytes, big-endian), so ties by id are picked with ``numpy.partition`` and only
  the page's few rows are sorted as strings.

Filters are boolean masks over the ordinals, facets are ``numpy.bincount`` over the hits' codes,
the page is a partial sort: the cost is a few passes over arrays of the catalog's size (about a
millisecond each for 100,000 products) and nothing per hit in Python.

Exactly the store's semantics: the index reads the same stored fields the aggregation reads
(``status``, ``terms``, ``tt``, ``brand``, ``categories``, ``attr_kv``, ``from_price``), never
analyses text itself, and hands :mod:`.service` the aggregation's result shape, which the service
renders with the same code as the store's answer. The store pipeline stays as the fallback and the
reference the tests compare with.

Writes are append-only: a product's new version gets a new ordinal and its old ordinal is
marked dead (its postings stay, masked by ``alive``); when the dead outnumber the living the
arrays are compacted in one pass. An archived, drafted or deleted product just loses its ordinal.

Kept current
------------
:meth:`Replica.run` (the package's ``background``) opens a change stream on the products
collection (full documents on update), **then** scans the collection once (a projection of the
fields above), then applies the stream's events from the moment it was opened, so nothing falls
between the scan and the stream. An event is applied only if its document's ``version`` is above
the one the index holds for that id (the scan may already hold a newer one); a delete from the
stream forgets the id (a later re-insert with version 1 then applies). The index serves once the
stream's backlog is drained (up to the changes made after the scan ended). The writing process
applies its own writes at once (:meth:`Replica.observe`, :meth:`Replica.forget`), by the same
version rule, so a write is searchable by its writer as soon as it is acknowledged; other
processes see it when the stream brings it (milliseconds). If the stream fails (store restart,
history lost) the index is dropped, search falls back to the store, and it is rebuilt the same way.

Until it is ready, :func:`.service.search` answers from the store. Readiness, size and lag are
Prometheus gauges (:mod:`nexus_ray.edge.metrics`) and :meth:`Replica.status`.

Prices read once
----------------
Pricing a cart (:func:`.service.price_lines`, the checkout's first step) reads its SKUs' products from the store:
one query an order when orders come one at a time, which costs the store about 1.6 ms of CPU (bench/RESULTS.md).
The same stream keeps a bounded :class:`PriceCache` of what those reads returned: a product's entry is dropped when
the stream brings any change of it (or this process writes it), and the cache is used only while the stream is
followed and answered in the last :data:`FOLLOWING_S` seconds (its reads wait at most a second when nothing
changes). A read that overlapped a drop is not kept, so an entry never outlives a change the stream delivered.
What it trades: a price changed by another process is seen here when the stream brings it, milliseconds later
(the ``lag_s`` gauge), not at once; a cart priced in between is charged the price it was quoted, and its invoice
states the same lines, so money stays consistent. This process's own writes drop their entries at once.

Measured on 100,000 products (bench/catalog_search.py, bench/RESULTS.md, shared 2-core machine): built
in about 36 s (the store's scan), 23 MB of arrays and about 100 MB of process memory in all; a faceted
first page of 20 in p50 5 ms, p99 12 ms (closed loop through the service function), the same answers
as the store's aggregation, which takes 0.3 to 13 s.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nexus_ray.edge import metrics

log = logging.getLogger(__name__)

#: Scores (see :mod:`.service`): a matched term outweighs every title bonus a product can have.
TERM_WEIGHT = 100
TITLE_WEIGHT = 10

#: What the scan reads of each product: the fields the store's aggregation reads.
PROJECTION = {"status": 1, "version": 1, "title": 1, "brand": 1, "category": 1, "attributes": 1, "terms": 1,
              "tt": 1, "categories": 1, "attr_kv": 1, "from_price": 1}

_BIG = 2**63 - 1
_I32 = np.int32
_EMPTY = np.zeros(0, _I32)


#: The cache of prices answers only while the change stream answered this recently (an idle stream answers every
#: second, :meth:`Replica.run`).
FOLLOWING_S = 3.0

#: SKU -> (the product as pricing reads it: id, title, variants; the SKU's variant).
Variants = dict[str, tuple[dict[str, Any], dict[str, Any]]]


class PriceCache:
    """What pricing read of active products, by SKU, until the change stream says the product changed (see the
    module's docstring). At most ``max_products`` products; the oldest filled goes first."""

    def __init__(self, max_products: int = 10_000) -> None:
        self.max_products = max_products
        #: Moves on at every drop: a read that began before one is not kept (:meth:`fill`).
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self._by_sku: Variants = {}
        self._skus_of: dict[str, list[str]] = {}

    def get(self, skus: Iterable[str]) -> tuple[Variants, list[str]]:
        """The cached SKUs' entries, and the SKUs to read from the store."""
        found: Variants = {}
        missing: list[str] = []
        for sku in skus:
            hit = self._by_sku.get(sku)
            if hit is None:
                missing.append(sku)
            else:
                found[sku] = hit
        self.hits += len(found)
        self.misses += len(missing)
        return found, missing

    def fill(self, read: Variants, generation: int) -> None:
        """Keep what a read begun at ``generation`` returned, unless a product was dropped since it began."""
        if generation != self.generation or self.max_products <= 0:
            return
        for sku, entry in read.items():
            pid = entry[0]["_id"]
            skus = self._skus_of.get(pid)
            if skus is None:
                if len(self._skus_of) >= self.max_products:
                    self._remove(next(iter(self._skus_of)))
                skus = self._skus_of[pid] = []
            if sku not in self._by_sku:
                skus.append(sku)
            self._by_sku[sku] = entry

    def drop(self, product_id: Any) -> None:
        """The product changed (or is gone): read it from the store next time."""
        self.generation += 1
        self._remove(product_id)

    def clear(self) -> None:
        self.generation += 1
        self._by_sku.clear()
        self._skus_of.clear()

    def _remove(self, product_id: Any) -> None:
        for sku in self._skus_of.pop(product_id, ()):
            self._by_sku.pop(sku, None)

    def __len__(self) -> int:
        return len(self._skus_of)


def id_key(product_id: str) -> int:
    """An order key of an id: its first 8 UTF-8 bytes, big-endian (a < b as strings implies key(a) <= key(b))."""
    return int.from_bytes(product_id.encode()[:8].ljust(8, b"\0"), "big")


class _Codes:
    """Values numbered in order of first appearance."""

    __slots__ = ("code", "values")

    def __init__(self) -> None:
        self.code: dict[Any, int] = {}
        self.values: list[Any] = []

    def of(self, value: Any) -> int:
        c = self.code.get(value)
        if c is None:
            c = self.code[value] = len(self.values)
            self.values.append(value)
        return c


class _Postings:
    """Per term, the ordinals that have it: numpy arrays, with appends pending in lists until next read."""

    __slots__ = ("arrays", "pending")

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.pending: dict[str, list[int]] = {}

    def add(self, term: str, ordinal: int) -> None:
        got = self.pending.get(term)
        if got is None:
            self.pending[term] = [ordinal]
        else:
            got.append(ordinal)

    def get(self, term: str) -> np.ndarray:
        arr = self.arrays.get(term)
        more = self.pending.pop(term, None)
        if more is not None:
            extra = np.array(more, _I32)
            arr = extra if arr is None else np.concatenate((arr, extra))
            self.arrays[term] = arr
        return _EMPTY if arr is None else arr

    def settle(self) -> None:
        for term in list(self.pending):
            self.get(term)

    def compact(self, alive: np.ndarray, remap: np.ndarray) -> None:
        self.settle()
        for term, arr in list(self.arrays.items()):
            kept = arr[alive[arr]]
            if len(kept):
                self.arrays[term] = remap[kept].astype(_I32)
            else:
                del self.arrays[term]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class SearchIndex:
    """The active products of one collection, as posting arrays and facet columns (see the module docstring)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.n = 0  # ordinals handed out
        self.live = 0
        self.alive = np.zeros(capacity, bool)
        self.brand = np.zeros(capacity, _I32)
        self.catset = np.zeros(capacity, _I32)
        self.idkey = np.zeros(capacity, np.uint64)
        self.prices: dict[str, np.ndarray] = {}
        self.pair_ord = np.zeros(capacity * 4, _I32)
        self.pair_kv = np.zeros(capacity * 4, _I32)
        self.pairs = 0
        self.ids: list[str] = []
        # per ordinal: title, category, attributes as (k1, v1, k2, v2, ...); category and attributes interned
        self.shown: list[tuple[str, str, tuple[str, ...]] | None] = []
        self.strings: dict[str, str] = {}
        self.terms = _Postings()
        self.title = _Postings()
        self.brands = _Codes()
        self.kvs = _Codes()
        self.catsets = _Codes()  # tuple of category paths (the stored ``categories``, duplicates kept)
        self.ordinal: dict[str, int] = {}
        self.version: dict[str, int] = {}  # every id seen, live or not (a local delete leaves its version)
        self.compactions = 0

    # -- writes -----------------------------------------------------------------------------------

    def apply(self, doc: dict[str, Any]) -> bool:
        """Take ``doc`` (a stored product) if its version is newer than the one held; True if taken."""
        pid = doc.get("_id")
        if not isinstance(pid, str):
            return False  # the service's ids are strings; nothing else is a product
        version = int(doc.get("version") or 0)
        known = self.version.get(pid)
        if known is not None and version <= known:
            return False
        self.version[pid] = version
        self._drop(pid)
        if doc.get("status") == "active":
            self._add(pid, doc)
        return True

    def remove(self, product_id: str, *, version: int | None = None) -> None:
        """Drop a deleted product: ``version`` (a local delete) keeps older versions out; None forgets it."""
        if version is None:
            self.version.pop(product_id, None)
        else:
            self.version[product_id] = max(version, self.version.get(product_id, 0))
        self._drop(product_id)

    def _grow(self) -> None:
        cap = len(self.alive) * 2

        def grown(a: np.ndarray, fill: int = 0) -> np.ndarray:
            out = np.full(cap, fill, a.dtype)
            out[: len(a)] = a
            return out

        self.alive, self.brand, self.catset, self.idkey = (grown(self.alive), grown(self.brand),
                                                           grown(self.catset), grown(self.idkey))
        self.prices = {cur: grown(col, -1) for cur, col in self.prices.items()}

    def _add(self, pid: str, doc: dict[str, Any]) -> None:
        if self.n == len(self.alive):
            self._grow()
        o = self.n
        self.n += 1
        self.ordinal[pid] = o
        self.ids.append(pid)
        for t in set(doc.get("terms") or ()):
            self.terms.add(t, o)
        for t in set(doc.get("tt") or ()):
            self.title.add(t, o)
        self.brand[o] = self.brands.of(doc.get("brand"))
        self.catset[o] = self.catsets.of(tuple(doc.get("categories") or ()))
        self.idkey[o] = id_key(pid)
        for cur, amount in (doc.get("from_price") or {}).items():
            col = self.prices.get(cur)
            if col is None:
                col = self.prices[cur] = np.full(len(self.alive), -1, np.int64)
            col[o] = amount
        kvs = doc.get("attr_kv") or ()
        if self.pairs + len(kvs) > len(self.pair_ord):
            size = max(len(self.pair_ord) * 2, self.pairs + len(kvs))
            self.pair_ord = np.concatenate((self.pair_ord, np.zeros(size - len(self.pair_ord), _I32)))
            self.pair_kv = np.concatenate((self.pair_kv, np.zeros(size - len(self.pair_kv), _I32)))
        for kv in kvs:
            self.pair_ord[self.pairs] = o
            self.pair_kv[self.pairs] = self.kvs.of(kv)
            self.pairs += 1
        strings = self.strings
        attrs = tuple(strings.setdefault(x, x) for kv in (doc.get("attributes") or {}).items() for x in kv)
        category = doc.get("category", "")
        self.shown.append((doc.get("title", ""), strings.setdefault(category, category), attrs))
        self.alive[o] = True
        self.live += 1

    def _drop(self, pid: str) -> None:
        o = self.ordinal.pop(pid, None)
        if o is None:
            return
        self.alive[o] = False
        self.shown[o] = None
        self.live -= 1
        if self.n - self.live > 4096 and self.n - self.live > self.live:
            self.compact()

    def compact(self) -> None:
        """Renumber the living products 0..live-1, dropping the dead ordinals everywhere."""
        n = self.n
        alive = self.alive[:n]
        keep = np.flatnonzero(alive)
        remap = np.full(n, -1, _I32)
        remap[keep] = np.arange(len(keep), dtype=_I32)
        self.terms.compact(alive, remap)
        self.title.compact(alive, remap)
        pairs = self.pair_ord[: self.pairs]
        kept = alive[pairs]
        self.pair_ord = remap[pairs[kept]].astype(_I32)
        self.pair_kv = self.pair_kv[: self.pairs][kept].copy()
        self.pairs = len(self.pair_ord)
        cap = max(1024, len(keep) * 2)

        def taken(a: np.ndarray, fill: int = 0) -> np.ndarray:
            out = np.full(cap, fill, a.dtype)
            out[: len(keep)] = a[keep]
            return out

        self.alive, self.brand, self.catset, self.idkey = (taken(self.alive), taken(self.brand),
                                                           taken(self.catset), taken(self.idkey))
        self.prices = {cur: taken(col, -1) for cur, col in self.prices.items()}
        self.ids = [self.ids[o] for o in keep.tolist()]
        self.shown = [self.shown[o] for o in keep.tolist()]
        self.strings = {x: x for row in self.shown if row is not None for x in (row[1], *row[2])}
        self.ordinal = {pid: i for i, pid in enumerate(self.ids)}
        self.n = self.live = len(keep)
        self.compactions += 1

    def settle(self) -> None:
        """Turn pending postings into arrays (after a bulk load)."""
        self.terms.settle()
        self.title.settle()

    def nbytes(self) -> int:
        """Bytes of the numpy arrays (postings and columns); the Python side (ids, shown rows, codes) is extra."""
        arrays = [self.alive, self.brand, self.catset, self.idkey, self.pair_ord, self.pair_kv,
                  *self.prices.values()]
        return sum(a.nbytes for a in arrays) + self.terms.nbytes() + self.title.nbytes()

    # -- reads ------------------------------------------------------------------------------------

    def _mask(self, *, words: Sequence[str], category: str | None, brands: Iterable[str], currency: str,
              price_min: int | None, price_max: int | None, attributes: Sequence[tuple[str, str]],
              ) -> tuple[np.ndarray, np.ndarray | None]:
        n = self.n
        mask = self.alive[:n].copy()
        score: np.ndarray | None = None
        if words:
            matched = np.zeros(n, _I32)
            titled = np.zeros(n, _I32)
            for w in words:  # distinct words; an ordinal is once in a term's postings
                matched[self.terms.get(w)] += 1
                titled[self.title.get(w)] += 1
            mask &= matched > 0
            score = matched * TERM_WEIGHT + titled * TITLE_WEIGHT
        if category:
            has = np.fromiter((category in paths for paths in self.catsets.values), bool, len(self.catsets.values))
            mask &= has[self.catset[:n]] if len(has) else False
        wanted = list(dict.fromkeys(brands))
        if wanted:
            codes = [self.brands.code[b] for b in wanted if b in self.brands.code]
            mask &= np.isin(self.brand[:n], codes)
        if price_min is not None or price_max is not None:
            col = self.prices.get(currency)
            if col is None:
                mask[:] = False
            else:
                price = col[:n]
                mask &= price >= (0 if price_min is None else price_min)
                if price_max is not None:
                    mask &= price <= price_max
        by_key: dict[str, list[int]] = {}
        for k, v in attributes:
            by_key.setdefault(k, []).extend([self.kvs.code[f"{k}={v}"]] if f"{k}={v}" in self.kvs.code else [])
        if by_key:
            pair_ord = self.pair_ord[: self.pairs]
            pair_kv = self.pair_kv[: self.pairs]
            for codes in by_key.values():
                some = np.zeros(n, bool)
                some[pair_ord[np.isin(pair_kv, codes)]] = True
                mask &= some
        return mask, score

    def _top(self, cand: np.ndarray, score: np.ndarray | None, k: int) -> list[int]:
        """The ``k`` best of ordinals ``cand`` by (score descending, id ascending)."""
        if len(cand) > k:
            if score is not None:
                sc = score[cand]
                t = np.partition(sc, len(sc) - k)[len(sc) - k]  # the k-th highest score
                above, tie = cand[sc > t], cand[sc == t]
            else:
                above, tie = _EMPTY, cand
            m = k - len(above)  # >= 1
            if len(tie) > m:
                keys = self.idkey[tie]
                h = np.partition(keys, m - 1)[m - 1]
                tie = tie[keys <= h]  # every tie left out has a key above m of these: a larger id
            cand = np.concatenate((above, tie))
        ids = self.ids
        if score is None:
            return sorted(cand.tolist(), key=ids.__getitem__)[:k]
        return sorted(cand.tolist(), key=lambda o: (-int(score[o]), ids[o]))[:k]

    def _after(self, hits: np.ndarray, score: np.ndarray | None, after: Sequence[Any]) -> np.ndarray:
        """The hits after the cursor ``[score, id]``: a lower score, or the same score and a larger id."""
        last_score, last = int(after[0]), str(after[1])
        sc = score[hits] if score is not None else np.zeros(len(hits), _I32)
        below = hits[sc < last_score]
        tie = hits[sc == last_score]
        key = id_key(last)
        keys = self.idkey[tie]
        same = tie[keys == key]
        later = [o for o in same.tolist() if self.ids[o] > last]
        return np.concatenate((below, tie[keys > key], np.array(later, _I32)))

    def found(self, *, words: Sequence[str], category: str | None, brands: Iterable[str], currency: str,
              price_min: int | None, price_max: int | None, attributes: Sequence[tuple[str, str]],
              limit: int, after: Sequence[Any] | None, facets: bool, bands: Sequence[int],
              facet_values: int) -> dict[str, Any]:
        """What the store's aggregation returns for the same search: ``hits``, and ``total`` and facets if asked."""
        mask, score = self._mask(words=words, category=category, brands=brands, currency=currency,
                                 price_min=price_min, price_max=price_max, attributes=attributes)
        hits = np.flatnonzero(mask).astype(_I32)
        cand = hits if after is None else self._after(hits, score, after)
        col = self.prices.get(currency)
        rows = []
        for o in self._top(cand, score, limit):
            title, cat, attrs = self.shown[o]  # type: ignore[misc]
            row: dict[str, Any] = {"_id": self.ids[o], "title": title, "brand": self.brands.values[self.brand[o]],
                                   "category": cat, "attributes": dict(zip(attrs[::2], attrs[1::2], strict=True)),
                                   "score": int(score[o]) if score is not None else 0}
            if col is not None and col[o] >= 0:
                row["price"] = int(col[o])
            rows.append(row)
        out: dict[str, Any] = {"hits": rows}
        if not facets:
            return out
        out["total"] = [{"n": len(hits)}] if len(hits) else []
        out["brand"] = _ranked(self.brands.values, np.bincount(self.brand[hits], minlength=len(self.brands.values)),
                               facet_values)
        by_path: dict[str, int] = {}
        sets = np.bincount(self.catset[hits], minlength=len(self.catsets.values))
        for code in np.flatnonzero(sets).tolist():
            for path in self.catsets.values[code]:
                by_path[path] = by_path.get(path, 0) + int(sets[code])
        out["category"] = [{"_id": p, "count": c} for p, c in
                           sorted(by_path.items(), key=lambda pc: (-pc[1], pc[0]))[:facet_values]]
        pairs = self.pair_ord[: self.pairs]
        kv_counts = np.bincount(self.pair_kv[: self.pairs][mask[pairs]], minlength=len(self.kvs.values))
        out["attributes"] = _ranked(self.kvs.values, kv_counts, 0)
        out["price"] = []
        if col is not None:
            prices = col[hits]
            prices = prices[prices >= 0]
            band = np.searchsorted(np.array([*bands, _BIG], np.int64), prices, side="right") - 1
            band = band[(band >= 0) & (band < len(bands))]
            counted = np.bincount(band, minlength=len(bands))
            out["price"] = [{"_id": bands[i], "count": int(c)} for i, c in enumerate(counted.tolist()) if c]
        return out


def _ranked(values: list[Any], counts: np.ndarray, limit: int) -> list[dict[str, Any]]:
    """``$group`` + ``$sort {count: -1, _id: 1}`` (+ ``$limit``) of counted values."""
    nz = np.flatnonzero(counts).tolist()
    rows = sorted(((values[c], int(counts[c])) for c in nz), key=lambda vc: (-vc[1], vc[0]))
    return [{"_id": v, "count": c} for v, c in (rows[:limit] if limit else rows)]


class _Rebuild(Exception):
    """The collection went away (drop, rename): the index starts again."""


class Replica:
    """This process's index and its upkeep: built by :meth:`run`, consulted through :meth:`usable`."""

    def __init__(self) -> None:
        self.index: SearchIndex | None = None
        self.gc_freeze = True
        self.stream: Any = None  # the change stream being followed
        self.ready = False
        self.builds = 0
        self.build_s: float | None = None
        self.lag_s = 0.0
        self.last_event: datetime | None = None
        self.events = 0
        self.served = 0
        self.prices = PriceCache()
        self.heard = 0.0  # when the stream last answered (monotonic)

    def usable(self) -> SearchIndex | None:
        """The index if it is ready to answer searches, else None (search the store)."""
        return self.index if self.ready else None

    def price_cache(self) -> PriceCache | None:
        """The cache of prices while the stream is followed and answered lately, else None (read the store)."""
        return self.prices if self.ready and time.monotonic() - self.heard < FOLLOWING_S else None

    def observe(self, doc: dict[str, Any]) -> None:
        """A product this process just wrote: searchable by it at once (ignored if the index holds newer)."""
        self.prices.drop(doc["_id"])
        if self.index is not None:
            self.index.apply(doc)

    def forget(self, product_id: str, version: int) -> None:
        """A product this process just deleted at ``version``."""
        self.prices.drop(product_id)
        if self.index is not None:
            self.index.remove(product_id, version=version)

    def status(self) -> dict[str, Any]:
        """Whether the index answers, what it holds, how it was built, how far behind its last event was."""
        idx = self.index
        return {"ready": self.ready, "products": idx.live if idx else 0, "builds": self.builds,
                "build_s": self.build_s, "lag_s": self.lag_s, "events": self.events, "served": self.served,
                "last_event": self.last_event.isoformat() if self.last_event else None,
                "array_bytes": idx.nbytes() if idx else 0,
                "price_cache": {"products": len(self.prices), "hits": self.prices.hits,
                                "misses": self.prices.misses}}

    def _publish(self) -> None:
        idx = self.index
        metrics.catalog_index(ready=self.ready, products=idx.live if idx else 0, lag_s=self.lag_s)

    def _event(self, idx: SearchIndex, ev: dict[str, Any]) -> None:
        op = ev.get("operationType")
        if op in ("insert", "replace", "update", "delete"):
            self.prices.drop((ev.get("documentKey") or {}).get("_id"))
        if op in ("insert", "replace", "update"):
            doc = ev.get("fullDocument")
            if doc:  # None: deleted before the lookup; its delete follows
                idx.apply(doc)
        elif op == "delete":
            pid = (ev.get("documentKey") or {}).get("_id")
            if isinstance(pid, str):
                idx.remove(pid)
        elif op in ("drop", "rename", "dropDatabase", "invalidate"):
            raise _Rebuild(op)
        wall = ev.get("wallTime")
        self.events += 1
        if isinstance(wall, datetime):
            self.last_event = wall
            self.lag_s = max(0.0, (datetime.now(UTC) - wall).total_seconds())

    async def build(self, collection: Any) -> Any:
        """Open the change stream, scan the collection into a new index, drain the stream: returns the stream."""
        started = time.monotonic()
        idx = SearchIndex()
        self.index, self.ready = idx, False
        self.prices.clear()
        stream = await collection.watch(full_document="updateLookup")
        try:
            async for doc in collection.find({}, PROJECTION, batch_size=1000):
                idx.apply(doc)
            idx.settle()
            scanned = datetime.now(UTC)
            # the backlog: until the stream has nothing more at once, or (under a steady flow of writes)
            # until it reaches changes made after the scan ended; the rest is applied while serving
            while (ev := await stream.try_next()) is not None:
                self._event(idx, ev)
                if isinstance(ev.get("wallTime"), datetime) and ev["wallTime"] >= scanned:
                    break
        except BaseException:
            await stream.close()
            raise
        # Full (generation 2) collections traverse every tracked object of the process: with the index and
        # the app's own heap that paused it for 0.3 to 0.6 s while serving (bench/RESULTS.md). Collect now,
        # while the store still answers, then (``gc_freeze``) move everything alive into the permanent
        # generation, which later collections skip (measured: p99 84 -> 21 ms through HTTP at 50/s).
        # Reference counting still frees those objects (the index holds no cycles, so an index replaced
        # by a rebuild is freed); only cyclic garbage among them is never collected.
        gc.collect()
        if self.gc_freeze:
            gc.freeze()
        self.build_s = time.monotonic() - started
        self.builds += 1
        self.heard = time.monotonic()
        self.ready = True
        self._publish()
        log.info("catalog search index ready: %d products in %.1f s", idx.live, self.build_s)
        return stream

    async def run(self, collection: Callable[[], Awaitable[Any]], *, retry_s: float = 1.0,
                  gc_freeze: bool = True) -> None:
        """Build, then follow the change stream for ever; on any failure fall back to the store and rebuild.

        A failure waits ``retry_s`` before the rebuild, doubled after each failure in a row up to a minute.
        ``gc_freeze``: freeze the collector's view of the heap after each build (see :meth:`build`).
        """
        self.gc_freeze = gc_freeze
        delay = retry_s
        while True:
            try:
                self.stream = stream = await self.build(await collection())
                async with stream:
                    idx = self.index
                    assert idx is not None
                    delay = retry_s
                    while True:
                        # One read of the stream: an event, or None when nothing changed for a second (or when
                        # the stream was closed under the index, which then rebuilds).
                        ev = await stream.try_next()
                        if not stream.alive:
                            raise _Rebuild("the change stream closed")
                        self.heard = time.monotonic()
                        if ev is not None:
                            self._event(idx, ev)
                            self._publish()
            except asyncio.CancelledError:
                self.ready = False
                self.prices.clear()
                raise
            except Exception as exc:  # the type only: a store's message can carry its URL
                self.ready, self.index, self.stream = False, None, None
                self.prices.clear()
                self._publish()
                log.warning("catalog search index lost (%s): searching the store while it is rebuilt",
                            type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(60.0, delay * 2)


#: This process's index of the products collection.
replica = Replica()
