"""Music chain: verification points at the damaged record, Merkle proofs, royalty splits to the cent."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_ray.compute.musicchain import (
    GENESIS,
    Anchor,
    MerkleProof,
    MerkleTree,
    build_chain,
    canonical_json,
    current_splits,
    distribute,
    make_record,
    merkle_root,
    record_hash,
    split_payment,
    verify_chain,
    verify_proof,
)


def entries(n: int) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for k in range(n):
        if k % 3 == 2:
            out.append(("split", {"work": f"w{k // 3}", "shares": {"alice": 5000 + k, "bob": 5000 - k}}))
        else:
            out.append(("rights", {"work": f"w{k // 3}", "owner": f"label-{k}", "territory": "WW"}))
    return out


def chain(n: int) -> list[dict]:
    return list(build_chain(entries(n)))


def anchor_of(records: list[dict]) -> Anchor:
    return Anchor(len(records), records[-1]["hash"])


def findings(records: list[dict], anchor: Anchor | None = None) -> list[tuple[str, int]]:
    return [(d.kind, d.seq) for d in verify_chain(records, anchor).damages]


# -- records and chain -------------------------------------------------------------------


def test_records_link_and_hash():
    records = chain(5)
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
        assert after["seq"] == before["seq"] + 1
    assert all(r["hash"] == record_hash(r) for r in records)
    report = verify_chain(records, anchor_of(records))
    assert report.ok and report.records == 5 and report.head == records[-1]["hash"]
    assert verify_chain([]).ok


def test_canonical_json_is_order_free_and_refuses_floats():
    assert canonical_json({"b": 1, "a": [True, None, "é"]}) == canonical_json({"a": [True, None, "é"], "b": 1})
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    with pytest.raises(TypeError):
        make_record(None, "split", {"shares": {"alice": 0.5}})
    with pytest.raises(TypeError):
        make_record(None, "rights", {1: "x"})


def test_each_single_damage_is_found_and_named():
    n = 10
    for k in range(n):
        # Body changed, hash left as it was.
        altered = chain(n)
        altered[k]["body"]["owner"] = "mallory"
        assert findings(altered, anchor_of(chain(n))) == [("altered", k)], k

        # Body changed and the record's own hash recomputed: the next link (or the anchor) gives it away.
        rehashed = chain(n)
        rehashed[k]["body"]["owner"] = "mallory"
        rehashed[k]["hash"] = record_hash(rehashed[k])
        assert findings(rehashed, anchor_of(chain(n))) == [("altered", k)], k

        removed = chain(n)
        del removed[k]
        assert findings(removed, anchor_of(chain(n))) == [("removed", k)], k


def test_reordering_is_named():
    n = 12
    for k in range(n - 1):
        swapped = chain(n)
        swapped[k], swapped[k + 1] = swapped[k + 1], swapped[k]
        found = verify_chain(swapped, anchor_of(chain(n))).damages
        assert [d.kind for d in found] == ["reordered"], k
        assert found[0].seq in (k, k + 1)

    # One record moved far down, and one moved far up: the moved record is the one named.
    moved_down = chain(n)
    moved_down.insert(9, moved_down.pop(2))
    assert findings(moved_down, anchor_of(chain(n))) == [("reordered", 2)]
    moved_up = chain(n)
    moved_up.insert(2, moved_up.pop(9))
    report = verify_chain(moved_up, anchor_of(chain(n)))
    assert [(d.kind, d.seq, d.position) for d in report.damages] == [("reordered", 9, 2)]


def test_a_moved_record_that_was_also_rehashed_is_both():
    records = chain(12)
    damaged = copy.deepcopy(records)
    moved = damaged.pop(2)
    moved["body"]["owner"] = "mallory"
    moved["hash"] = record_hash(moved)
    damaged.insert(9, moved)
    # Record 3, read where 2 belonged, vouches for 2's hash; 2 turns up later with another.
    assert findings(damaged, anchor_of(records)) == [("reordered", 2), ("altered", 2)]


def test_tail_damage_needs_the_anchor():
    records = chain(8)
    anchor = anchor_of(records)
    truncated = records[:-2]
    assert verify_chain(truncated).ok  # a shorter chain is still a chain
    found = verify_chain(truncated, anchor).damages
    assert [(d.kind, d.seq, d.through) for d in found] == [("removed", 6, 7)]

    rehashed = copy.deepcopy(records)
    rehashed[-1]["body"]["owner"] = "mallory"
    rehashed[-1]["hash"] = record_hash(rehashed[-1])
    assert verify_chain(rehashed).ok
    assert findings(rehashed, anchor) == [("altered", 7)]


def test_duplicates_and_several_damages_in_one_pass():
    records = chain(20)
    damaged = copy.deepcopy(records)
    damaged[3]["body"]["territory"] = "US"  # altered 3
    del damaged[10]  # removes 10
    damaged.insert(15, copy.deepcopy(records[5]))  # a replay of 5
    assert findings(damaged, anchor_of(records)) == [("altered", 3), ("removed", 10), ("duplicated", 5)]


def test_a_malformed_or_relinked_record_is_one_finding():
    records = chain(6)
    malformed = copy.deepcopy(records)
    del malformed[2]["prev"]
    assert findings(malformed, anchor_of(records)) == [("altered", 2)]
    relinked = copy.deepcopy(records)
    relinked[3]["prev"] = GENESIS  # not rehashed: the record is altered, its predecessor is not blamed
    assert findings(relinked, anchor_of(records)) == [("altered", 3)]


def test_verification_streams():
    # A generator is read once; nothing needs the whole chain in memory.
    report = verify_chain(build_chain(entries(2_000)))
    assert report.ok and report.records == 2_000


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.data())
def test_any_single_damage_is_found(n, data):
    k = data.draw(st.integers(0, n - 1))
    kind = data.draw(st.sampled_from(["altered", "removed", "reordered"]))
    records = chain(n)
    anchor = anchor_of(records)
    damaged = copy.deepcopy(records)
    if kind == "altered":
        damaged[k]["body"]["owner"] = "mallory"
        if data.draw(st.booleans()):
            damaged[k]["hash"] = record_hash(damaged[k])
        expected = {k}
    elif kind == "removed":
        del damaged[k]
        expected = {k}
    else:
        to = data.draw(st.integers(0, n - 1).filter(lambda t: t != k))
        damaged.insert(to, damaged.pop(k))
        # A move past one neighbour is a swap: either of the two may be named.
        expected = {k} if abs(to - k) > 1 else {k, to}
    found = verify_chain(damaged, anchor).damages
    assert len(found) == 1, found
    assert found[0].kind == kind and found[0].seq in expected


# -- Merkle ------------------------------------------------------------------------------


def rfc6962_root(hashes: list[str]) -> bytes:
    """RFC 6962's tree hash, written from its recursive definition, to compare the trees against."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashlib.sha256(b"\x00" + bytes.fromhex(hashes[0])).digest()
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962_root(hashes[:k]) + rfc6962_root(hashes[k:])).digest()


def fake_hashes(n: int) -> list[str]:
    return [hashlib.sha256(str(k).encode()).hexdigest() for k in range(n)]


def test_merkle_root_is_rfc6962_for_every_size():
    for n in range(0, 40):
        hashes = fake_hashes(n)
        tree = MerkleTree(hashes)
        assert tree.root == rfc6962_root(hashes).hex() == merkle_root(iter(hashes)), n


def test_every_proof_verifies_and_is_short():
    hashes = fake_hashes(37)
    tree = MerkleTree(hashes)
    for index, h in enumerate(hashes):
        proof = tree.proof(index)
        assert verify_proof(h, proof, tree.root)
        assert len(proof.path) <= 6  # ceil(log2 37)
        assert proof.byte_size == 33 * len(proof.path)
    assert tree.proof(36).to_json()["size"] == 37
    # Through JSON and back, as a client gets it.
    assert MerkleProof.from_json(json.loads(json.dumps(tree.proof(5).to_json()))) == tree.proof(5)
    with pytest.raises(ValueError):
        MerkleProof.from_json({"index": 0, "size": 1, "path": [["X", "00"]]})
    with pytest.raises(IndexError):
        tree.proof(37)


def test_a_tampered_proof_fails():
    hashes = fake_hashes(21)
    tree = MerkleTree(hashes)
    proof = tree.proof(6)
    path = list(proof.path)
    assert verify_proof(hashes[6], path, tree.root)

    assert not verify_proof(hashes[7], path, tree.root)  # another record
    assert not verify_proof(hashes[6], path, MerkleTree(hashes[:20]).root)  # another root
    flipped = path.copy()
    side, sibling = flipped[1]
    flipped[1] = (side, f"{int(sibling[0], 16) ^ 1:x}{sibling[1:]}")
    assert not verify_proof(hashes[6], flipped, tree.root)
    swapped = path.copy()
    swapped[0] = ("L" if path[0][0] == "R" else "R", path[0][1])
    assert not verify_proof(hashes[6], swapped, tree.root)
    assert not verify_proof(hashes[6], path[:-1], tree.root)
    assert not verify_proof(hashes[6], [*path, path[0]], tree.root)
    assert not verify_proof(hashes[6], [("X", path[0][1]), *path[1:]], tree.root)
    assert not verify_proof(hashes[6], [("L", "zz"), *path[1:]], tree.root)
    assert not verify_proof(hashes[6], [("L", "ab"), *path[1:]], tree.root)


def test_a_record_proves_against_the_chain_root():
    records = chain(9)
    tree = MerkleTree(r["hash"] for r in records)
    assert verify_proof(records[4]["hash"], tree.proof(4), tree.root)
    forged = copy.deepcopy(records[4])
    forged["body"]["owner"] = "mallory"
    assert not verify_proof(record_hash(forged), tree.proof(4), tree.root)


# -- royalties ---------------------------------------------------------------------------


def test_split_examples():
    assert split_payment(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert split_payment(100, {"c": 1, "b": 1, "a": 1}) == {"a": 34, "b": 33, "c": 33}
    # 10.00 at 50 % / 30 % / 20 % in basis points is exact.
    assert split_payment(1000, {"x": 5000, "y": 3000, "z": 2000}) == {"x": 500, "y": 300, "z": 200}
    # 1 cent at 2/3 and 1/3: the larger remainder gets it.
    assert split_payment(1, {"x": 1, "y": 2}) == {"x": 0, "y": 1}
    assert split_payment(0, {"x": 1}) == {"x": 0}
    assert split_payment(7, {"x": 0, "y": 3}) == {"x": 0, "y": 7}
    for bad in ({}, {"x": 0}, {"x": -1, "y": 2}):
        with pytest.raises(ValueError):
            split_payment(10, bad)
    with pytest.raises(ValueError):
        split_payment(-1, {"x": 1})


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 10**12),
    st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.integers(0, 10**6), min_size=1, max_size=12)
    .filter(lambda d: sum(d.values()) > 0),
)
def test_split_never_loses_or_creates_a_cent(amount, shares):
    result = split_payment(amount, shares)
    assert sum(result.values()) == amount
    total = sum(shares.values())
    for holder, weight in shares.items():
        exact = Fraction(amount * weight, total)
        assert result[holder] - exact.numerator // exact.denominator in (0, 1)
    # The same split in any order of holders gives the same cents.
    assert split_payment(amount, dict(reversed(list(shares.items())))) == result


def test_distribution_over_works_balances_and_latest_split_wins():
    records = list(
        build_chain(
            [
                ("split", {"work": "song", "shares": {"alice": 1, "bob": 1}}),
                ("rights", {"work": "song", "owner": "label"}),
                ("split", {"work": "song", "shares": {"alice": 2, "bob": 1}}),
                ("split", {"work": "tune", "shares": {"carol": 7, "dan": 3, "eve": 3}}),
            ]
        )
    )
    splits = current_splits(records)
    assert splits["song"] == {"alice": 2, "bob": 1}
    run = distribute([("song", 100), ("tune", 1001), ("song", 1)], splits)
    assert run.paid_in == run.paid_out == 1102 == sum(run.by_holder.values())
    assert run.lines["song"] == {"alice": 67 + 1, "bob": 33}
    with pytest.raises(KeyError):
        distribute([("unknown", 1)], splits)
