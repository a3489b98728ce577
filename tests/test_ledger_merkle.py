"""Merkle proofs (RFC 9162) over the ledger, signed tree heads, proof bundles, and the
``ledger-lite proof`` command.

The reference implementation below follows the RFC's recursive definitions (MTH, PATH,
SUBPROOF) literally and is checked against the published Certificate Transparency
vectors; `MerkleTree` must agree with it byte for byte. The property tests run against a
100k-leaf tree built once per module: every proof verifies, and every mutation of a proof,
leaf, index, size or root fails. A bare proof binds the tree size only through the root,
so for a changed size the tests state exactly when verification still passes (the hashing
is identical) and show that the signed tree head closes that gap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger_lite import (
    EMPTY_ROOT,
    DecodeError,
    MerkleTree,
    ProofBundle,
    SqliteStore,
    TreeHead,
    check_consistency,
    check_inclusion,
    leaf_hash,
    sign_tree_head,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)
from ledger_lite.cli import main
from ledger_lite.merkle import (
    consistency_proof_length,
    inclusion_proof_length,
    node_hash,
    root,
)
from ledger_lite.treehead import MAX_BUNDLE_BYTES, tree_head_signing_bytes

from .test_ledger_support import SWARM, Swarm, delta_commit, round_open, seed_key

N = 100_000
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- reference


def ref_mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 9162 §2.1.1 defines it."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1."""
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 §2.1.4.1."""
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


# The Certificate Transparency reference leaves and roots (RFC 6962 test data, also used
# by transparency-dev/merkle): roots for sizes 0..8, and a few proofs.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657")
    + ("606162636465666768696a6b6c6d6e6f",)
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (2, 8): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


# --------------------------------------------------------------------------- shapes


def inclusion_shape(i: int, n: int) -> tuple[str, ...] | None:
    """The hashing a verifier does for leaf i of size n: each proof element goes left
    ("L") or right ("R") of the running hash. None when (i, n) is no valid position.
    Two (i, n) with equal shapes verify exactly the same proofs under the same root."""
    if not 0 <= i < n:
        return None
    fn, sn, ops = i, n - 1, []
    for _ in range(inclusion_proof_length(i, n)):
        if fn & 1 or fn == sn:
            ops.append("L")
            while fn & 1 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            ops.append("R")
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0
    return tuple(ops)


def consistency_shape(m: int, n: int) -> tuple[Any, ...] | None:
    """The hashing a verifier does for a consistency proof from m to n (0 < m < n): the
    proof length, whether the old root is prepended, and which running hashes each element
    feeds. The degenerate pairs get shapes of their own; invalid pairs get None."""
    if not 0 <= m <= n:
        return None
    if m in (0, n):
        return ("empty", m == 0)
    length = consistency_proof_length(m, n)
    prepend = m & (m - 1) == 0
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    ops = []
    for _ in range(length + prepend - 1):
        if fn & 1 or fn == sn:
            ops.append("both")
            while fn & 1 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            ops.append("sr")
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0
    return (length, prepend, tuple(ops))


# --------------------------------------------------------------------------- fixtures


def synthetic_leaf(i: int) -> bytes:
    """A stand-in for an entry hash: 32 bytes, unique per index."""
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


@pytest.fixture(scope="module")
def big() -> MerkleTree:
    """A 100k-leaf tree, built once."""
    return MerkleTree(synthetic_leaf(i) for i in range(N))


EDGE_SIZES = sorted(
    {1, 2, 3, 5, 6, 7, N - 1, N}
    | {1 << k for k in range(17)}
    | {(1 << k) + 1 for k in range(1, 17)}
    | {(1 << k) - 1 for k in range(2, 17)}
)
sizes = st.one_of(st.sampled_from(EDGE_SIZES), st.integers(1, N))


@st.composite
def leaf_positions(draw: st.DrawFn) -> tuple[int, int]:
    """(index, size) with 0 <= index < size <= N, edge cases often."""
    n = draw(sizes)
    i = draw(st.one_of(st.sampled_from([0, n - 1, n // 2, n & (n - 1)]), st.integers(0, n - 1)))
    return min(i, n - 1), n


@st.composite
def size_pairs(draw: st.DrawFn) -> tuple[int, int]:
    """(old, new) with 0 < old < new <= N, edge cases often."""
    n = draw(st.one_of(st.sampled_from([s for s in EDGE_SIZES if s >= 2]), st.integers(2, N)))
    split = 1 << ((n - 1).bit_length() - 1)
    m = draw(st.one_of(st.sampled_from([1, n - 1, split, split + 1]), st.integers(1, n - 1)))
    return min(m, n - 1), n


def flip(b: bytes, byte: int, bit: int) -> bytes:
    return b[:byte] + bytes([b[byte] ^ (1 << bit)]) + b[byte + 1 :]


# --------------------------------------------------------------------------- golden vectors


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert root([]) == EMPTY_ROOT == MerkleTree().root() == MerkleTree([b"x"]).root(0)


def test_leaf_and_node_prefixes() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest() != node_hash(b, a)


def test_ct_reference_vectors() -> None:
    tree = MerkleTree(CT_LEAVES)
    for n, want in enumerate(CT_ROOTS):
        assert tree.root(n).hex() == want == ref_mth(CT_LEAVES[:n]).hex()
        assert root(CT_LEAVES[:n]).hex() == want
    for (i, n), want in CT_INCLUSION.items():
        proof = tree.inclusion_proof(i, n)
        assert [p.hex() for p in proof] == want
        assert verify_inclusion(tree.leaf_hash_at(i), i, n, proof, tree.root(n))
    for (m, n), want in CT_CONSISTENCY.items():
        proof = tree.consistency_proof(m, n)
        assert [p.hex() for p in proof] == want
        assert verify_consistency(m, n, tree.root(m), tree.root(n), proof)


def test_agrees_with_the_rfc_definitions_for_every_small_tree() -> None:
    leaves = [synthetic_leaf(i)[: i % 7] for i in range(40)]  # leaf data of varied length
    tree = MerkleTree(leaves)
    for n in range(len(leaves) + 1):
        d = leaves[:n]
        assert tree.root(n) == ref_mth(d)
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == ref_path(i, d)
            assert len(proof) == inclusion_proof_length(i, n)
            assert verify_inclusion(leaf_hash(d[i]), i, n, proof, ref_mth(d))
        for m in range(n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == ([] if m in (0, n) else ref_subproof(m, d, True))
            assert len(proof) == consistency_proof_length(m, n)
            assert verify_consistency(m, n, ref_mth(leaves[:m]), ref_mth(d), proof)


def test_index_alone_always_changes_the_hashing() -> None:
    # Two leaves of one tree never share a shape, so a proof moved to another index
    # cannot verify: the mutation tests below rely on this for every size.
    for n in range(1, 300):
        assert len({inclusion_shape(i, n) for i in range(n)}) == n


def test_big_tree_matches_reference(big: MerkleTree) -> None:
    leaves = [synthetic_leaf(i) for i in range(N)]
    assert big.size == len(big) == N
    assert big.root() == ref_mth(leaves)
    for n in (1, 2, 3, 1000, 4096, 4097, 65535, 65536, 65537, N - 1):
        assert big.root(n) == ref_mth(leaves[:n]), n


def test_tree_errors() -> None:
    tree = MerkleTree([b"a", b"b", b"c"])
    for bad_index, size in ((3, 3), (-1, 3), (2, 2), (True, 3)):
        with pytest.raises(ValueError):
            tree.inclusion_proof(bad_index, size)
    for old, new in ((0, 4), (3, 2), (-1, 3)):
        with pytest.raises(ValueError):
            tree.consistency_proof(old, new)
    with pytest.raises(ValueError):
        tree.root(4)
    with pytest.raises(ValueError):
        tree.leaf_hash_at(3)
    with pytest.raises(TypeError):
        tree.append("not bytes")  # type: ignore[arg-type]
    assert tree.append(b"d") == 3 and tree.size == 4
    assert repr(tree) == "MerkleTree(size=4)"


def test_concurrent_readers_see_only_complete_trees() -> None:
    """One writer appends while a reader proves and verifies at whatever size it sees."""
    tree = MerkleTree()
    tree.append(synthetic_leaf(0))
    done = threading.Event()
    failures: list[tuple[int, int]] = []

    def read() -> None:
        i = 0
        while not done.is_set():
            n = tree.size
            i = (i * 7919 + 1) % n
            proof = tree.inclusion_proof(i, n)
            if not verify_inclusion(tree.leaf_hash_at(i), i, n, proof, tree.root(n)):
                failures.append((i, n))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 30_000):
            tree.append(synthetic_leaf(i))
    finally:
        done.set()
        reader.join()
    assert failures == []


# --------------------------------------------------------------------------- inclusion


@PROPS
@given(pos=leaf_positions())
def test_inclusion_proofs_verify(big: MerkleTree, pos: tuple[int, int]) -> None:
    i, n = pos
    proof = big.inclusion_proof(i, n)
    assert len(proof) == inclusion_proof_length(i, n) <= 17
    assert verify_inclusion(leaf_hash(synthetic_leaf(i)), i, n, proof, big.root(n))


@PROPS
@given(pos=leaf_positions(), data=st.data())
def test_inclusion_rejects_flipped_proof_bytes(
    big: MerkleTree, pos: tuple[int, int], data: st.DataObject
) -> None:
    i, n = pos
    proof = big.inclusion_proof(i, n)
    assume(proof)
    j = data.draw(st.integers(0, len(proof) - 1))
    proof[j] = flip(proof[j], data.draw(st.integers(0, 31)), data.draw(st.integers(0, 7)))
    assert not verify_inclusion(big.leaf_hash_at(i), i, n, proof, big.root(n))


@PROPS
@given(pos=leaf_positions(), data=st.data())
def test_inclusion_rejects_dropped_added_swapped_elements(
    big: MerkleTree, pos: tuple[int, int], data: st.DataObject
) -> None:
    i, n = pos
    leaf, good, r = big.leaf_hash_at(i), big.inclusion_proof(i, n), big.root(n)
    extra = data.draw(st.sampled_from([b"\x00" * 32, leaf, r, *good]))
    added = list(good)
    added.insert(data.draw(st.integers(0, len(good))), extra)
    assert not verify_inclusion(leaf, i, n, added, r)
    if good:
        dropped = list(good)
        del dropped[data.draw(st.integers(0, len(good) - 1))]
        assert not verify_inclusion(leaf, i, n, dropped, r)
    if len(good) >= 2:
        a, b = data.draw(
            st.lists(st.integers(0, len(good) - 1), min_size=2, max_size=2, unique=True)
        )
        swapped = list(good)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        assert not verify_inclusion(leaf, i, n, swapped, r)


@PROPS
@given(pos=leaf_positions(), byte=st.integers(0, 31), bit=st.integers(0, 7))
def test_inclusion_rejects_other_leaf_or_root(
    big: MerkleTree, pos: tuple[int, int], byte: int, bit: int
) -> None:
    i, n = pos
    leaf, proof, r = big.leaf_hash_at(i), big.inclusion_proof(i, n), big.root(n)
    assert not verify_inclusion(flip(leaf, byte, bit), i, n, proof, r)
    assert not verify_inclusion(leaf, i, n, proof, flip(r, byte, bit))
    assert not verify_inclusion(synthetic_leaf(i), i, n, proof, r)  # entry hash, not leaf hash
    if n < N:
        assert not verify_inclusion(leaf, i, n, proof, big.root(n + 1))


@PROPS
@given(pos=leaf_positions(), other=st.integers(-3, N + 3))
def test_inclusion_rejects_other_index(big: MerkleTree, pos: tuple[int, int], other: int) -> None:
    i, n = pos
    assume(other != i)
    proof = big.inclusion_proof(i, n)
    assert not verify_inclusion(big.leaf_hash_at(i), other, n, proof, big.root(n))


@PROPS
@given(pos=leaf_positions(), other=st.one_of(sizes, st.integers(-2, N + 2)))
def test_inclusion_with_other_size_verifies_only_when_hashing_is_identical(
    big: MerkleTree, pos: tuple[int, int], other: int
) -> None:
    i, n = pos
    assume(other != n)
    proof = big.inclusion_proof(i, n)
    ok = verify_inclusion(big.leaf_hash_at(i), i, other, proof, big.root(n))
    assert ok == (inclusion_shape(i, other) == inclusion_shape(i, n))


def test_signed_head_binds_the_size(big: MerkleTree) -> None:
    # Leaf 0 has the same path in trees of 6 and 7 leaves: the bare proof cannot tell the
    # sizes apart, the signed tree head can.
    i, n, other = 0, 6, 7
    assert inclusion_shape(i, n) == inclusion_shape(i, other)
    proof = big.inclusion_proof(i, n)
    assert verify_inclusion(big.leaf_hash_at(i), i, other, proof, big.root(n))
    key = seed_key(40)
    head = sign_tree_head(key, SWARM, "gw1", n, big.root(n), 1)
    bundle = ProofBundle.for_inclusion(head, i, proof)
    assert check_inclusion(bundle, synthetic_leaf(i), key.public_hex)
    lying = dataclasses.replace(bundle, head=dataclasses.replace(head, tree_size=other))
    assert not check_inclusion(lying, synthetic_leaf(i), key.public_hex)


# --------------------------------------------------------------------------- consistency


@PROPS
@given(pair=size_pairs())
def test_consistency_proofs_verify(big: MerkleTree, pair: tuple[int, int]) -> None:
    m, n = pair
    proof = big.consistency_proof(m, n)
    assert len(proof) == consistency_proof_length(m, n) <= 2 * 17
    assert verify_consistency(m, n, big.root(m), big.root(n), proof)


def test_consistency_degenerate_cases(big: MerkleTree) -> None:
    r5, r8 = big.root(5), big.root(8)
    assert big.consistency_proof(5, 5) == [] and big.consistency_proof(0, 8) == []
    assert verify_consistency(5, 5, r5, r5, [])
    assert not verify_consistency(5, 5, r5, r8, [])
    assert not verify_consistency(5, 5, r5, r5, [r5])
    assert verify_consistency(0, 8, EMPTY_ROOT, r8, [])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 8, r5, r8, [])
    assert not verify_consistency(0, 8, EMPTY_ROOT, r8, [r8])
    assert not verify_consistency(5, 8, r5, r8, [])
    assert not verify_consistency(8, 5, r8, r5, big.consistency_proof(5, 8))


@PROPS
@given(pair=size_pairs(), data=st.data())
def test_consistency_rejects_flipped_proof_bytes(
    big: MerkleTree, pair: tuple[int, int], data: st.DataObject
) -> None:
    m, n = pair
    proof = big.consistency_proof(m, n)
    j = data.draw(st.integers(0, len(proof) - 1))
    proof[j] = flip(proof[j], data.draw(st.integers(0, 31)), data.draw(st.integers(0, 7)))
    assert not verify_consistency(m, n, big.root(m), big.root(n), proof)


@PROPS
@given(pair=size_pairs(), data=st.data())
def test_consistency_rejects_dropped_added_swapped_elements(
    big: MerkleTree, pair: tuple[int, int], data: st.DataObject
) -> None:
    m, n = pair
    good, old, new = big.consistency_proof(m, n), big.root(m), big.root(n)
    added = list(good)
    extra = data.draw(st.sampled_from([b"\x00" * 32, old, new, *good]))
    added.insert(data.draw(st.integers(0, len(good))), extra)
    assert not verify_consistency(m, n, old, new, added)
    dropped = list(good)
    del dropped[data.draw(st.integers(0, len(good) - 1))]
    assert not verify_consistency(m, n, old, new, dropped)
    if len(good) >= 2:
        a, b = data.draw(
            st.lists(st.integers(0, len(good) - 1), min_size=2, max_size=2, unique=True)
        )
        swapped = list(good)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        assert not verify_consistency(m, n, old, new, swapped)


@PROPS
@given(pair=size_pairs(), byte=st.integers(0, 31), bit=st.integers(0, 7))
def test_consistency_rejects_other_roots(
    big: MerkleTree, pair: tuple[int, int], byte: int, bit: int
) -> None:
    m, n = pair
    proof, old, new = big.consistency_proof(m, n), big.root(m), big.root(n)
    assert not verify_consistency(m, n, flip(old, byte, bit), new, proof)
    assert not verify_consistency(m, n, old, flip(new, byte, bit), proof)
    assert not verify_consistency(m, n, new, old, proof)
    assert not verify_consistency(m, n, big.root(m - 1), new, proof)
    if n < N:
        assert not verify_consistency(m, n, old, big.root(n + 1), proof)


@PROPS
@given(
    pair=size_pairs(),
    other=st.one_of(sizes, st.integers(-2, N + 2)),
    which=st.sampled_from(["old", "new"]),
)
def test_consistency_with_other_sizes_verifies_only_when_hashing_is_identical(
    big: MerkleTree, pair: tuple[int, int], other: int, which: str
) -> None:
    m, n = pair
    proof, old, new = big.consistency_proof(m, n), big.root(m), big.root(n)
    m2, n2 = (other, n) if which == "old" else (m, other)
    assume((m2, n2) != (m, n))
    ok = verify_consistency(m2, n2, old, new, proof)
    assert ok == (consistency_shape(m2, n2) == consistency_shape(m, n))


# --------------------------------------------------------------------------- hostile input

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=70),
    st.binary(max_size=40),
    st.lists(st.binary(max_size=33), max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@PROPS
@given(args=st.tuples(JUNK, JUNK, JUNK, JUNK, JUNK), which=st.integers(0, 4))
def test_verifiers_never_raise(big: MerkleTree, args: tuple[Any, ...], which: int) -> None:
    i, n = 3, 10
    good_inc = [big.leaf_hash_at(i), i, n, big.inclusion_proof(i, n), big.root(n)]
    good_inc[which] = args[which]
    assert verify_inclusion(*good_inc) in (False, True)
    good_con = [4, 10, big.root(4), big.root(10), big.consistency_proof(4, 10)]
    good_con[which] = args[which]
    assert verify_consistency(*good_con) in (False, True)
    assert verify_inclusion(*args) is False
    assert verify_consistency(*args) is False


def test_verifiers_reject_malformed_arguments(big: MerkleTree) -> None:
    leaf, proof, r = big.leaf_hash_at(5), big.inclusion_proof(5, 8), big.root(8)
    assert verify_inclusion(leaf, 5, 8, tuple(proof), r)  # any sequence will do
    assert verify_inclusion(bytearray(leaf), 5, 8, [bytearray(p) for p in proof], bytearray(r))
    for bad in (
        (leaf[:31], 5, 8, proof, r),
        (leaf, 5, 8, proof, r[:31]),
        (leaf, 5, 8, [proof[0][:31], *proof[1:]], r),
        (leaf, 5, 8, [p.hex() for p in proof], r),
        (leaf, 5, 8, None, r),
        (leaf, 8, 8, proof, r),
        (leaf, -1, 8, proof, r),
        (leaf, True, 8, proof, r),
        (leaf, 5.0, 8, proof, r),
        (leaf, 5, 2**64, proof, r),
        (leaf.hex(), 5, 8, proof, r),
    ):
        assert verify_inclusion(*bad) is False, bad  # type: ignore[arg-type]
    proof = big.consistency_proof(6, 8)
    r6 = big.root(6)
    for bad in (
        (6, 8, r6[:31], r, proof),
        (6, 8, r6, r[:31], proof),
        (6, 8, r6, r, [proof[0][:31], *proof[1:]]),
        (6, 8, r6, r, None),
        (-1, 8, r6, r, proof),
        (6, True, r6, r, proof),
        (9, 8, r6, r, proof),
    ):
        assert verify_consistency(*bad) is False, bad  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tree heads

GW_KEY = seed_key(41)
ROOT = bytes(range(32))


def test_tree_head_signing_bytes_are_pinned() -> None:
    head = sign_tree_head(GW_KEY, "swarm-a", "gw-1", 5, ROOT, 1_700_000_000_000)
    assert head.signing_bytes() == (
        b'{"gateway_id":"gw-1","root":"' + ROOT.hex().encode() + b'","swarm":"swarm-a",'
        b'"timestamp_ms":1700000000000,"tree_size":5,"type":"ledger_lite/tree_head/v1"}'
    )
    assert head.signing_bytes() == tree_head_signing_bytes(
        "swarm-a", 5, ROOT.hex(), 1_700_000_000_000, "gw-1"
    )
    assert head.root == ROOT
    assert sign_tree_head(GW_KEY, "swarm-a", "gw-1", 5, ROOT.hex(), 1_700_000_000_000) == head


def test_tree_head_sign_verify_and_tamper() -> None:
    head = sign_tree_head(GW_KEY, SWARM, "gw1", 12, ROOT, 1_700_000_000_123)
    assert verify_tree_head(head, GW_KEY.public_hex)
    assert not verify_tree_head(head, seed_key(42).public_hex)
    assert not verify_tree_head(head, "zz")
    assert not verify_tree_head(head.to_dict(), GW_KEY.public_hex)  # type: ignore[arg-type]
    for change in (
        {"swarm": "swarm-b"},
        {"tree_size": 13},
        {"tree_size": 11},
        {"root_hex": flip(ROOT, 0, 0).hex()},
        {"timestamp_ms": 1_700_000_000_124},
        {"gateway_id": "gw2"},
        {"signature_hex": flip(bytes.fromhex(head.signature_hex), 10, 3).hex()},
    ):
        assert not verify_tree_head(dataclasses.replace(head, **change), GW_KEY.public_hex)


def test_tree_head_shape_checks() -> None:
    head = sign_tree_head(GW_KEY, SWARM, "gw1", 12, ROOT, 7)
    assert TreeHead.from_dict(head.to_dict()) == head
    assert TreeHead.from_dict(json.loads(json.dumps(head.to_dict()))) == head
    for change in (
        {"swarm": "bad swarm"},
        {"gateway_id": ""},
        {"tree_size": -1},
        {"tree_size": True},
        {"tree_size": 2**63},
        {"timestamp_ms": 1.5},
        {"root_hex": ROOT.hex().upper()},
        {"root_hex": ROOT.hex()[:62]},
        {"signature_hex": "ab" * 63},
        {"signature_hex": None},
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(head, **change)
        with pytest.raises(DecodeError):
            TreeHead.from_dict({**head.to_dict(), **change})
    for bad in (None, [], {}, {**head.to_dict(), "extra": 1}, {"swarm": SWARM}):
        with pytest.raises(DecodeError):
            TreeHead.from_dict(bad)
    with pytest.raises(ValueError):
        sign_tree_head(GW_KEY, SWARM, "gw1", 12, ROOT[:31], 7)
    with pytest.raises(ValueError):
        sign_tree_head(GW_KEY, SWARM, "gw1", 12, "xyz", 7)


# --------------------------------------------------------------------------- bundles


def _bundles(big: MerkleTree) -> tuple[ProofBundle, ProofBundle, TreeHead]:
    head = sign_tree_head(GW_KEY, SWARM, "gw1", 1000, big.root(1000), 99)
    inc = ProofBundle.for_inclusion(head, 321, big.inclusion_proof(321, 1000))
    old = sign_tree_head(GW_KEY, SWARM, "gw1", 700, big.root(700), 50)
    con = ProofBundle.for_consistency(head, 700, big.consistency_proof(700, 1000))
    return inc, con, old


def test_bundle_round_trip_and_checks(big: MerkleTree) -> None:
    inc, con, old = _bundles(big)
    for bundle in (inc, con):
        wire = bundle.encode()
        assert ProofBundle.decode(wire) == bundle and ProofBundle.decode(wire).encode() == wire
        assert json.loads(wire)["v"] == 1 and len(wire) < MAX_BUNDLE_BYTES
    entry = synthetic_leaf(321)
    assert check_inclusion(inc, entry, GW_KEY.public_hex)
    assert check_inclusion(inc, entry.hex(), GW_KEY.public_hex, swarm=SWARM)
    assert not check_inclusion(inc, entry, GW_KEY.public_hex, swarm="swarm-b")
    assert not check_inclusion(inc, synthetic_leaf(322), GW_KEY.public_hex)
    assert not check_inclusion(inc, leaf_hash(entry), GW_KEY.public_hex)
    assert not check_inclusion(inc, entry, seed_key(42).public_hex)
    assert not check_inclusion(dataclasses.replace(inc, leaf_index=322), entry, GW_KEY.public_hex)
    assert not check_inclusion(con, entry, GW_KEY.public_hex)
    for junk in (None, "ab", entry.hex().upper(), entry[:31], 5):
        assert not check_inclusion(inc, junk, GW_KEY.public_hex)  # type: ignore[arg-type]
    assert not check_inclusion(inc.to_dict(), entry, GW_KEY.public_hex)  # type: ignore[arg-type]
    # A head re-signed by another gateway key is that gateway's statement, not ours.
    forged = dataclasses.replace(
        inc, head=sign_tree_head(seed_key(42), SWARM, "gw1", 1000, big.root(1000), 99)
    )
    assert not check_inclusion(forged, entry, GW_KEY.public_hex)

    assert check_consistency(con, old, GW_KEY.public_hex)
    assert not check_consistency(con, old, seed_key(42).public_hex)
    assert not check_consistency(inc, old, GW_KEY.public_hex)
    assert not check_consistency(con, dataclasses.replace(old, swarm="swarm-b"), GW_KEY.public_hex)
    assert not check_consistency(con, dataclasses.replace(old, tree_size=701), GW_KEY.public_hex)
    other_root = dataclasses.replace(old, root_hex=big.root(701).hex())
    assert not check_consistency(con, other_root, GW_KEY.public_hex)
    assert not check_consistency(con, None, GW_KEY.public_hex)  # type: ignore[arg-type]


def test_bundle_shape_checks(big: MerkleTree) -> None:
    inc, con, _ = _bundles(big)
    with pytest.raises(ValueError):
        ProofBundle(inc.head, "inclusion", inc.proof)  # no leaf_index
    with pytest.raises(ValueError):
        ProofBundle(inc.head, "inclusion", inc.proof, leaf_index=1, old_size=2)
    with pytest.raises(ValueError):
        ProofBundle(inc.head, "consistency", inc.proof, leaf_index=1)
    with pytest.raises(ValueError):
        ProofBundle(inc.head, "other", inc.proof, leaf_index=1)
    with pytest.raises(ValueError):
        ProofBundle(inc.head, "inclusion", (b"x" * 31,), leaf_index=1)
    with pytest.raises(ValueError):
        ProofBundle(inc.head, "inclusion", [b"x" * 32], leaf_index=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ProofBundle(inc.head.to_dict(), "inclusion", (), leaf_index=1)  # type: ignore[arg-type]
    d = inc.to_dict()
    for bad in (
        {**d, "v": True},
        {**d, "v": 2},
        {**d, "kind": "consistency"},
        {**d, "leaf_index": -1},
        {**d, "leaf_index": "3"},
        {**d, "proof": "ab"},
        {**d, "proof": [p.upper() for p in d["proof"]]},
        {**d, "proof": ["00" * 32] * 129},
        {**d, "head": None},
        {**d, "extra": 0},
        {**con.to_dict(), "leaf_index": 1},
    ):
        with pytest.raises(DecodeError):
            ProofBundle.from_dict(bad)
        with pytest.raises(DecodeError):
            ProofBundle.decode(json.dumps(bad).encode())
    for raw in (b"", b"{", b"[]", b"\xff\xfe", b"x" * (MAX_BUNDLE_BYTES + 1), "str"):
        with pytest.raises(DecodeError):
            ProofBundle.decode(raw)  # type: ignore[arg-type]
    wire = inc.encode()
    with pytest.raises(DecodeError):
        ProofBundle.decode(wire[:-1] + b',"v":1}')  # duplicate key


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 2**64), st.text(max_size=70)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@PROPS
@given(data=st.data())
def test_bundle_decode_raises_only_decode_error(big: MerkleTree, data: st.DataObject) -> None:
    inc, con, _ = _bundles(big)
    d = data.draw(st.sampled_from([inc, con])).to_dict()
    obj = d if data.draw(st.booleans()) else d["head"]
    key = data.draw(st.sampled_from(sorted(obj)))
    if data.draw(st.booleans()):
        del obj[key]
    else:
        obj[key] = data.draw(JSON_VALUES)
    wire = json.dumps(d).encode()
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(0, len(wire) - 1))
        wire = wire[:pos] + bytes([data.draw(st.integers(0, 255))]) + wire[pos + 1 :]
    try:
        bundle = ProofBundle.decode(wire)
    except DecodeError:
        return
    assert isinstance(bundle, ProofBundle)
    assert check_inclusion(bundle, synthetic_leaf(321), GW_KEY.public_hex) in (True, False)


# --------------------------------------------------------------------------- real ledger + CLI

N_LEDGER = 40


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-entry ledger built with ledger_lite.Ledger, once per module."""
    path = tmp_path_factory.mktemp("merkle") / "ledger.db"
    s = Swarm(path)
    s.enroll("gw1", "gateway")
    s.enroll("a1", "agent")
    rnd = 0
    while s.ledger.height < N_LEDGER - 1:
        rnd += 1
        if rnd % 2:
            s.submit("gw1", "round_open", round_open(rnd))
        else:
            s.submit("a1", "delta_commit", delta_commit("a1", rnd))
    s.ledger.close()
    return path


@pytest.fixture(scope="module")
def entry_hashes(ledger_file: Path) -> list[str]:
    with SqliteStore(ledger_file, verify_only=True) as store:
        return [e.hash for e in store]


def test_real_ledger_proofs_and_bundles(ledger_file: Path, entry_hashes: list[str]) -> None:
    tree = MerkleTree(bytes.fromhex(h) for h in entry_hashes)
    assert tree.size == N_LEDGER
    assert tree.root() == ref_mth([bytes.fromhex(h) for h in entry_hashes])
    for size in (1, 2, 17, N_LEDGER):
        head = sign_tree_head(GW_KEY, SWARM, "gw1", size, tree.root(size), 5)
        for height in range(size):
            proof = tree.inclusion_proof(height, size)
            bundle = ProofBundle.decode(ProofBundle.for_inclusion(head, height, proof).encode())
            assert check_inclusion(bundle, entry_hashes[height], GW_KEY.public_hex, swarm=SWARM)
            other = entry_hashes[(height + 1) % N_LEDGER]
            assert not check_inclusion(bundle, other, GW_KEY.public_hex)


def _proof_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["proof", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_inclusion(
    ledger_file: Path, entry_hashes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(ledger_file)
    assert main(["proof", path, "--height", "7"]) == 0
    out = capsys.readouterr().out
    assert f"inclusion of height 7 in the tree of size {N_LEDGER}" in out
    assert entry_hashes[7] in out and out.rstrip().endswith("ok: inclusion proof verified")
    for height, size in ((7, None), (0, 1), (12, 13), (N_LEDGER - 1, None)):
        extra = [] if size is None else ["--size", str(size)]
        got = _proof_json(capsys, path, "--height", str(height), *extra)
        n = N_LEDGER if size is None else size
        assert got["verified"] is True and got["tree_size"] == n and got["height"] == height
        assert got["entry_hash"] == entry_hashes[height]
        leaves = [bytes.fromhex(h) for h in entry_hashes[:n]]
        assert got["root"] == ref_mth(leaves).hex()
        proof = [bytes.fromhex(p) for p in got["proof"]]
        assert proof == ref_path(height, leaves)
        leaf = leaf_hash(bytes.fromhex(got["entry_hash"]))
        assert verify_inclusion(leaf, height, n, proof, bytes.fromhex(got["root"]))


def test_cli_consistency(
    ledger_file: Path, entry_hashes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(ledger_file)
    assert main(["proof", path, "--consistency", "9"]) == 0
    out = capsys.readouterr().out
    assert f"consistency of size 9 with size {N_LEDGER}" in out
    assert out.rstrip().endswith("ok: consistency proof verified")
    leaves = [bytes.fromhex(h) for h in entry_hashes]
    for old, new in ((9, None), (1, 2), (16, 32), (0, 5), (20, 20)):
        extra = [] if new is None else ["--size", str(new)]
        got = _proof_json(capsys, path, "--consistency", str(old), *extra)
        n = N_LEDGER if new is None else new
        assert got["verified"] is True and (got["old_size"], got["new_size"]) == (old, n)
        assert got["old_root"] == ref_mth(leaves[:old]).hex()
        assert got["new_root"] == ref_mth(leaves[:n]).hex()
        proof = [bytes.fromhex(p) for p in got["proof"]]
        assert proof == ([] if old in (0, n) else ref_subproof(old, leaves[:n], True))


def test_cli_signed_bundles(
    ledger_file: Path, entry_hashes: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "gw1.key"
    GW_KEY.save(key_file)
    path = str(ledger_file)
    argv = ["proof", path, "--height", "5", "--sign", str(key_file), "--gateway-id", "gw1"]
    assert main(argv) == 0
    bundle = ProofBundle.decode(capsys.readouterr().out.strip().encode())
    assert bundle.head.tree_size == N_LEDGER and bundle.head.gateway_id == "gw1"
    assert check_inclusion(bundle, entry_hashes[5], GW_KEY.public_hex, swarm=SWARM)
    argv = ["proof", path, "--consistency", "10", "--size", "30", "--sign", str(key_file)]
    assert main([*argv, "--gateway-id", "gw1"]) == 0
    bundle = ProofBundle.decode(capsys.readouterr().out.strip().encode())
    leaves = [bytes.fromhex(h) for h in entry_hashes]
    old = sign_tree_head(GW_KEY, SWARM, "gw1", 10, ref_mth(leaves[:10]), 1)
    assert bundle.head.tree_size == 30 and check_consistency(bundle, old, GW_KEY.public_hex)
    assert main(argv) == 2  # --sign without --gateway-id
    assert "--gateway-id" in capsys.readouterr().err
    assert main([*argv, "--gateway-id", "not an id"]) == 2
    assert "--gateway-id must match" in capsys.readouterr().err
    key_file.chmod(0o644)
    assert main([*argv, "--gateway-id", "gw1"]) == 1
    assert "chmod 600" in capsys.readouterr().err


def test_cli_errors(ledger_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(ledger_file)
    for argv in (
        [path, "--height", str(N_LEDGER)],
        [path, "--height", "-1"],
        [path, "--height", "5", "--size", "5"],
        [path, "--height", "0", "--size", "0"],
        [path, "--height", "0", "--size", str(N_LEDGER + 1)],
        [path, "--consistency", str(N_LEDGER + 1)],
        [path, "--consistency", "6", "--size", "5"],
        [path, "--consistency", "-1"],
    ):
        assert main(["proof", *argv]) == 2, argv
        assert "not in [" in capsys.readouterr().err
    assert main(["proof", path]) == 2  # neither --height nor --consistency
    assert main(["proof", path, "--height", "1", "--consistency", "1"]) == 2
    assert main(["proof", path, "--height", "x"]) == 2
    capsys.readouterr()
    assert main(["proof", str(tmp_path / "absent.db"), "--height", "0"]) == 2
    assert "no such ledger file" in capsys.readouterr().err
    empty = tmp_path / "empty.db"
    SqliteStore(empty).close()
    assert main(["proof", str(empty), "--height", "0"]) == 1
    assert "holds no entries" in capsys.readouterr().err
    bad = tmp_path / "bad.db"
    with sqlite3.connect(ledger_file) as src, sqlite3.connect(bad) as dst:
        src.backup(dst)
        (body,) = dst.execute("SELECT body FROM entries WHERE height=11").fetchone()
        body = body[:30] + bytes([body[30] ^ 1]) + body[31:]
        dst.execute("UPDATE entries SET body=? WHERE height=11", (body,))
    src.close()
    dst.close()
    assert main(["proof", str(bad), "--height", "3"]) == 1
    assert "FAILED at height 11" in capsys.readouterr().err
