"""Templates: stored per (key, channel, locale), chosen with locale fallback, rendered safely.

A template's subject, text and HTML hold ``{{name}}`` (or ``{{a.b}}``) placeholders filled from the
message's data. Values are HTML-escaped in the HTML body, and CR/LF are removed from the subject (no
header injection); a missing value renders empty. There is no logic in templates -- no loops, no
conditions, no attribute access on objects -- so a template stored by an administrator cannot run code.

Locale fallback: ``fr-CA`` -> ``fr`` -> the default locale (``notifications_default_locale``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*\}\}")


@dataclass(frozen=True)
class Rendered:
    locale: str
    subject: str
    text: str
    html: str


def _lookup(data: dict[str, Any], path: str) -> str:
    value: Any = data
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return ""
    return "" if value is None else str(value)


def render_text(template: str, data: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: _lookup(data, m.group(1)), template)


def render_html(template: str, data: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: html.escape(_lookup(data, m.group(1)), quote=True), template)


def render_subject(template: str, data: dict[str, Any]) -> str:
    return " ".join(render_text(template, data).split())  # no CR/LF: a subject is one header line


def candidates(locale: str, default: str) -> list[str]:
    out = [locale]
    if "-" in locale:
        out.append(locale.split("-", 1)[0])
    out.append(default)
    return list(dict.fromkeys(out))


async def render_many(conn: asyncpg.Connection | asyncpg.Pool, wanted: Sequence[tuple[str, str, str, dict[str, Any]]],
                      default_locale: str) -> list[Rendered | None]:
    """For each (key, channel, locale, data) of ``wanted``: the template for (key, channel) closest to the locale,
    rendered with the data; None where there is none. One statement for all of them."""
    if not wanted:
        return []
    looked = [candidates(locale, default_locale) for _, _, locale, _ in wanted]
    rows = await conn.fetch(
        "SELECT key, channel, locale, subject, body_text, body_html FROM notif_templates WHERE key = ANY($1::text[]) "
        "AND channel = ANY($2::text[]) AND locale = ANY($3::text[])", sorted({w[0] for w in wanted}),
        sorted({w[1] for w in wanted}), sorted({c for locales in looked for c in locales}))
    found = {(r["key"], r["channel"], r["locale"]): r for r in rows}
    out: list[Rendered | None] = []
    for (key, channel, _, data), locales in zip(wanted, looked, strict=True):
        row = next((found[(key, channel, c)] for c in locales if (key, channel, c) in found), None)
        out.append(None if row is None else Rendered(
            locale=row["locale"], subject=render_subject(row["subject"], data),
            text=render_text(row["body_text"], data), html=render_html(row["body_html"], data)))
    return out
