"""product-catalog's routes under ``/commerce/v1/catalog``.

Who may do what: shoppers (read scope) search and read active products and price carts;
merchants (write scope) create products and change or delete their own; catalog
administrators (admin scope) read and change any. A draft or archived product is a 404 to
anyone but its merchant and administrators. Changes carry the ``version`` they were made
from: a stale one is a 409 (optimistic concurrency).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import Forbidden, ValidationFailed

from . import service
from .models import (
    ATTR_KEY_PATTERN,
    CATEGORY_PATTERN,
    CartIn,
    PricedCart,
    ProductCreate,
    ProductRead,
    ProductUpdate,
    SearchPage,
)

SCOPES = scopes_of("puabo-nuki-product-catalog")
router = APIRouter()

ProductId = Annotated[UUID, Path(description="The product's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/products", status_code=201, response_model=ProductRead, summary="Create a product with its variants")
async def create_product(body: ProductCreate, principal: Principal = authorize(SCOPES.write)) -> ProductRead:
    return await service.create_product(caller=principal.subject, body=body)


@router.get("/products", response_model=Page[ProductRead], summary="A merchant's products (default: the caller's)")
async def list_products(
    merchant: str | None = Query(None, max_length=128, description="Another merchant's: admin scope."),
    page: PageRequest = page_params(default=50, maximum=200),
    principal: Principal = authorize(SCOPES.write),
) -> Page[ProductRead]:
    if merchant is not None and merchant != principal.subject and not _admin(principal):
        raise Forbidden(f"listing another merchant's products needs {SCOPES.admin}",
                        extra={"required_scopes": [SCOPES.admin]})
    return await service.list_products(merchant=merchant or principal.subject, page=page)


@router.get("/products/{product_id}", response_model=ProductRead, summary="A product with its variants")
async def get_product(product_id: ProductId, principal: Principal = authorize(SCOPES.read)) -> ProductRead:
    return await service.get_product(product_id=str(product_id), caller=principal.subject,
                                     privileged=_admin(principal))


@router.patch("/products/{product_id}", response_model=ProductRead,
              summary="Change a product (from the version read; a stale version is a 409)")
async def update_product(product_id: ProductId, body: ProductUpdate,
                         principal: Principal = authorize(SCOPES.write)) -> ProductRead:
    return await service.update_product(product_id=str(product_id), caller=principal.subject,
                                        privileged=_admin(principal), body=body)


@router.delete("/products/{product_id}", status_code=204, response_class=Response,
               summary="Delete a product (from the version read; a stale version is a 409)")
async def delete_product(
    product_id: ProductId,
    version: int = Query(ge=1, le=2**62, description="The product's version this deletion is based on."),
    principal: Principal = authorize(SCOPES.write),
) -> Response:
    await service.delete_product(product_id=str(product_id), caller=principal.subject, privileged=_admin(principal),
                                 version=version)
    return Response(status_code=204)


def _attributes(values: list[str]) -> list[tuple[str, str]]:
    import re

    out = []
    for i, raw in enumerate(values):
        key, sep, value = raw.partition(":")
        if not sep or not re.match(ATTR_KEY_PATTERN, key) or not value or len(value) > 64:
            raise ValidationFailed.for_field(f"attr[{i}]", "must be `key:value` (an attribute name and a value)")
        out.append((key, value))
    return out


@router.get("/search", response_model=SearchPage,
            summary="Full-text search of active products, ranked, filtered, with facet counts")
async def search(
    q: str = Query("", max_length=200, description="Words; a product with all of them ranks above one with some, "
                   "and title matches above description matches."),
    category: str | None = Query(None, pattern=CATEGORY_PATTERN, description="A category path (its subtree)."),
    brand: list[str] = Query([], max_length=20, description="Brands (any of them)."),
    currency: str = Query("USD", pattern=r"^[A-Z]{3}$", description="Currency of prices, price filter and bands."),
    price_min: int | None = Query(None, ge=0, le=2**62, description="Lowest price (minor units, inclusive)."),
    price_max: int | None = Query(None, ge=0, le=2**62, description="Highest price (minor units, inclusive)."),
    attr: list[str] = Query([], max_length=20, description="`key:value`; values of one key are alternatives, "
                            "different keys must all match."),
    facets: bool | None = Query(None, description="Count facets (default: on the first page only)."),
    page: PageRequest = page_params(default=20, maximum=100),
    principal: Principal = authorize(SCOPES.read),
) -> SearchPage:
    if price_min is not None and price_max is not None and price_min > price_max:
        raise ValidationFailed.for_field("price_min", "is above price_max")
    query = service.SearchQuery(q=q, category=category, brands=tuple(brand), currency=currency,
                                price_min=price_min, price_max=price_max, attributes=tuple(_attributes(attr)))
    return await service.search(query=query, page=page, facets=facets)


@router.post("/price-lines", response_model=PricedCart, summary="Price a cart's lines in a currency")
async def price_lines(body: CartIn, principal: Principal = authorize(SCOPES.read)) -> PricedCart:
    return await service.price_lines(lines=[line.model_dump() for line in body.lines], currency=body.currency)
