"""Shipping labels: an A6 PDF with the addresses, the service and a Code 128 barcode of the tracking number.

Drawn from the stored shipment on request (the writer is deterministic: the same shipment always
gives the same bytes), so labels are not stored.
"""

from __future__ import annotations

from nexus_ray.compute.pdf import A6, Document

from .models import ShipmentRead

SENDER = ("Nexus Fulfilment", "1 Warehouse Way", "Newark NJ 07102", "US")


def label_pdf(shipment: ShipmentRead) -> bytes:
    doc = Document(title=f"Label {shipment.tracking_number}", size=A6)
    page = doc.page()
    width, height = A6
    page.rect(0, height - 40, width, 40)
    page.text(14, height - 27, shipment.service_level.upper(), size=16, font="bold")
    page.text(width - 14, height - 27, f"ZONE {shipment.zone.upper()}"[:22], size=10, font="mono", align="right")
    y = height - 58
    page.text(14, y, "FROM", size=7, font="bold")
    for line in SENDER:
        y -= 10
        page.text(14, y, line, size=8)
    y -= 20
    page.text(14, y, "TO", size=7, font="bold")
    a = shipment.address
    to = [a.name, a.line1, a.line2, " ".join(p for p in (a.postal_code, a.city) if p), a.region, a.country]
    for line in [t for t in to if t]:
        y -= 14
        page.text(14, y, line[:40], size=11, font="bold" if line == a.name else "regular")
    page.line(14, 150, width - 14, 150, width=1)
    page.text(14, 136, f"Weight {shipment.weight_g} g", size=9)
    page.text(width - 14, 136, f"Order {shipment.order_id}"[:30], size=8, font="mono", align="right")
    module = 1.0
    page.barcode(14, 40, shipment.tracking_number, module=module, height=80)
    page.text(14, 24, shipment.tracking_number, size=12, font="mono")
    return doc.render()
