"""Top-k selection and the two index encodings of a top-k codec body (see quantize.py).

How it works
------------
``topk_mask`` selects the k largest magnitudes in O(n): an in-place introselect on one float32
copy of ``|x|`` finds the threshold, then one blockwise pass marks everything above it plus the
lowest-index entries equal to it, so ties always go the same way. The kept indices travel as a
bitmap (``ceil(n/8)`` bytes, bit i = index i, bitorder little) or as unsigned LEB128 varints of
the gaps (``idx[0]``, then ``idx[i] - idx[i-1] >= 1``), whichever ``pack_indices`` is told or
finds smaller.

Invariants
----------
- ``unpack_indices`` takes untrusted bytes and raises only ``MalformedIndex`` (a ValueError; the
  caller turns it into its own decode error): it returns exactly k strictly increasing indices
  below n, from a canonical encoding (zero padding bits, shortest varints), or refuses.
- Vectorised numpy throughout; no Python loop over elements.

Pure numpy: no I/O.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "INDEX_BITMAP",
    "INDEX_DELTA",
    "MalformedIndex",
    "pack_indices",
    "topk_count",
    "topk_mask",
    "unpack_indices",
]

INDEX_BITMAP = 0
"""Top-k index encoding: one bit per parameter."""
INDEX_DELTA = 1
"""Top-k index encoding: LEB128 varints of the gaps between kept indices."""

_BLOCK = 1 << 16  # elements per pass of the marking loop


class MalformedIndex(ValueError):
    """A top-k index section that is malformed or inconsistent with k and n."""


def topk_count(n: int, fraction: float) -> int:
    """k for a top-k of ``fraction`` of ``n`` entries: ``max(1, ceil(fraction * n))``, at most n.

    ``fraction * n`` is rounded to 9 decimals first so that binary noise does not add an entry
    (``0.07 * 100`` is 7.000000000000001 in floating point; k is 7).
    """
    return min(n, max(1, math.ceil(round(fraction * n, 9))))


def topk_mask(x: np.ndarray, k: int) -> np.ndarray:
    """A boolean mask of the k largest |x| (x finite float32), ties broken by the lower index.

    Selection, not sorting: ``ndarray.partition`` (introselect, in place on one float32 copy of
    |x|) finds the threshold t, the k-th largest magnitude. Everything above t is kept, and the
    first ``k - #(|x| > t)`` entries equal to t in index order fill the rest: deterministic.
    """
    n = x.size
    if k >= n:
        return np.ones(n, np.bool_)
    mag = np.abs(x)
    mag.partition(n - k)
    t = mag[n - k]
    need = k - int(np.count_nonzero(mag[n - k + 1 :] > t))  # mag[:n-k] are all <= t
    del mag
    mask = np.empty(n, np.bool_)
    buf = np.empty(min(n, _BLOCK), np.float32)
    for a in range(0, n, _BLOCK):
        b = min(a + _BLOCK, n)
        ab = np.abs(x[a:b], out=buf[: b - a])
        mb = mask[a:b]
        np.greater(ab, t, out=mb)
        if need:
            ties = np.flatnonzero(ab == t)[:need]
            mb[ties] = True
            need -= ties.size
    return mask


def pack_indices(mask: np.ndarray, idx: np.ndarray, packing: str) -> tuple[bytes, int]:
    """Encode the kept indices (``mask`` and its ``flatnonzero``) as ``(bytes, encoding)``.

    ``packing`` is "bitmap", "delta" or "auto" (the smaller; a tie goes to the bitmap).
    """
    bitmap_len = (mask.size + 7) // 8
    if packing == "bitmap":
        return np.packbits(mask, bitorder="little").tobytes(), INDEX_BITMAP
    gaps = np.diff(idx, prepend=0)  # idx[0], then gaps >= 1
    nbytes = 1 + sum((gaps >= (1 << (7 * j))).astype(np.int64) for j in range(1, 5))
    if packing == "auto" and int(nbytes.sum()) >= bitmap_len:
        return np.packbits(mask, bitorder="little").tobytes(), INDEX_BITMAP
    return _leb128(gaps, nbytes), INDEX_DELTA


def _leb128(values: np.ndarray, nbytes: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (< 2**35), vectorised one byte position at a time."""
    ends = np.cumsum(nbytes)
    starts = ends - nbytes
    out = np.empty(int(ends[-1]), np.uint8)
    for j in range(5):
        sel = nbytes > j
        if not sel.any():
            break
        byte = (values[sel] >> (7 * j)) & 0x7F
        byte |= np.where(nbytes[sel] > j + 1, 0x80, 0)
        out[starts[sel] + j] = byte
    return out.tobytes()


def unpack_indices(index: np.ndarray, encoding: int, n: int, k: int) -> np.ndarray:
    """The k kept indices (int64, strictly increasing, < n) of an untrusted index section.

    Raises MalformedIndex on anything else, including an unknown ``encoding``.
    """
    if encoding == INDEX_BITMAP:
        return _bitmap_indices(index, n, k)
    if encoding == INDEX_DELTA:
        return _delta_indices(index, n, k)
    raise MalformedIndex(f"unknown top-k index encoding {encoding}")


def _bitmap_indices(index: np.ndarray, n: int, k: int) -> np.ndarray:
    if index.size != (n + 7) // 8:
        raise MalformedIndex(f"top-k bitmap of {index.size} bytes for {n} params")
    if n % 8 and index[-1] >> (n % 8):
        raise MalformedIndex("top-k bitmap padding bits are not zero")
    idx = np.flatnonzero(np.unpackbits(index, count=n, bitorder="little"))
    if idx.size != k:
        raise MalformedIndex(f"top-k bitmap has {idx.size} bits set, header says {k}")
    return idx


def _delta_indices(index: np.ndarray, n: int, k: int) -> np.ndarray:
    if not k <= index.size <= 5 * k:
        raise MalformedIndex(f"top-k delta index of {index.size} bytes cannot hold {k} varints")
    ends = np.flatnonzero(index < 0x80)
    if ends.size != k or ends[-1] != index.size - 1:
        raise MalformedIndex(f"top-k delta index does not hold exactly {k} varints")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 5:
        raise MalformedIndex("top-k varint longer than 5 bytes")
    if np.any((lengths > 1) & (index[ends] == 0)):
        raise MalformedIndex("top-k varint is not in its shortest form")
    gaps = np.zeros(k, np.uint64)
    for j in range(int(lengths.max())):
        sel = lengths > j
        gaps[sel] |= (index[starts[sel] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    # Each gap < n <= 2**32 and k <= 2**32, so the cumulative sum cannot wrap a uint64.
    if gaps.max() >= n:
        raise MalformedIndex(f"top-k index gap out of range for {n} params")
    if k > 1 and gaps[1:].min() == 0:
        raise MalformedIndex("top-k indices are not strictly increasing")
    idx = np.cumsum(gaps)
    if idx[-1] >= n:
        raise MalformedIndex(f"top-k index {idx[-1]} out of range for {n} params")
    return idx.astype(np.int64)
