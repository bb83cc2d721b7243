"""A minimal PDF 1.4 writer (text, lines, filled rectangles) and a Code 128 barcode, for invoices and labels.

Why our own: invoices and shipping labels need a few lines of text, rules and bars; a
PDF library would bring fonts, images and layout engines for that. The output uses the
standard Type 1 fonts (Helvetica, Helvetica-Bold, Courier: every reader has them, so
nothing is embedded), WinAnsi text (characters outside it print as ``?``), uncompressed
content streams and a classic cross-reference table. It is **deterministic**: no dates,
no random ids, so the same document data gives the same bytes (a PDF can be generated
again on request instead of being stored).

Code 128 (ISO/IEC 15417): code set B (printable ASCII), the mod-103 check symbol, the
stop pattern and 10-module quiet zones. :func:`code128_modules` gives the run widths,
:meth:`Page.barcode` draws them as filled rectangles, and :func:`decode_code128` reads run
widths back (checking start, check symbol and stop), which is how the tests read a label.

Coordinates are PDF points (1/72 in) from the bottom-left corner of the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

A4 = (595.0, 842.0)
A6 = (298.0, 420.0)  # a shipping label

Font = Literal["regular", "bold", "mono"]
_FONTS: dict[str, tuple[str, str]] = {
    "regular": ("F1", "Helvetica"), "bold": ("F2", "Helvetica-Bold"), "mono": ("F3", "Courier"),
}
_COURIER_ADVANCE = 0.6  # every Courier glyph is 600/1000 of the font size wide


def _num(value: float) -> str:
    """A number as PDF writes it: at most three decimals, no exponent, no trailing zeros."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _text(value: str) -> bytes:
    """A PDF literal string of ``value`` in WinAnsi (cp1252); what it cannot hold becomes ``?``."""
    flat = " ".join(value.splitlines())
    raw = flat.encode("cp1252", errors="replace")
    out = bytearray(b"(")
    for byte in raw:
        if byte in (0x28, 0x29, 0x5C):  # ( ) \
            out += b"\\" + bytes([byte])
        elif byte < 0x20 or byte == 0x7F:
            out += b"?"
        else:
            out.append(byte)
    return bytes(out + b")")


@dataclass
class Page:
    """One page: drawing operations in order."""

    width: float
    height: float
    ops: list[bytes] = field(default_factory=list)

    def text(self, x: float, y: float, value: str, *, size: float = 10, font: Font = "regular",
             align: Literal["left", "right"] = "left") -> None:
        """Write one line of text with its baseline at ``y``; ``right`` aligns its end at ``x`` (Courier only)."""
        if align == "right":
            if font != "mono":
                raise ValueError("right-aligned text needs the monospaced font (its width is known)")
            x -= len(value) * size * _COURIER_ADVANCE
        name = _FONTS[font][0]
        self.ops.append(b"BT /%s %s Tf %s %s Td %s Tj ET" % (
            name.encode(), _num(size).encode(), _num(x).encode(), _num(y).encode(), _text(value)))

    def line(self, x1: float, y1: float, x2: float, y2: float, *, width: float = 0.5) -> None:
        self.ops.append(f"{_num(width)} w {_num(x1)} {_num(y1)} m {_num(x2)} {_num(y2)} l S".encode())

    def rect(self, x: float, y: float, w: float, h: float, *, gray: float = 0.0) -> None:
        """A filled rectangle (``gray`` 0 is black, 1 white)."""
        self.ops.append(f"{_num(gray)} g {_num(x)} {_num(y)} {_num(w)} {_num(h)} re f 0 g".encode())

    def barcode(self, x: float, y: float, value: str, *, module: float = 1.0, height: float = 50.0) -> float:
        """Draw ``value`` as a Code 128 barcode (quiet zones included) from ``x``; returns its width in points."""
        at = x
        for i, run in enumerate(code128_modules(value)):
            if i % 2 == 1:  # runs alternate space, bar, space...: the first is the quiet zone
                self.ops.append(f"{_num(at)} {_num(y)} {_num(run * module)} {_num(height)} re f".encode())
            at += run * module
        return at - x


class Document:
    """A PDF document: add pages, draw on them, :meth:`render` the bytes."""

    def __init__(self, *, title: str = "", size: tuple[float, float] = A4) -> None:
        self.title = title
        self.size = size
        self.pages: list[Page] = []

    def page(self) -> Page:
        p = Page(*self.size)
        self.pages.append(p)
        return p

    def render(self) -> bytes:
        """The whole file: header, objects, cross-reference table, trailer."""
        if not self.pages:
            self.page()
        objects: list[bytes] = []

        def add(body: bytes) -> int:
            objects.append(body)
            return len(objects)

        catalog = add(b"")  # filled in once the pages object exists
        pages_id = add(b"")
        fonts = {name: add(b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>"
                           % base.encode())
                 for name, base in _FONTS.values()}
        font_dict = b" ".join(b"/%s %d 0 R" % (n.encode(), i) for n, i in fonts.items())
        kids = []
        for page in self.pages:
            content = b"\n".join(page.ops)
            stream = add(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
            kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %s %s] /Contents %d 0 R "
                            b"/Resources << /Font << %s >> >> >>"
                            % (pages_id, _num(page.width).encode(), _num(page.height).encode(), stream,
                               font_dict)))
        objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id
        objects[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
            b" ".join(b"%d 0 R" % k for k in kids), len(kids))
        info = add(b"<< /Title %s /Producer (nexus-ray) >>" % _text(self.title))

        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # a binary comment: transports keep it binary
        offsets = []
        for number, body in enumerate(objects, start=1):
            offsets.append(len(out))
            out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
        out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
        out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
            len(objects) + 1, catalog, info, xref)
        return bytes(out)


# -- Code 128 ----------------------------------------------------------------------------------------------------

# The 107 symbols of Code 128 as module widths (bar, space, bar, space, bar, space), by symbol value;
# 103-105 are START A/B/C, 106 is STOP (with its final 2-module bar).
_PATTERNS: tuple[str, ...] = (
    "212222", "222122", "222221", "121223", "121322", "131222", "122213", "122312", "132212", "221213",
    "221312", "231212", "112232", "122132", "122231", "113222", "123122", "123221", "223211", "221132",
    "221231", "213212", "223112", "312131", "311222", "321122", "321221", "312212", "322112", "322211",
    "212123", "212321", "232121", "111323", "131123", "131321", "112313", "132113", "132311", "211313",
    "231113", "231311", "112133", "112331", "132131", "113123", "113321", "133121", "313121", "211331",
    "231131", "213113", "213311", "213131", "311123", "311321", "331121", "312113", "312311", "332111",
    "314111", "221411", "431111", "111224", "111422", "121124", "121421", "141122", "141221", "112214",
    "112412", "122114", "122411", "142112", "142211", "241211", "221114", "413111", "241112", "134111",
    "111242", "121142", "121241", "114212", "124112", "124211", "411212", "421112", "421211", "212141",
    "214121", "412121", "111143", "111341", "131141", "114113", "114311", "411113", "411311", "113141",
    "114131", "311141", "411131", "211412", "211214", "211232", "2331112",
)
_START_B = 104
_STOP = 106
QUIET_MODULES = 10
_BY_PATTERN = {p: v for v, p in enumerate(_PATTERNS)}


def code128_values(value: str) -> list[int]:
    """The symbol values of ``value`` in code set B: START B, the characters, the check symbol, STOP."""
    if not value:
        raise ValueError("a barcode needs at least one character")
    data = []
    for ch in value:
        code = ord(ch)
        if not 32 <= code <= 126:
            raise ValueError(f"{ch!r} is not printable ASCII (Code 128 set B)")
        data.append(code - 32)
    check = (_START_B + sum(i * v for i, v in enumerate(data, start=1))) % 103
    return [_START_B, *data, check, _STOP]


def code128_modules(value: str) -> list[int]:
    """Run widths in modules, starting and ending with a quiet zone (space, bar, space, ..., bar, space)."""
    runs = [QUIET_MODULES]
    for v in code128_values(value):
        runs += [int(c) for c in _PATTERNS[v]]
    return [*runs, QUIET_MODULES]


def decode_code128(runs: Sequence[int]) -> str:
    """The text of a code set B barcode from its run widths (bar first; quiet zones stripped or not).

    Raises ValueError for anything that is not a valid symbol: an unknown pattern, a missing
    start or stop, a wrong check symbol.
    """
    widths = list(runs)
    # Quiet zones (10 modules) are wider than any bar or space of a symbol (4 at most): strip them.
    if widths and widths[0] >= QUIET_MODULES:
        widths = widths[1:]
    if widths and widths[-1] >= QUIET_MODULES:
        widths = widths[:-1]
    if len(widths) < 6 + 6 + 7 or (len(widths) - 7) % 6:
        raise ValueError("not a Code 128 symbol: wrong number of bars and spaces")
    symbols = ["".join(str(w) for w in widths[i:i + 6]) for i in range(0, len(widths) - 7, 6)]
    if "".join(str(w) for w in widths[-7:]) != _PATTERNS[_STOP]:
        raise ValueError("no stop pattern")
    values = []
    for s in symbols:
        if s not in _BY_PATTERN:
            raise ValueError(f"unknown pattern {s}")
        values.append(_BY_PATTERN[s])
    if values[0] != _START_B:
        raise ValueError("not a code set B symbol (no START B)")
    *data, check = values[1:]
    if (_START_B + sum(i * v for i, v in enumerate(data, start=1))) % 103 != check:
        raise ValueError("check symbol does not match")
    if any(v > 94 for v in data):
        raise ValueError("a control symbol inside the data (not supported)")
    return "".join(chr(v + 32) for v in data)
