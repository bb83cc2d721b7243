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


async def render(conn: asyncpg.Connection | asyncpg.Pool, *, key: str, channel: str, locale: str,
                 default_locale: str, data: dict[str, Any]) -> Rendered | None:
    """The template for (key, channel) closest to ``locale``, rendered with ``data``; None if there is none."""
    wanted = candidates(locale, default_locale)
    row = await conn.fetchrow(
        "SELECT locale, subject, body_text, body_html FROM notif_templates WHERE key = $1 AND channel = $2 "
        "AND locale = ANY($3::text[]) ORDER BY array_position($3::text[], locale) LIMIT 1", key, channel, wanted)
    if row is None:
        return None
    return Rendered(locale=row["locale"], subject=render_subject(row["subject"], data),
                    text=render_text(row["body_text"], data), html=render_html(row["body_html"], data))
