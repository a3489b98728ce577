"""Merkle trees over the ledger, RFC 9162 (Certificate Transparency v2) §2.1. Pure.

Hashing (§2.1.1). For leaves ``D[0:n]`` and SHA-256 as HASH::

    MTH({})      = HASH()                                   the empty tree
    MTH({d})     = HASH(0x00 || d)                          a leaf
    MTH(D[0:n])  = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  k = largest power of 2 < n

The ledger's leaves are its entries' hashes (the raw 32 bytes of ``Entry.hash``) in height
order, so the tree of size ``n`` covers heights ``0 .. n-1`` and a tree head (size, root)
commits to a prefix of the chain. The 0x00/0x01 prefixes keep a leaf from passing as a node.

How `MerkleTree` works. It keeps one bytearray per level: ``level[k]`` holds, 32 bytes each,
the hashes of the complete aligned subtrees of ``2**k`` leaves (``level[0]`` = leaf hashes).
Appending a leaf adds its hash to level 0 and, while the level just grown has an even
count, the parent of its last two nodes one level up: one hash per append amortised, and
the structure is the same whichever order the leaves were added in. Every node of the tree
of any historical size ``n`` is either a complete aligned subtree (one lookup) or a suffix
``[a, n)`` of the right spine; a proof first folds that spine once (at most log2 n hashes)
and then needs only lookups, so proofs cost O(log n) whatever ``n`` and the index.

Invariants: leaves are never changed or removed; ``len(level[k]) == 32 * (size >> k)``
between appends. `size` is published after the levels are written, so one writer and
any number of readers may share a tree in CPython (readers read `size` once per call).

Verifiers (§2.1.3.2 inclusion, §2.1.4.2 consistency) are pure functions that agents run;
they never raise, returning False for any malformed argument, any out-of-range index or
size, and a proof of the wrong length. A bare proof binds the tree size only through the
root: trust (size, root) only from a signed tree head (`ledger_lite.treehead`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}): the root of the empty tree, SHA-256 of the empty string."""
MAX_PROOF_HASHES = 128
"""No tree of fewer than 2**63 leaves needs a longer proof (consistency: < 2 log2 n)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """MTH({data}) = SHA-256(0x00 || data): the hash of one leaf (any bytes)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than `n` (n >= 2): where MTH splits D[0:n]."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of `leaves` (leaf data, not leaf hashes); EMPTY_ROOT for no leaves.

    O(n) hashing: use `MerkleTree` to keep a tree that grows.
    """
    if not leaves:
        return EMPTY_ROOT
    return MerkleTree(leaves).root()


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_BYTES


def _is_size(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**63


def inclusion_proof_length(index: int, tree_size: int) -> int:
    """Number of hashes in the inclusion proof of leaf `index` in a tree of `tree_size`
    (0 <= index < tree_size; ValueError otherwise)."""
    if not (_is_size(index) and _is_size(tree_size) and index < tree_size):
        raise ValueError(f"no leaf {index!r} in a tree of size {tree_size!r}")
    count, start, end = 0, 0, tree_size
    while end - start > 1:
        k = _split(end - start)
        start, end = (start, start + k) if index < start + k else (start + k, end)
        count += 1
    return count


def consistency_proof_length(old_size: int, new_size: int) -> int:
    """Number of hashes in the consistency proof from `old_size` to `new_size`
    (0 <= old_size <= new_size; ValueError otherwise). Zero when old_size is 0 or equal."""
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
        raise ValueError(f"no consistency proof from size {old_size!r} to {new_size!r}")
    if old_size in (0, new_size):
        return 0
    count, m, size, whole = 0, old_size, new_size, True
    while m != size:
        k = _split(size)
        if m <= k:
            size = k
        else:
            m, size, whole = m - k, size - k, False
        count += 1
    return count + (0 if whole else 1)


class MerkleTree:
    """An append-only RFC 9162 Merkle tree that answers for any size up to its own.

    `MerkleTree(leaves)` hashes the leaf data given (e.g. raw entry hashes); `append`
    adds one more. `root`, `inclusion_proof` and `consistency_proof` take a historical
    tree size (default: the current size) and raise ValueError for an index or size out
    of range. Proofs are lists of 32-byte hashes, leaf end first, as RFC 9162 orders them.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend(leaves)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes held by the node hashes (about 64 per leaf), not counting object overhead."""
        return sum(len(level) for level in self._levels)

    def append(self, leaf: bytes) -> int:
        """Add the leaf with data `leaf` (bytes); return its index. O(1) hashes amortised."""
        if not isinstance(leaf, (bytes, bytearray)):
            raise TypeError(f"a leaf is bytes, got {type(leaf).__name__}")
        index = self._size
        levels = self._levels
        levels[0] += leaf_hash(bytes(leaf))
        count, k = index + 1, 0
        while count & 1 == 0:  # the level just grown ends in a complete pair: hash it up
            pair = levels[k][-2 * HASH_BYTES :]
            if k + 1 == len(levels):
                levels.append(bytearray())
            levels[k + 1] += node_hash(pair[:HASH_BYTES], pair[HASH_BYTES:])
            count >>= 1
            k += 1
        self._size = index + 1  # published last: readers never see a half-written size
        return index

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append each of `leaves` in order."""
        for leaf in leaves:
            self.append(leaf)

    def leaf_hash_at(self, index: int) -> bytes:
        """The leaf hash (not the data) at `index`; ValueError if out of range."""
        if not (_is_size(index) and index < self._size):
            raise ValueError(f"no leaf {index!r} in a tree of size {self._size}")
        return self._node(0, index)

    def _node(self, level: int, i: int) -> bytes:
        """Hash of the complete subtree of 2**level leaves starting at leaf i * 2**level."""
        return bytes(self._levels[level][i * HASH_BYTES : (i + 1) * HASH_BYTES])

    def _size_arg(self, tree_size: int | None) -> int:
        size = self._size if tree_size is None else tree_size
        if not (_is_size(size) and size <= self._size):
            raise ValueError(f"tree size {tree_size!r} not in [0, {self._size}]")
        return size

    def _spine(self, n: int) -> dict[int, bytes]:
        """MTH(D[a:n]) for each start `a` of the complete blocks that make up D[0:n]
        (the binary digits of n, largest first): every incomplete node of the tree of
        size n is one of these suffixes. Costs popcount(n) - 1 hashes."""
        starts: list[tuple[int, int]] = []  # (start, level) of each block, left to right
        start = 0
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                starts.append((start, level))
                start += 1 << level
        out: dict[int, bytes] = {}
        acc = b""
        for start, level in reversed(starts):
            block = self._node(level, start >> level)
            acc = block if not acc else node_hash(block, acc)
            out[start] = acc
        return out

    def _mth(self, start: int, end: int, spine: dict[int, bytes]) -> bytes:
        """MTH(D[start:end]) for a node of the tree whose spine is `spine`."""
        width = end - start
        if width & (width - 1) == 0:  # complete and aligned: a lookup
            return self._node(width.bit_length() - 1, start // width)
        return spine[start]  # an incomplete node always ends at n: a spine suffix

    def root(self, tree_size: int | None = None) -> bytes:
        """MTH(D[0:tree_size]) (default: the current size); EMPTY_ROOT for size 0."""
        n = self._size_arg(tree_size)
        return EMPTY_ROOT if n == 0 else self._spine(n)[0]

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:tree_size]) of RFC 9162 §2.1.3.1: the sibling hashes from the
        leaf up. Raises ValueError unless 0 <= index < tree_size <= size."""
        n = self._size_arg(tree_size)
        if not (_is_size(index) and index < n):
            raise ValueError(f"no leaf {index!r} in a tree of size {n}")
        spine = self._spine(n)
        path: list[bytes] = []
        start, end = 0, n
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self._mth(start + k, end, spine))
                end = start + k
            else:
                path.append(self._mth(start, start + k, spine))
                start += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1; empty when old_size is 0 or
        equals new_size. Raises ValueError unless 0 <= old_size <= new_size <= size."""
        n = self._size_arg(new_size)
        if not (_is_size(old_size) and old_size <= n):
            raise ValueError(f"old size {old_size!r} not in [0, {n}]")
        if old_size in (0, n):
            return []
        spine = self._spine(n)
        proof: list[bytes] = []
        m, start, end, whole = old_size, 0, n, True
        while m != end - start:  # SUBPROOF(m, D[start:end], whole)
            k = _split(end - start)
            if m <= k:
                proof.append(self._mth(start + k, end, spine))
                end = start + k
            else:
                proof.append(self._mth(start, start + k, spine))
                m, start, whole = m - k, start + k, False
        if not whole:  # the old tree's subtree itself, unless the verifier has it as root
            proof.append(self._mth(start, end, spine))
        proof.reverse()
        return proof

    def __repr__(self) -> str:
        return f"MerkleTree(size={self._size})"


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True iff `proof` shows the leaf hashed `leaf_hash` at `index` in the tree of
    `tree_size` leaves whose root is `root` (RFC 9162 §2.1.3.2).

    Takes 32-byte hashes (bytes), ints and a sequence of 32-byte hashes. Never raises:
    wrong types or lengths, index >= tree_size, and a proof of the wrong length all give
    False. `tree_size` is bound only through `root`; take both from a signed tree head.
    """
    try:
        if not (_is_hash(leaf_hash) and _is_hash(root)):
            return False
        if not (_is_size(index) and _is_size(tree_size) and index < tree_size):
            return False
        path = list(proof)
        if len(path) != inclusion_proof_length(index, tree_size):
            return False
        if not all(_is_hash(p) for p in path):
            return False
        fn, sn, r = index, tree_size - 1, bytes(leaf_hash)
        for p in path:
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                r = node_hash(p, r)
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
            else:
                r = node_hash(r, p)
            fn >>= 1
            sn >>= 1
        return sn == 0 and r == root
    except Exception:  # never raise on hostile input (e.g. a proof that is not iterable)
        return False


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff `proof` shows that the tree of `old_size` leaves with root `old_root` is a
    prefix of the tree of `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2).

    Two cases need no proof (an empty one is required): equal sizes with equal roots, and
    old_size 0 with old_root = EMPTY_ROOT. Never raises: wrong types or lengths,
    old_size > new_size, and a proof of the wrong length all give False.
    """
    try:
        if not (_is_hash(old_root) and _is_hash(new_root)):
            return False
        if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
            return False
        path = list(proof)
        if len(path) != consistency_proof_length(old_size, new_size):
            return False
        if not all(_is_hash(p) for p in path):
            return False
        if old_size == new_size:
            return old_root == new_root
        if old_size == 0:
            return old_root == EMPTY_ROOT
        return _verify_consistency_path(old_size, new_size, old_root, new_root, path)
    except Exception:  # never raise on hostile input
        return False


def _verify_consistency_path(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: list[bytes]
) -> bool:
    """Steps 1–7 of RFC 9162 §2.1.4.2 for 0 < first < second (names as in the RFC)."""
    if not path:
        return False
    if first & (first - 1) == 0:  # the old tree is a complete subtree: its root starts
        path = [bytes(first_hash), *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = bytes(path[0])
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_hash and sr == second_hash
