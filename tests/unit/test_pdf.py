"""The PDF writer and the Code 128 encoder of nexus_ray.compute.pdf, read back by an independent reader."""

from __future__ import annotations

import string

import pdfread
import pytest

from nexus_ray.compute import pdf


def test_the_check_symbol_is_the_weighted_sum_mod_103():
    # START B 104 + P 48*1 + J 42*2 + J 42*3 + "1" 17*4 + "2" 18*5 + "3" 19*6 + C 35*7 = 879; 879 mod 103 = 55.
    assert pdf.code128_values("PJJ123C") == [104, 48, 42, 42, 17, 18, 19, 35, 55, 106]


def test_every_symbol_has_the_standard_shape():
    for value, pattern in enumerate(pdf._PATTERNS):
        widths = [int(c) for c in pattern]
        assert sum(widths) == (13 if value == 106 else 11), value
        assert sum(widths[0::2]) % 2 == 0 and sum(widths[1::2]) % 2 == 1, value  # even bars, odd spaces
    assert len(set(pdf._PATTERNS)) == 107


@pytest.mark.parametrize("text", ["NX0123456789ABCD", string.printable[:95], " ", "a(b)c\\d~"])
def test_runs_decode_back_to_the_text(text):
    runs = pdf.code128_modules(text)
    assert runs[0] == runs[-1] == pdf.QUIET_MODULES
    assert pdf.decode_code128(runs) == text
    assert pdf.decode_code128(runs[1:-1]) == text  # without the quiet zones


def test_a_damaged_barcode_is_refused():
    runs = pdf.code128_modules("NX42")
    swapped = runs[:]
    # Swap two characters' symbols: the check symbol no longer matches.
    swapped[1 + 6:1 + 12], swapped[1 + 12:1 + 18] = runs[1 + 12:1 + 18], runs[1 + 6:1 + 12]
    with pytest.raises(ValueError, match="check symbol"):
        pdf.decode_code128(swapped)
    with pytest.raises(ValueError):
        pdf.decode_code128(runs[:-3])
    with pytest.raises(ValueError):
        pdf.code128_values("café")  # outside code set B


def test_a_document_is_a_well_formed_deterministic_pdf():
    def build() -> bytes:
        doc = pdf.Document(title="Test (1)")
        page = doc.page()
        page.text(50, 800, "Hello (world) \\ ok", size=12, font="bold")
        page.text(500, 780, "12.50 EUR", font="mono", align="right")
        page.text(50, 760, "Ünïcode ☃", size=9)
        page.line(50, 750, 545, 750)
        page.rect(50, 700, 100, 20, gray=0.8)
        page.barcode(50, 600, "NX77")
        doc.page().text(50, 800, "page two")
        return doc.render()

    data = build()
    assert data == build()
    parsed = pdfread.parse(data)
    assert sum(1 for body in parsed.objects.values() if b"/Type /Page " in body) == 2
    assert pdfread.texts(data) == ["Hello (world) \\ ok", "12.50 EUR", "Ünïcode ?", "page two"]
    assert pdf.decode_code128(pdfread.barcode_runs(data)) == "NX77"
    with pytest.raises(ValueError):
        pdf.Document().page().text(0, 0, "x", align="right")  # right alignment needs the monospaced font
