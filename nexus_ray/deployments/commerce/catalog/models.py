"""product-catalog's schemas: products and their variants, search results with facets, priced carts.

Prices are integers of minor units per ISO 4217 currency (``strict``: ``10.0`` and ``"10"`` are
refused); a product's category is a path of slugs (``apparel/shoes/running``); attributes are
short key/value strings, facetable in search.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nexus_ray.deployments.commerce.ledger.currencies import known

BIGINT_MAX = 2**63 - 1
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SLUG = r"[a-z0-9][a-z0-9-]{0,47}"
CATEGORY_PATTERN = rf"^{SLUG}(/{SLUG}){{0,5}}$"
ATTR_KEY_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

Status = Literal["draft", "active", "archived"]
TaxCategory = Literal["standard", "reduced", "zero", "digital"]


def _currency(code: str) -> str:
    if not known(code):
        raise ValueError("is not an ISO 4217 currency with a known exponent")
    return code


def _prices(value: dict[str, int]) -> dict[str, int]:
    for code in value:
        _currency(code)
    return value


def _attributes(value: dict[str, str]) -> dict[str, str]:
    import re

    for k, v in value.items():
        if not re.match(ATTR_KEY_PATTERN, k):
            raise ValueError(f"attribute name {k!r} must match {ATTR_KEY_PATTERN}")
        if not v or len(v) > 64 or "\x00" in v:
            raise ValueError(f"attribute {k!r} must be 1 to 64 characters")
    return value


Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD."),
                     AfterValidator(_currency)]
Amount = Annotated[int, Field(strict=True, ge=0, le=BIGINT_MAX, description="Minor units (cents for USD).")]
Prices = Annotated[dict[Annotated[str, Field(pattern=r"^[A-Z]{3}$")], Amount],
                   Field(max_length=20, description="Price per ISO 4217 currency, in minor units (an active "
                         "product needs at least one per variant; a draft may be priced later)."),
                   AfterValidator(_prices)]
AttributeMap = Annotated[dict[str, Annotated[str, Field(min_length=1, max_length=64)]],
                         Field(max_length=30, description="Facetable key/value attributes, e.g. {\"color\": \"red\"}."),
                         AfterValidator(_attributes)]
Attributes = Annotated[AttributeMap, Field(default_factory=dict)]
Sku = Annotated[str, Field(pattern=SKU_PATTERN, description="Stock-keeping unit, unique across the catalog.")]
Category = Annotated[str, Field(pattern=CATEGORY_PATTERN, description="Category path of slugs, e.g. "
                                "`apparel/shoes/running` (it is also found under `apparel` and `apparel/shoes`).")]


def _text(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


Text = Annotated[str, AfterValidator(_text)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class VariantIn(_In):
    sku: Sku
    prices: Prices
    tax_category: TaxCategory = "standard"
    weight_g: int = Field(strict=True, ge=0, le=10_000_000, description="Shipping weight in grams.")
    attributes: Attributes


def _distinct_skus(variants: list[VariantIn] | None) -> list[VariantIn] | None:
    if variants is not None:
        seen: set[str] = set()
        for v in variants:
            if v.sku in seen:
                raise ValueError(f"SKU {v.sku} appears twice")
            seen.add(v.sku)
    return variants


Variants = Annotated[list[VariantIn], Field(min_length=1, max_length=100), AfterValidator(_distinct_skus)]


class ProductBase(_In):
    title: Text = Field(min_length=1, max_length=200)
    description: Text = Field("", max_length=5000)
    brand: Text = Field(min_length=1, max_length=80)
    category: Category
    attributes: Attributes


class ProductCreate(ProductBase):
    variants: Variants
    status: Literal["draft", "active"] = Field(
        "draft", description="A draft is seen only by its merchant (and catalog administrators); `active` is "
        "searchable by every shopper.")


class ProductUpdate(_In):
    """A partial change; ``version`` is the version the change was made from (a stale one is a 409).

    Fields left out keep their values; ``variants``, when given, replaces them all.
    """

    version: int = Field(strict=True, ge=1, description="The product's version this change is based on.")
    title: Text | None = Field(None, min_length=1, max_length=200)
    description: Text | None = Field(None, max_length=5000)
    brand: Text | None = Field(None, min_length=1, max_length=80)
    category: Category | None = None
    attributes: AttributeMap | None = None
    variants: Annotated[list[VariantIn], Field(min_length=1, max_length=100),
                        AfterValidator(_distinct_skus)] | None = None
    status: Status | None = None


class VariantRead(BaseModel):
    sku: str
    prices: dict[str, int]
    tax_category: TaxCategory
    weight_g: int
    attributes: dict[str, str]


class ProductRead(BaseModel):
    id: str
    merchant: str
    status: Status
    title: str
    description: str
    brand: str
    category: str
    attributes: dict[str, str]
    variants: list[VariantRead]
    version: int
    created_at: datetime
    updated_at: datetime


class SearchHit(BaseModel):
    id: str
    title: str
    brand: str
    category: str
    score: int = Field(description="Relevance: terms matched (x100), then terms found in the title (x10); 0 "
                       "when no query was given.")
    price: int | None = Field(None, description="Lowest variant price in the requested currency, minor units.")
    currency: str
    attributes: dict[str, str]


class FacetCount(BaseModel):
    value: str
    count: int


class PriceBand(BaseModel):
    min: int = Field(description="Lower bound, inclusive (minor units).")
    max: int | None = Field(description="Upper bound, exclusive; null for the last band.")
    count: int


class Facets(BaseModel):
    category: list[FacetCount]
    brand: list[FacetCount]
    price: list[PriceBand]
    attributes: dict[str, list[FacetCount]]


class SearchPage(BaseModel):
    """A page of hits, best first, with the counts of the whole filtered result."""

    items: list[SearchHit]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last.")
    total: int = Field(description="Hits of the whole filtered result, over every page.")
    facets: Facets | None = Field(None, description="Counts over the whole filtered result (first page only "
                                  "unless asked for).")


class PricedLine(BaseModel):
    sku: str
    product_id: str
    name: str
    quantity: int
    unit_price: int
    amount: int
    tax_category: str
    weight_g: int


class PricedCart(BaseModel):
    currency: str
    lines: list[PricedLine]
    total: int


class CartLine(_In):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(strict=True, ge=1, le=10_000)


class CartIn(_In):
    currency: Currency
    lines: list[CartLine] = Field(min_length=1, max_length=200)
