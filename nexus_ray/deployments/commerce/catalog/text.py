"""How product text becomes search terms: the one analyzer of both indexing and querying.

Lower-cased, accents folded (NFKD, combining marks dropped), split on anything that is not a
letter or a digit, English stop words dropped, a light plural stemmer (``shoes`` -> ``shoe``,
``boxes`` -> ``box``, ``batteries`` -> ``battery``; ``glass`` stays). The same function runs on
the product at write time and on the query at search time, so they always agree.
"""

from __future__ import annotations

import re
import unicodedata

_SPLIT = re.compile(r"[^\w]+|_")
STOP_WORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "your you our we".split()
)
MAX_QUERY_TERMS = 8


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def stem(word: str) -> str:
    """A light English plural stemmer: enough for ``shoes``/``shoe`` to meet, never more aggressive."""
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """The distinct terms of ``text``, in order of first appearance."""
    seen: dict[str, None] = {}
    for raw in _SPLIT.split(_fold(text)):
        if raw and raw not in STOP_WORDS and len(raw) <= 40:
            seen.setdefault(stem(raw), None)
    return list(seen)


def query_terms(q: str) -> list[str]:
    """The distinct terms of a query, at most :data:`MAX_QUERY_TERMS` (the rest are ignored)."""
    return terms(q)[:MAX_QUERY_TERMS]
