"""A seeded generator of a realistic product catalog, and of the queries shoppers send to it.

    python bench/catalog_gen.py --products 5 --seed 1      # print a few products as JSON

Categories form a three-level tree (departments, families, product types) picked with Zipf
weights, brands are picked with Zipf weights (a few big ones, a long tail), titles are brand +
adjectives + material + product type + a model code, descriptions mix the product's own words
with a Zipf-distributed vocabulary of a few thousand words, and attributes (color, size,
material, plus a type-specific one) vary per product. Every product has 1 to 4 variants (SKUs)
priced in USD, most also in EUR, some in GBP and JPY (integer minor units), with a tax category
and a weight. The same seed gives the same catalog.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

DEPARTMENTS: dict[str, dict[str, list[str]]] = {
    "apparel": {"outerwear": ["jacket", "coat", "parka", "vest", "raincoat"],
                "tops": ["shirt", "blouse", "sweater", "hoodie", "tee", "polo"],
                "bottoms": ["jeans", "trousers", "shorts", "skirt", "leggings"],
                "footwear": ["sneaker", "boot", "sandal", "loafer", "slipper"],
                "accessories": ["belt", "scarf", "hat", "glove", "wallet"]},
    "electronics": {"audio": ["headphone", "earbud", "speaker", "soundbar", "turntable"],
                    "computers": ["laptop", "monitor", "keyboard", "mouse", "webcam"],
                    "phones": ["smartphone", "charger", "case", "cable", "powerbank"],
                    "cameras": ["camera", "lens", "tripod", "drone", "flash"]},
    "home": {"furniture": ["chair", "table", "sofa", "shelf", "desk", "bed"],
             "lighting": ["lamp", "pendant", "sconce", "bulb", "lantern"],
             "textiles": ["blanket", "pillow", "rug", "curtain", "towel", "duvet"],
             "decor": ["vase", "mirror", "frame", "candle", "clock"]},
    "kitchen": {"cookware": ["pan", "pot", "skillet", "wok", "dutch-oven"],
                "appliances": ["kettle", "toaster", "blender", "mixer", "coffee-maker"],
                "tableware": ["plate", "bowl", "mug", "glass", "cutlery"]},
    "sports": {"fitness": ["dumbbell", "mat", "kettlebell", "band", "bench"],
               "outdoor": ["tent", "backpack", "sleeping-bag", "stove", "headlamp"],
               "cycling": ["helmet", "bike-light", "saddle", "pump", "lock"]},
    "beauty": {"skincare": ["moisturizer", "serum", "cleanser", "sunscreen", "mask"],
               "haircare": ["shampoo", "conditioner", "brush", "dryer", "straightener"]},
    "toys": {"games": ["puzzle", "boardgame", "card-game", "dice"],
             "building": ["blocks", "bricks", "construction-set", "marble-run"]},
    "books": {"fiction": ["novel", "thriller", "anthology"], "nonfiction": ["cookbook", "biography", "guide"]},
    "grocery": {"pantry": ["coffee", "tea", "olive-oil", "pasta", "honey"],
                "snacks": ["chocolate", "nuts", "crackers"]},
    "garden": {"tools": ["shovel", "pruner", "hose", "rake", "trowel"], "plants": ["planter", "seed-kit", "pot"]},
}
ADJECTIVES = ["classic", "modern", "vintage", "compact", "wireless", "portable", "premium", "lightweight", "heavy-duty",
              "ergonomic", "slim", "oversized", "waterproof", "insulated", "organic", "handmade", "foldable", "smart",
              "ultra", "soft", "durable", "quiet", "rechargeable", "adjustable", "minimalist", "rustic", "elegant",
              "sporty", "cozy", "professional", "travel", "deluxe", "essential", "everyday", "hybrid", "retro"]
MATERIALS = ["cotton", "wool", "leather", "linen", "silk", "denim", "steel", "aluminum", "oak", "walnut", "bamboo",
             "ceramic", "glass", "plastic", "rubber", "velvet", "cashmere", "copper", "marble", "nylon"]
COLORS = ["black", "white", "grey", "navy", "blue", "red", "green", "olive", "beige", "brown", "pink", "yellow",
          "orange", "purple", "teal"]
SIZES = {"apparel": ["xs", "s", "m", "l", "xl", "xxl"], "default": ["small", "medium", "large"]}
EXTRA = {"electronics": ("connectivity", ["bluetooth", "usb-c", "wifi", "wired"]),
         "home": ("room", ["living", "bedroom", "kitchen", "office", "bath"]),
         "kitchen": ("capacity", ["0.5l", "1l", "1.5l", "2l", "5l"]),
         "sports": ("level", ["beginner", "intermediate", "pro"]),
         "beauty": ("skin_type", ["dry", "oily", "combination", "sensitive"]),
         "books": ("format", ["hardcover", "paperback", "ebook", "audiobook"]),
         "grocery": ("diet", ["vegan", "gluten-free", "organic", "fair-trade"])}
COMMON = ["design", "quality", "comfort", "perfect", "everyday", "gift", "easy", "clean", "care", "fit", "feature",
          "style", "finish", "season", "use", "home", "travel", "work", "made", "built", "great", "new", "pack",
          "set", "ideal", "warranty", "battery", "hours", "capacity", "size", "weight", "color", "texture"]
SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sa", "li", "no", "vi", "ex", "on", "ar", "el", "is", "ta", "qu",
             "zen", "bo", "fi", "dra", "mor", "pel", "sin", "tra", "ul", "cor", "dex", "nu", "ly"]


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (i + 1) ** s for i in range(n)]


class CatalogGenerator:
    """Products (as ``ProductCreate`` bodies) and shopper queries, reproducible from ``seed``."""

    def __init__(self, seed: int = 1, *, brands: int = 2000, vocabulary: int = 5000) -> None:
        self.rng = random.Random(seed)
        names = {"".join(self.rng.choices(SYLLABLES, k=self.rng.randint(2, 3))).capitalize() for _ in range(brands * 2)}
        self.brands = sorted(names)[:brands]
        self.rng.shuffle(self.brands)
        self.brand_w = list(itertools.accumulate(_zipf_weights(len(self.brands), 1.0)))
        self.leaves = [(d, f, t) for d, fams in DEPARTMENTS.items() for f, types in fams.items() for t in types]
        self.rng.shuffle(self.leaves)
        self.leaf_w = list(itertools.accumulate(_zipf_weights(len(self.leaves), 0.8)))
        words = {"".join(self.rng.choices(SYLLABLES, k=self.rng.randint(2, 4))) for _ in range(vocabulary * 2)}
        self.vocab = sorted(words)[:vocabulary]
        self.rng.shuffle(self.vocab)
        self.vocab_w = list(itertools.accumulate(_zipf_weights(len(self.vocab), 1.05)))

    def product(self, i: int) -> dict[str, Any]:
        rng = self.rng
        dept, family, kind = rng.choices(self.leaves, cum_weights=self.leaf_w)[0]
        brand = rng.choices(self.brands, cum_weights=self.brand_w)[0]
        adjectives = rng.sample(ADJECTIVES, rng.randint(1, 2))
        material = rng.choice(MATERIALS)
        noun = kind.replace("-", " ")
        model = f"{rng.choice('ABCDEFGHKMNPRSTX')}{rng.randint(1, 999)}"
        title = f"{brand} {' '.join(adjectives)} {material} {noun} {model}"
        sentences = [
            f"The {adjectives[0]} {noun} from {brand}, in {material}.",
            " ".join(rng.choices(COMMON, k=rng.randint(4, 9))),
            " ".join(rng.choices(self.vocab, cum_weights=self.vocab_w, k=rng.randint(8, 25))),
            f"Great with a {rng.choice(self.leaves)[2].replace('-', ' ')}.",
        ]
        attributes = {"color": rng.choice(COLORS), "material": material}
        if rng.random() < 0.6:
            attributes["size"] = rng.choice(SIZES.get(dept, SIZES["default"]))
        if dept in EXTRA and rng.random() < 0.7:
            key, values = EXTRA[dept]
            attributes[key] = rng.choice(values)
        base = max(99, int(rng.lognormvariate(8.2, 1.2)))  # cents: median about 36 USD, long tail
        tax = ("reduced" if dept in ("books", "grocery") else "standard")
        if dept == "books" and attributes.get("format") in ("ebook", "audiobook"):
            tax = "digital"
        currencies = {"EUR": (0.92, 2, 0.8), "GBP": (0.79, 2, 0.4), "JPY": (1.5, 0, 0.2)}  # rate, exponent, share
        chosen = [c for c, (_, _, share) in currencies.items() if rng.random() < share]
        variants = []
        for j in range(rng.choices([1, 2, 3, 4], weights=[50, 25, 15, 10])[0]):
            usd = base + j * rng.choice([0, 0, 500, 1000])
            prices = {"USD": usd}
            for c in chosen:
                rate, _exp, _ = currencies[c]
                prices[c] = int(usd * rate)  # JPY has no minor unit: 1.5 yen per US cent
            variants.append({"sku": f"SKU-{i:07d}-{j}", "prices": prices, "tax_category": tax,
                             "weight_g": 0 if tax == "digital" else rng.randint(20, 20000),
                             "attributes": {"color": rng.choice(COLORS)} if j else {}})
        return {"title": title, "description": " ".join(sentences), "brand": brand,
                "category": f"{dept}/{family}/{kind}", "attributes": attributes, "variants": variants,
                "status": "active" if rng.random() < 0.97 else "draft"}

    def products(self, n: int) -> Iterator[dict[str, Any]]:
        for i in range(n):
            yield self.product(i)

    def query(self) -> dict[str, Any]:
        """A shopper's search: 1 to 3 words (product types, adjectives, materials, colors, brands), some filters."""
        rng = self.rng
        dept, family, kind = rng.choices(self.leaves, cum_weights=self.leaf_w)[0]
        words = [kind.replace("-", " ")]
        for _ in range(rng.choices([0, 1, 2], weights=[35, 45, 20])[0]):
            words.append(rng.choice([rng.choice(ADJECTIVES), rng.choice(MATERIALS), rng.choice(COLORS),
                                     rng.choices(self.brands, cum_weights=self.brand_w)[0]]))
        params: dict[str, Any] = {"q": " ".join(words)}
        roll = rng.random()
        if roll < 0.35:
            params["category"] = dept
        elif roll < 0.5:
            params["category"] = f"{dept}/{family}"
        if rng.random() < 0.15:
            params["brands"] = [rng.choices(self.brands, cum_weights=self.brand_w)[0]]
        if rng.random() < 0.3:
            lo = rng.choice([0, 1000, 2500, 5000])
            params["price_min"], params["price_max"] = lo, lo * 4 + 5000
        if rng.random() < 0.2:
            params["attributes"] = [("color", rng.choice(COLORS))]
        return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=3)
    ap.add_argument("--queries", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    gen = CatalogGenerator(args.seed)
    for p in gen.products(args.products):
        print(json.dumps(p))
    for _ in range(args.queries):
        print(json.dumps(gen.query()))


if __name__ == "__main__":
    main()
