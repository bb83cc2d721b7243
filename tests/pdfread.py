"""Reads back the PDFs the platform writes (nexus_ray.compute.pdf), independently of the writer: enough to
prove a file is a well-formed PDF (header, every object where the cross-reference table says, trailer,
startxref), to list the text it shows, and to measure the bars of a barcode on it."""

from __future__ import annotations

import re
from dataclasses import dataclass

_OBJ = re.compile(rb"(\d+) 0 obj\n")
_SHOW = re.compile(rb"\((?P<s>(?:\\.|[^\\)])*)\) Tj")
_BAR = re.compile(rb"^(-?[\d.]+) (-?[\d.]+) ([\d.]+) ([\d.]+) re f$", re.M)


@dataclass
class Parsed:
    objects: dict[int, bytes]
    root: int

    def streams(self) -> list[bytes]:
        out = []
        for body in self.objects.values():
            m = re.match(rb"<< /Length (\d+) >>\nstream\n", body)
            if m:
                out.append(body[m.end():m.end() + int(m.group(1))])
        return out


def parse(data: bytes) -> Parsed:
    """The objects of a PDF, after checking its structure (AssertionError says what is wrong)."""
    assert data.startswith(b"%PDF-1."), "no PDF header"
    assert data.rstrip().endswith(b"%%EOF"), "no %%EOF"
    start = int(re.search(rb"startxref\n(\d+)\n%%EOF", data).group(1))
    assert data[start:start + 4] == b"xref", "startxref does not point at the xref table"
    head = re.match(rb"xref\n0 (\d+)\n", data[start:])
    assert head, "malformed xref header"
    count = int(head.group(1))
    entries = data[start + head.end():start + head.end() + 20 * count]
    objects = {}
    for n in range(1, count):
        entry = entries[20 * n:20 * n + 20]
        assert re.fullmatch(rb"\d{10} \d{5} n \n", entry), f"bad xref entry {n}: {entry!r}"
        offset = int(entry[:10])
        m = _OBJ.match(data, offset)
        assert m and int(m.group(1)) == n, f"object {n} is not at offset {offset}"
        end = data.index(b"\nendobj\n", m.end())
        objects[n] = data[m.end():end]
    trailer = data[start + head.end() + 20 * count:]
    root = re.search(rb"/Root (\d+) 0 R", trailer)
    assert root and b"/Type /Catalog" in objects[int(root.group(1))], "no catalog"
    assert int(re.search(rb"/Size (\d+)", trailer).group(1)) == count
    return Parsed(objects, int(root.group(1)))


def _unescape(raw: bytes) -> str:
    return re.sub(rb"\\(.)", rb"\1", raw).decode("cp1252")


def texts(data: bytes) -> list[str]:
    """Every string the pages show, in drawing order."""
    return [_unescape(m.group("s")) for s in parse(data).streams() for m in _SHOW.finditer(s)]


def barcode_runs(data: bytes) -> list[int]:
    """The barcode's bar and space widths in modules (bar first), from the black rectangles it is drawn with."""
    bars = sorted((float(m.group(1)), float(m.group(3))) for s in parse(data).streams() for m in _BAR.finditer(s))
    assert bars, "no bars"
    module = min(w for _, w in bars)
    runs = []
    for i, (x, w) in enumerate(bars):
        if i:
            prev_x, prev_w = bars[i - 1]
            runs.append(round((x - prev_x - prev_w) / module))
        runs.append(round(w / module))
    return runs
