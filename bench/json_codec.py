"""The PostgreSQL pool's JSON codec against the standard library's, on an order's ``results`` as a checkout writes it.

    .venv/bin/python bench/json_codec.py [--number 20000]

``bench/data/order_results.json`` is the ``results`` column of one order of ``bench/orders_profile.py`` (every forward
step's result: the reservation, the price, the payment, the invoice, the shipment; about 4 KB of JSON), which every
saga write sends back. Prints microseconds per call of reading (the column's text into Python) and writing (Python
into a parameter's text), each way, and a small object's for comparison. No stores needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_ray.stores.postgres import json_text, json_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    row = json.loads((Path(__file__).parent / "data" / "order_results.json").read_text())
    small = {"order_id": "71403f9e-81da-4103-bbda-47d3a033e242", "status": "paid", "total": 2201}
    for name, value in (("order results", row), ("small object", small)):
        text = json.dumps(value)
        assert json_value(json_text(value)) == value == json.loads(text)
        print(f"{name} ({len(text)} characters), microseconds a call:")
        for label, fn, arg in (("read, standard library", json.loads, text),
                               ("read, the pool's codec", json_value, text),
                               ("write, standard library", json.dumps, value),
                               ("write, the pool's codec", json_text, value)):
            seconds = min(timeit.repeat(lambda f=fn, a=arg: f(a), number=args.number, repeat=3))
            print(f"  {label:<24} {1e6 * seconds / args.number:7.2f}")


if __name__ == "__main__":
    main()
