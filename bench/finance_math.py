"""Finance compute on one process: chain verification, Merkle proofs, royalty runs, loan schedules.

    PYTHONPATH=. .venv/bin/python bench/finance_math.py [--records 1000000] [--works 10000] [--seed 8]

Pure functions of ``nexus_ray.compute.musicchain`` and ``nexus_ray.compute.loans``, no Ray,
no stores. The chain is built from a seeded generator and written as JSON lines to a
temporary file, then verified streaming from that file, as a stored chain would be; the
time to only read and parse the file is measured too, so the verification's own share is
the difference. Prints one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

from nexus_ray.compute.loans import amortization_schedule, schedule_apr
from nexus_ray.compute.musicchain import (
    Anchor,
    MerkleTree,
    build_chain,
    distribute,
    merkle_root,
    verify_chain,
    verify_proof,
)


class Timer:
    """Wall and CPU seconds of a block: on a shared machine the CPU time is the steadier figure."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    def figures(self, name: str, count: int | None = None, unit: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {f"{name}_wall_s": round(self.wall, 3), f"{name}_cpu_s": round(self.cpu, 3)}
        if count is not None:
            out[f"{unit}_per_s_wall"] = round(count / self.wall)
            out[f"{unit}_per_s_cpu"] = round(count / self.cpu)
        return out


def entries(n: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rights and split records of about 200 to 400 bytes, as the registry writes them."""
    rng = random.Random(seed)
    for k in range(n):
        work = f"work-{rng.randrange(n // 4 + 1):07d}"
        if rng.random() < 0.5:
            yield "rights", {"work": work, "owner": f"label-{rng.randrange(5000)}", "territory": "WW", "since": k}
        else:
            holders = rng.randint(2, 6)
            yield "split", {"work": work, "shares": {f"holder-{rng.randrange(100_000)}": rng.randint(1, 10_000)
                                                     for _ in range(holders)}}


def read_lines(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def bench_chain(records: int, seed: int) -> dict[str, Any]:
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    out: dict[str, Any] = {"records": records}
    try:
        hashes: list[str] = []
        with Timer() as build, open(path, "w", encoding="utf-8") as f:
            for record in build_chain(entries(records, seed)):
                hashes.append(record["hash"])
                f.write(json.dumps(record, ensure_ascii=False))
                f.write("\n")
        out["file_mb"] = round(os.path.getsize(path) / 2**20, 1)
        out |= build.figures("build_and_write")

        with Timer() as parse:
            parsed = sum(1 for _ in read_lines(path))
        out |= parse.figures("read_and_parse_only")

        with Timer() as verify:
            report = verify_chain(read_lines(path), Anchor(records, hashes[-1]))
        assert report.ok and report.records == parsed == records, report.damages[:5]
        out |= verify.figures("verify_streaming_from_file", records, "verified_records")

        # The same chain with one record altered in the middle: found, and named.
        middle = records // 2

        def damaged() -> Iterator[dict[str, Any]]:
            for record in read_lines(path):
                if record["seq"] == middle:
                    record["body"]["tampered"] = True
                yield record

        found = verify_chain(damaged(), Anchor(records, hashes[-1])).damages
        assert [(d.kind, d.seq) for d in found] == [("altered", middle)], found
        out["tampered_record_found"] = f"{found[0].kind} seq {found[0].seq} at position {found[0].position}"
    finally:
        os.unlink(path)
    return out | bench_merkle(hashes, seed)


def bench_merkle(hashes: list[str], seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"merkle_leaves": len(hashes)}
    with Timer() as build:
        tree = MerkleTree(hashes)
    out |= build.figures("merkle_tree_build")
    with Timer() as stream:
        streamed = merkle_root(iter(hashes))
    assert streamed == tree.root
    out |= stream.figures("merkle_root_streaming")

    rng = random.Random(seed)
    indexes = [rng.randrange(len(hashes)) for _ in range(10_000)]
    proofs = [tree.proof(i) for i in indexes]
    with Timer() as check:
        for i, proof in zip(indexes, proofs, strict=True):
            if not verify_proof(hashes[i], proof, tree.root):
                raise AssertionError(f"proof {i} failed")
    lengths = [len(p.path) for p in proofs]
    out |= {
        "proof_hashes_min_max": [min(lengths), max(lengths)],
        "proof_bytes_binary_max": max(p.byte_size for p in proofs),
        "proof_bytes_json_max": max(len(json.dumps(p.to_json(), separators=(",", ":"))) for p in proofs),
        "proof_verify_us_wall": round(check.wall / len(proofs) * 1e6, 1),
        "proof_verify_us_cpu": round(check.cpu / len(proofs) * 1e6, 1),
    }
    return out


def bench_royalties(works: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    splits: dict[str, dict[str, int]] = {}
    for w in range(works):
        holders = rng.choice([1, 2, 3, 3, 4, 5, 7, 11, 13, 40])
        # Uneven: weights from 1 to 9,999 that rarely divide a payment evenly.
        splits[f"work-{w}"] = {f"holder-{rng.randrange(works)}-{h}": rng.randint(1, 9_999) for h in range(holders)}
    payments = [(f"work-{w}", rng.randint(1, 5_000_000)) for w in range(works)]

    with Timer() as timer:
        run = distribute(payments, splits)
    lines = sum(len(line) for line in run.lines.values())
    uneven = 0
    # Each holder of each work: floor or floor + 1 of the exact share.
    for work, amount in payments:
        total = sum(splits[work].values())
        for holder, weight in splits[work].items():
            exact = Fraction(amount * weight, total)
            uneven += exact.denominator != 1
            assert run.lines[work][holder] - (exact.numerator // exact.denominator) in (0, 1)
    paid_in = sum(amount for _, amount in payments)
    return {
        "works": works,
        "split_lines": lines,
        "lines_with_a_fraction_of_a_cent": uneven,
        **timer.figures("royalty_run", lines, "lines"),
        "paid_in_cents": paid_in,
        "paid_out_cents": run.paid_out,
        "sum_by_holder_cents": sum(run.by_holder.values()),
        "cents_lost_or_created": run.paid_out - paid_in,
    }


def bench_loans(seed: int, count: int = 300) -> dict[str, Any]:
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for months in (60, 360):
        terms = [
            (rng.randint(100_000, 100_000_000), Decimal(rng.randint(0, 3000)).scaleb(-4), rng.randint(0, 5_000))
            for _ in range(count)
        ]
        with Timer() as build:
            schedules = [amortization_schedule(p, r, months, f) for p, r, f in terms]
        out |= build.figures(f"schedules_{months}m", count, f"schedules_{months}m")
        with Timer() as apr:
            for s in schedules:
                schedule_apr(s)
        out |= apr.figures(f"aprs_{months}m", count, f"aprs_{months}m")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--works", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()

    results: dict[str, Any] = {}
    results["loans"] = bench_loans(args.seed)
    results["royalties"] = bench_royalties(args.works, args.seed)
    results["chain"] = bench_chain(args.records, args.seed)
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    results["python"] = sys.version.split()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
