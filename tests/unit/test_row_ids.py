"""Row ids for bulk inserts (stores.postgres.new_ids): version 7, in order within a lot and across lots, distinct."""

from __future__ import annotations

import time

from nexus_ray.stores.postgres import new_ids


def test_ids_are_version_7_in_order_and_distinct():
    before = time.time_ns() // 1_000_000
    lot = new_ids(5000)  # more than the 12-bit position holds: made as two lots
    after = time.time_ns() // 1_000_000
    assert len(set(lot)) == 5000
    assert all(i.version == 7 and i.variant == "specified in RFC 4122" for i in lot)
    assert all(before <= i.int >> 80 <= after for i in lot)  # the millisecond of their making
    assert lot[:4096] == sorted(lot[:4096]) and lot[4096:] == sorted(lot[4096:])
    later = new_ids(3)
    while later[0].int >> 80 == lot[-1].int >> 80:  # a lot of the next millisecond sorts after
        later = new_ids(3)
    assert min(later) > max(lot)
    assert len({i.int & ((1 << 62) - 1) for i in new_ids(1000)}) == 1000  # the random part differs
