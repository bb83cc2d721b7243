"""product-catalog: products, variants, prices per currency, categories and attributes in the document store;
full-text search with relevance, filters, faceted counts and keyset pagination.

Routes in :mod:`.views`; logic, and the search design on a store without text indexes, in
:mod:`.service`; the in-memory search index every serving process keeps (``background``) in
:mod:`.search_index`; the text analysis in :mod:`.text`. Other namespaces (the checkout saga) call
``exports`` with :func:`nexus_ray.deployments.kit.calls.call`, keyword arguments only.
"""

from __future__ import annotations

from typing import Any

from . import service
from .models import PricedCart
from .views import router

#: This process's search index, built from the store and kept current by its change stream.
background = [service.keep_search_index]


async def price_lines(*, lines: list[dict[str, Any]], currency: str) -> PricedCart:
    """The cart's lines priced in ``currency`` (``{"sku", "quantity"}`` each); 422 naming ``lines[i].sku``."""
    return await service.price_lines(lines=lines, currency=currency)


#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"price_lines": price_lines}

__all__ = ["background", "exports", "router"]
