"""The encoders of codec bodies (``quantize.encode`` checks its arguments and calls them).

How it works
------------
Quantizers: int8/int4 use a per-chunk scale ``max|x| / levels`` (127 or 7), codes
``round(x / scale)`` to nearest (ties to even) or stochastically (``floor + Bernoulli(frac)``,
unbiased), clipped to ``[-levels, levels]``. sign1 uses ``mean|x|`` of the chunk. Top-k keeps the
``k = topk_count(n, fraction)`` largest ``|x|``, ties broken by the lower index.

The body layouts are in ``_quant_format``; top-k selection and the index encodings in
``_topk``.

Invariants
----------
- Memory: encoders work in float32 blocks of ``_BLOCK`` elements aligned to whole chunks, so
  temporaries are O(block) rather than O(n) (for ``chunk <= _BLOCK``); top-k needs one float32
  copy of ``|x|`` for the selection. Nothing makes a float64 copy of the vector.
- Every scale written is one the decoder accepts (``_clean_scales``).

Pure numpy: no I/O, no threads, no logging.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from edge_swarm.swarm._quant_format import (
    _CHUNK_HEAD,
    _FLT_MIN,
    _LEVELS,
    _MAX_SCALE,
    _TOPK_HEAD,
    _U32_MAX,
    CODEC_FLOAT16,
    CODEC_FLOAT32,
    CODEC_INT8,
    CODEC_SIGN1,
    _dense_len,
)
from edge_swarm.swarm._topk import pack_indices, topk_count, topk_mask

if TYPE_CHECKING:
    from edge_swarm.swarm.quantize import CodecSpec

_BLOCK = 1 << 16  # elements per encoder block: 256 KiB of float32 stays in L2
_F16_MAX = 65504.0


def _as_input(vec: np.ndarray) -> np.ndarray:
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise ValueError(f"vec must be 1-D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"vec must be a floating array, got {arr.dtype}")
    if not 1 <= arr.shape[0] <= _U32_MAX:
        raise ValueError(f"vec must hold 1..{_U32_MAX} values, got {arr.shape[0]}")
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(arr, dtype=np.float32)
    # max/min propagate NaN and expose Inf without a boolean temporary of the whole vector.
    if not (np.isfinite(x.max()) and np.isfinite(x.min())):
        raise ValueError("vec holds NaN or Inf, or values beyond float32")
    return x


def _blocks(n: int, chunk: int) -> tuple[range, int]:
    """Block starts and the block length: a multiple of chunk and of 8 (whole bytes of codes)."""
    unit = math.lcm(chunk, 8)
    step = unit * max(1, _BLOCK // unit)
    return range(0, n, step), step


def _row_parts(length: int, chunk: int) -> list[tuple[int, int, int]]:
    """Split a block into (start, stop, rows): its whole chunks as rows, then the short tail."""
    m = length // chunk
    parts = [(0, m * chunk, m)] if m else []
    if length > m * chunk:
        parts.append((m * chunk, length, 1))
    return parts


def _clean_scales(raw: np.ndarray, nonzero: np.ndarray, codec_id: int) -> np.ndarray:
    """Scales the decoder accepts: +0 for an all-zero chunk, else normal and <= MAX_SCALE."""
    s = np.minimum(np.maximum(raw, _FLT_MIN), _MAX_SCALE[codec_id])
    return np.where(nonzero, s, np.float32(0)).astype(np.float32, copy=False)


def _encode_dense(x: np.ndarray, spec: CodecSpec, rng: np.random.Generator | None) -> bytes:
    cid = spec.codec_id
    if cid == CODEC_FLOAT32:
        return x.astype("<f4", copy=False).tobytes()
    if cid == CODEC_FLOAT16:
        return _encode_f16(x)
    body = np.empty(_dense_len(cid, x.size, spec.chunk), np.uint8)
    body[: _CHUNK_HEAD.size] = np.frombuffer(_CHUNK_HEAD.pack(spec.chunk), np.uint8)
    n_scales = -(-x.size // spec.chunk)
    scales = body[_CHUNK_HEAD.size : _CHUNK_HEAD.size + 4 * n_scales].view("<f4")
    payload = body[_CHUNK_HEAD.size + 4 * n_scales :]
    if cid == CODEC_SIGN1:
        _encode_sign1(x, spec.chunk, scales, payload)
    else:
        stochastic = spec.rounding == "stochastic"
        _encode_levels(x, spec.chunk, cid, scales, payload, rng if stochastic else None)
    return body.tobytes()


def _encode_f16(x: np.ndarray) -> bytes:
    # Values beyond float16's range would round to +-inf, which every receiver must refuse,
    # losing the whole delta; saturating at +-65504 keeps the envelope valid, and error
    # feedback carries the clipped excess into the next round.
    out = np.empty(x.size, "<f2")
    buf = np.empty(min(x.size, _BLOCK), np.float32)
    for a in range(0, x.size, _BLOCK):
        b = min(a + _BLOCK, x.size)
        out[a:b] = np.clip(x[a:b], -_F16_MAX, _F16_MAX, out=buf[: b - a])
    return out.tobytes()


class _Work:
    """Block-sized scratch buffers reused across an encoder's blocks."""

    def __init__(self, size: int, stochastic: bool) -> None:
        self.y = np.empty(size, np.float32)
        self.q = np.empty(size, np.int8)
        self.floor = np.empty(size if stochastic else 0, np.float32)
        self.u = np.empty(size if stochastic else 0, np.float32)
        self.mask = np.empty(size if stochastic else 0, np.bool_)


def _encode_levels(
    x: np.ndarray,
    chunk: int,
    codec_id: int,
    scales: np.ndarray,
    payload: np.ndarray,
    rng: np.random.Generator | None,
) -> None:
    starts, step = _blocks(x.size, chunk)
    work = _Work(min(step, x.size), rng is not None)
    for a in starts:
        b = min(a + step, x.size)
        q = work.q[: b - a]
        for s, e, rows in _row_parts(b - a, chunk):
            r0 = (a + s) // chunk
            xs = x[a + s : a + e].reshape(rows, -1)
            scales[r0 : r0 + rows] = _quantize_rows(
                xs, codec_id, q[s:e].reshape(rows, -1), work, rng
            )
        if codec_id == CODEC_INT8:
            payload[a:b] = q.view(np.uint8)
        else:
            _pack_nibbles(q, payload[a // 2 : (b + 1) // 2])


def _quantize_rows(
    xs: np.ndarray,
    codec_id: int,
    q_out: np.ndarray,
    work: _Work,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Quantize each row of ``xs`` (one chunk a row) into ``q_out``; return the row scales."""
    levels = _LEVELS[codec_id]
    size = xs.size
    y = work.y[:size].reshape(xs.shape)
    amax = np.abs(xs, out=y).max(axis=1)
    scale = _clean_scales(amax / np.float32(levels), amax > 0, codec_id)
    # Division, not a reciprocal: scale may be as small as FLT_MIN, whose reciprocal overflows.
    np.divide(xs, np.where(scale > 0, scale, np.float32(1))[:, None], out=y)
    if rng is None:
        np.rint(y, out=y)
    else:
        # floor(y) + Bernoulli(frac(y)): E[code] = y, so the decoded value is unbiased.
        fl = work.floor[:size].reshape(xs.shape)
        np.floor(y, out=fl)
        np.subtract(y, fl, out=y)  # exact: the fractional part of a float32
        u = work.u[:size]
        rng.random(out=u, dtype=np.float32)
        mask = work.mask[:size].reshape(xs.shape)
        np.less(u.reshape(xs.shape), y, out=mask)
        np.add(fl, mask, out=y)
    np.clip(y, -levels, levels, out=y)
    np.copyto(q_out, y, casting="unsafe")
    return scale


def _pack_nibbles(q: np.ndarray, out: np.ndarray) -> None:
    """Pack int8 codes in [-8, 7] two a byte, low nibble first (4-bit two's complement)."""
    u = q.view(np.uint8)
    h = q.size // 2
    np.bitwise_and(u[0 : 2 * h : 2], 0x0F, out=out[:h])
    out[:h] |= u[1 : 2 * h : 2] << 4
    if q.size % 2:
        out[h] = u[-1] & 0x0F


def _encode_sign1(x: np.ndarray, chunk: int, scales: np.ndarray, payload: np.ndarray) -> None:
    starts, step = _blocks(x.size, chunk)
    buf = np.empty(min(step, x.size), np.float32)
    for a in starts:
        b = min(a + step, x.size)
        for s, e, rows in _row_parts(b - a, chunk):
            r0 = (a + s) // chunk
            ab = np.abs(x[a + s : a + e], out=buf[: e - s]).reshape(rows, -1)
            # A float64 accumulator per chunk: a float32 sum of large values could overflow.
            mean = ab.mean(axis=1, dtype=np.float64)
            scales[r0 : r0 + rows] = _clean_scales(mean.astype(np.float32), mean > 0, CODEC_SIGN1)
        payload[a // 8 : (b + 7) // 8] = np.packbits(x[a:b] >= 0, bitorder="little")


def _encode_topk(x: np.ndarray, spec: CodecSpec, rng: np.random.Generator | None) -> bytes:
    n = x.size
    k = topk_count(n, spec.topk if spec.topk is not None else 1.0)
    mask = topk_mask(x, k)
    idx = np.flatnonzero(mask)
    index, encoding = pack_indices(mask, idx, spec.index_packing)
    del mask
    values = _encode_dense(x[idx], spec, rng)
    return b"".join([_TOPK_HEAD.pack(k, encoding, len(index)), index, values])
