"""The music-rights chain of puabomusicchain: hash-chained records, Merkle proofs, royalty splits.

**Records** are plain dicts ``{"seq", "prev", "kind", "body", "hash"}``: ``seq`` counts
from 0, ``prev`` is the previous record's ``hash`` (:data:`GENESIS` for the first),
``kind`` says what the body is (``"rights"``, ``"split"``, ...) and ``hash`` is the
SHA-256 (hex) of the canonical JSON of every other field. Canonical JSON here is
``json.dumps`` with sorted keys, no whitespace, UTF-8 and no NaN; bodies hold strings,
integers (money in minor units), booleans, null, lists and objects, never floats, so the
bytes hashed are the same on every machine.

**Verification** (:func:`verify_chain`) reads the chain once, in order, as a stream; it
keeps only a record of lookahead and the damage found so far, so a chain of millions of
records is checked in constant memory. It reports each damaged record with its position
in the stream, its ``seq`` and the kind of damage: ``altered`` (content does not match its
hash, or its hash was recomputed and the next record's link no longer matches), ``removed``
(a seq never appears), ``reordered`` (a record appears before or after its place), and
``duplicated``. A removed or rehashed *last* record shows only against a published anchor
(the count and head hash).

**Merkle tree** over the record hashes, shaped as RFC 6962's (Certificate Transparency):
leaves are ``SHA-256(0x00 || record hash)``, nodes ``SHA-256(0x01 || left || right)``,
the prefixes keeping a leaf from passing as a node. An odd node at the end of a level is
carried up unchanged (never paired with a copy of itself, the Bitcoin rule that lets two
different lists share a root); this gives exactly RFC 6962's split at the largest power
of two. A proof is the sibling hashes from leaf to root, each with its side.

**Royalties** (:func:`split_payment`): a payment is split by integer weights (basis
points or any weights) with the largest-remainder method: every holder gets the floor of
its exact share, and the cents left over go one each to the largest remainders, ties to
the smaller holder id. Nothing is lost or created, and every holder gets the floor or the
floor plus one cent of its exact share.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

GENESIS = "0" * 64
"""The ``prev`` of the first record."""

Side = Literal["L", "R"]
DamageKind = Literal["altered", "removed", "reordered", "duplicated"]

_LEAF = b"\x00"
_NODE = b"\x01"


# -- records -----------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The bytes a record is hashed over: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a record's canonical JSON, its own ``hash`` field left out."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def make_record(prev: Mapping[str, Any] | None, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The record that follows ``prev`` (``None``: the first record) with this ``kind`` and ``body``."""
    _check_plain(body, "body")
    record: dict[str, Any] = {
        "seq": 0 if prev is None else prev["seq"] + 1,
        "prev": GENESIS if prev is None else prev["hash"],
        "kind": kind,
        "body": dict(body),
    }
    record["hash"] = record_hash(record)
    return record


def build_chain(entries: Iterable[tuple[str, Mapping[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Records for ``(kind, body)`` entries, chained in order; a generator, so any length streams."""
    prev: dict[str, Any] | None = None
    for kind, body in entries:
        prev = make_record(prev, kind, body)
        yield prev


def _check_plain(value: Any, where: str) -> None:
    # Floats are refused: their text form is not canonical across languages, and money is
    # in integer minor units anyway.
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be strings, got {key!r}")
            _check_plain(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for n, item in enumerate(value):
            _check_plain(item, f"{where}[{n}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not allowed in a record (str, int, bool, None, list, dict)")


# -- verification ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Damage:
    """One finding of :func:`verify_chain`: which record, where in the stream, and what is wrong."""

    kind: DamageKind
    seq: int
    """The record's seq (the first of a run of removed records)."""
    position: int
    """0-based place in the stream where it was found (for ``removed``: where the gap is)."""
    detail: str
    through: int | None = None
    """For a run of removed records, the last seq of the run."""


@dataclass(frozen=True, slots=True)
class Anchor:
    """A published state of the chain: how many records it had and the hash of the last one."""

    count: int
    head: str


@dataclass(slots=True)
class ChainReport:
    """What :func:`verify_chain` found: records read, the head reached, and every damage."""

    records: int = 0
    head: str = GENESIS
    damages: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damages


def verify_chain(records: Iterable[Mapping[str, Any]], anchor: Anchor | None = None) -> ChainReport:
    """Check a chain in one pass and say which records are altered, removed, reordered or duplicated.

    Memory is constant in the chain's length (one record of lookahead) plus the damage
    found. Links are checked against each record's *stored* hash, so a record whose body
    was changed but whose hash was left is one ``altered`` finding, not two.
    """
    return _Verifier(anchor).run(records)


class _Verifier:
    """The state of one pass of :func:`verify_chain`."""

    def __init__(self, anchor: Anchor | None) -> None:
        self.anchor = anchor
        self.report = ChainReport()
        self.expected = 0  # the seq that should come next
        self.last_hash = GENESIS  # stored hash of seq expected-1
        self.last_position = -1
        # Runs of seqs not seen where they belonged: start -> (end exclusive, position of the gap).
        self.missing: dict[int, tuple[int, int]] = {}
        # Records seen before their place: seq -> (position, stored hash, prev).
        self.early: dict[int, tuple[int, str, str]] = {}
        # Hashes that a record seen out of turn claims for its predecessor: seq -> hash.
        self.vouched: dict[int, str] = {}

    def damage(self, kind: DamageKind, seq: int, position: int, detail: str, through: int | None = None) -> None:
        self.report.damages.append(Damage(kind, seq, position, detail, through))

    def run(self, records: Iterable[Mapping[str, Any]]) -> ChainReport:
        stream = iter(records)
        current = next(stream, None)
        position = 0
        while current is not None:
            upcoming = next(stream, None)
            self.visit(position, current, upcoming)
            current = upcoming
            position += 1
        self.report.records = position
        self.finish(position)
        self.report.damages.sort(key=lambda d: (d.position, d.seq))
        return self.report

    def visit(self, position: int, record: Mapping[str, Any], upcoming: Mapping[str, Any] | None) -> None:
        seq, stored, prev = record.get("seq"), record.get("hash"), record.get("prev")
        intact = isinstance(stored, str) and record_hash(record) == stored
        if not isinstance(seq, int) or not isinstance(stored, str) or not isinstance(prev, str):
            self.damage("altered", self.expected, position, "malformed record (seq, hash or prev missing)")
            seq, stored, prev = self.expected, str(stored), str(prev)
        elif not intact:
            self.damage("altered", seq, position, "content does not match its hash")
            # An altered seq is not evidence of a move: the record is taken to be in its place.
            seq = self.expected
        if seq == self.expected:
            if intact:  # an altered record's prev proves nothing about its predecessor
                self.link(prev, seq, position)
            self.advance(seq, stored, position)
        elif seq > self.expected:
            if upcoming is not None and upcoming.get("seq") == self.expected:
                self.damage("reordered", seq, position, f"appears before seq {self.expected}")
                self.early[seq] = (position, stored, prev)
            else:
                self.open_gap(seq, position)
                self.vouched[seq - 1] = prev
                self.advance(seq, stored, position)
        else:
            run = self.missing_run(seq)
            if run is None:
                self.damage("duplicated", seq, position, "this seq was already read")
                return
            self.damage("reordered", seq, position, f"appears after seq {self.expected - 1}")
            self.take_missing(run, seq)
            self.check_vouched(seq, stored, position)
            self.vouched[seq - 1] = prev

    def link(self, prev: str, seq: int, position: int) -> None:
        """Check that ``prev`` is the hash of the record before: if not, that record was replaced."""
        if prev == self.last_hash:
            return
        if seq == 0:
            self.damage("altered", 0, position, "first record does not start from the genesis hash")
        else:
            self.damage("altered", seq - 1, self.last_position, f"rehashed: seq {seq} links to another hash")

    def advance(self, seq: int, stored: str, position: int) -> None:
        """Accept ``seq`` as the newest in-place record, then any early records that follow it."""
        self.check_vouched(seq, stored, position)
        self.last_hash, self.last_position, self.expected = stored, position, seq + 1
        while self.expected in self.early:
            early_position, early_hash, early_prev = self.early.pop(self.expected)
            self.link(early_prev, self.expected, early_position)
            self.check_vouched(self.expected, early_hash, early_position)
            self.last_hash, self.last_position = early_hash, early_position
            self.expected += 1

    def check_vouched(self, seq: int, stored: str, position: int) -> None:
        claimed = self.vouched.pop(seq, None)
        if claimed is not None and claimed != stored:
            self.damage("altered", seq, position, f"rehashed: seq {seq + 1} links to another hash")

    def open_gap(self, seq: int, position: int) -> None:
        """Seqs from the expected one up to ``seq`` (excluded) did not come here: note them as missing."""
        self.missing[self.expected] = (seq, position)
        # Records already read early (and reported as reordered) are not missing.
        for early_seq in sorted(s for s in self.early if self.expected <= s < seq):
            run = self.missing_run(early_seq)
            if run is not None:
                self.take_missing(run, early_seq)
            del self.early[early_seq]

    def missing_run(self, seq: int) -> int | None:
        # Few runs are open at once (one per gap found), so a scan is enough.
        for start, (end, _) in self.missing.items():
            if start <= seq < end:
                return start
        return None

    def take_missing(self, start: int, seq: int) -> None:
        end, position = self.missing.pop(start)
        if start < seq:
            self.missing[start] = (seq, position)
        if seq + 1 < end:
            self.missing[seq + 1] = (end, position)

    def finish(self, position: int) -> None:
        # Records read early whose place never came: what should have preceded them is missing.
        for seq in sorted(self.early):
            early_position, early_hash, _ = self.early.pop(seq)
            if seq > self.expected:
                self.missing[self.expected] = (seq, early_position)
            self.last_hash, self.last_position, self.expected = early_hash, early_position, seq + 1
        if self.anchor is not None:
            if self.expected < self.anchor.count:
                self.missing[self.expected] = (self.anchor.count, position)
            elif self.expected == self.anchor.count and self.last_hash != self.anchor.head:
                last = self.expected - 1
                self.damage("altered", last, self.last_position, "rehashed: differs from the anchor's head")
            elif self.expected > self.anchor.count:
                self.damage("duplicated", self.anchor.count, position, "records beyond the anchor's count")
        for start, (end, gap_position) in self.missing.items():
            through = end - 1 if end - 1 > start else None
            detail = "missing" if through is None else f"seqs {start}..{end - 1} missing"
            self.damage("removed", start, gap_position, detail, through)
        self.report.head = self.last_hash


# -- Merkle tree -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MerkleProof:
    """That one record hash is in a tree: its index, the tree's size, and the siblings up to the root."""

    index: int
    size: int
    path: tuple[tuple[Side, str], ...]
    """``(side, sibling hash hex)`` from the leaf up; side ``"L"``: the sibling is on the left."""

    def to_json(self) -> dict[str, Any]:
        """The proof as plain JSON data (what the service returns)."""
        return {"index": self.index, "size": self.size, "path": [[side, h] for side, h in self.path]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MerkleProof:
        """A proof from what :meth:`to_json` gave; sides other than ``L``/``R`` are refused."""
        path: list[tuple[Side, str]] = []
        for side, sibling in data["path"]:
            if side not in ("L", "R") or not isinstance(sibling, str):
                raise ValueError(f"bad proof step {[side, sibling]!r}")
            path.append(("L" if side == "L" else "R", sibling))
        return cls(int(data["index"]), int(data["size"]), tuple(path))

    @property
    def byte_size(self) -> int:
        """Bytes of the proof in binary: 32 a hash, one byte a side."""
        return 33 * len(self.path)


def leaf_hash(record_hash_hex: str) -> bytes:
    """The Merkle leaf of a record hash."""
    return hashlib.sha256(_LEAF + bytes.fromhex(record_hash_hex)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The Merkle node above two children."""
    return hashlib.sha256(_NODE + left + right).digest()


class MerkleTree:
    """A Merkle tree over record hashes, with every level kept so proofs are a lookup per level."""

    def __init__(self, record_hashes: Iterable[str]) -> None:
        level = [leaf_hash(h) for h in record_hashes]
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            up = [node_hash(level[n], level[n + 1]) for n in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                up.append(level[-1])  # the odd last node goes up as it is
            self.levels.append(up)
            level = up

    def __len__(self) -> int:
        return len(self.levels[0])

    @property
    def root(self) -> str:
        """The root (hex) to publish; SHA-256 of nothing for an empty tree, as in RFC 6962."""
        if not self.levels[0]:
            return hashlib.sha256(b"").hexdigest()
        return self.levels[-1][0].hex()

    def proof(self, index: int) -> MerkleProof:
        """The inclusion proof of the record hash at ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside a tree of {len(self)} leaves")
        path: list[tuple[Side, str]] = []
        n = index
        for level in self.levels[:-1]:
            sibling = n ^ 1
            if sibling < len(level):  # no sibling: the node was carried up, nothing to prove
                path.append(("L" if sibling < n else "R", level[sibling].hex()))
            n //= 2
        return MerkleProof(index, len(self), tuple(path))


def merkle_root(record_hashes: Iterable[str]) -> str:
    """The same root as :class:`MerkleTree`, from a stream, holding one hash per level."""
    # stack[k] is a complete subtree of 2**k leaves waiting for its right neighbour.
    stack: list[bytes | None] = []
    count = 0
    for h in record_hashes:
        node = leaf_hash(h)
        count += 1
        k = 0
        while k < len(stack) and stack[k] is not None:
            left = stack[k]
            assert left is not None
            node = node_hash(left, node)
            stack[k] = None
            k += 1
        if k == len(stack):
            stack.append(node)
        else:
            stack[k] = node
    if count == 0:
        return hashlib.sha256(b"").hexdigest()
    # The odd subtrees, smallest (rightmost) first, join their left neighbours upwards.
    acc: bytes | None = None
    for subtree in stack:
        if subtree is not None:
            acc = subtree if acc is None else node_hash(subtree, acc)
    assert acc is not None
    return acc.hex()


def verify_proof(record_hash_hex: str, proof: MerkleProof | Sequence[tuple[str, str]], root: str) -> bool:
    """Whether ``proof`` takes ``record_hash_hex`` to the published ``root``."""
    path = proof.path if isinstance(proof, MerkleProof) else proof
    try:
        node = leaf_hash(record_hash_hex)
        for side, sibling_hex in path:
            sibling = bytes.fromhex(sibling_hex)
            if len(sibling) != 32:
                return False
            if side == "L":
                node = node_hash(sibling, node)
            elif side == "R":
                node = node_hash(node, sibling)
            else:
                return False
    except (ValueError, TypeError):
        return False
    return node.hex() == root


# -- royalties ---------------------------------------------------------------------------


def split_payment(amount: int, shares: Mapping[str, int]) -> dict[str, int]:
    """``amount`` (minor units) split by integer ``shares`` with the largest-remainder method.

    The result sums to ``amount`` exactly; each holder gets ``floor(amount * w / W)`` or one
    more. Leftover cents go to the largest remainders, ties to the smaller holder id, so
    the same split always gives the same cents. Holders with weight 0 get 0.
    """
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise ValueError(f"amount must be a non-negative int of minor units, got {amount!r}")
    if not shares:
        raise ValueError("a split needs at least one holder")
    if any(not isinstance(w, int) or isinstance(w, bool) or w < 0 for w in shares.values()):
        raise ValueError("shares must be non-negative ints")
    total = sum(shares.values())
    if total == 0:
        raise ValueError("shares must not all be 0")
    result: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    given = 0
    for holder, weight in shares.items():
        cents, remainder = divmod(amount * weight, total)
        result[holder] = cents
        given += cents
        remainders.append((-remainder, holder))
    remainders.sort()
    for _, holder in remainders[: amount - given]:
        result[holder] += 1
    return result


@dataclass(slots=True)
class RoyaltyRun:
    """A distribution of payments to works: the cents per work and holder, and per holder."""

    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    by_holder: dict[str, int] = field(default_factory=dict)
    paid_in: int = 0
    paid_out: int = 0


def distribute(payments: Iterable[tuple[str, int]], splits: Mapping[str, Mapping[str, int]]) -> RoyaltyRun:
    """Split each ``(work, amount)`` payment by that work's shares; totals per holder too.

    A work paid twice in one run gets each payment split on its own (and the lines summed),
    so the rounding of one never depends on another.
    """
    run = RoyaltyRun()
    for work, amount in payments:
        if work not in splits:
            raise KeyError(f"no split recorded for work {work!r}")
        run.paid_in += amount
        line = run.lines.setdefault(work, {})
        for holder, cents in split_payment(amount, splits[work]).items():
            line[holder] = line.get(holder, 0) + cents
            run.by_holder[holder] = run.by_holder.get(holder, 0) + cents
            run.paid_out += cents
    return run


def current_splits(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """The shares in force per work: the latest ``split`` record of each work in the chain.

    A split record's body is ``{"work": id, "shares": {holder: weight}}``; records of other
    kinds are skipped.
    """
    splits: dict[str, dict[str, int]] = {}
    for record in records:
        if record.get("kind") == "split":
            body = record["body"]
            splits[body["work"]] = dict(body["shares"])
    return splits


__all__ = [
    "GENESIS",
    "Anchor",
    "ChainReport",
    "Damage",
    "MerkleProof",
    "MerkleTree",
    "RoyaltyRun",
    "build_chain",
    "canonical_json",
    "current_splits",
    "distribute",
    "leaf_hash",
    "make_record",
    "merkle_root",
    "node_hash",
    "record_hash",
    "split_payment",
    "verify_chain",
    "verify_proof",
]
