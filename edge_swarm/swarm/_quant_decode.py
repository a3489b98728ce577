"""The decoders of codec bodies (``quantize.decode`` and ``quantize.max_body_len`` call them).

Invariants
----------
- ``decode`` takes untrusted bytes and raises only ``CodecError``: lengths are checked before
  anything is allocated, the body length must match exactly, ``1 <= k <= n``, ``chunk >= 1``,
  indices strictly increasing and ``< n``, padding bits and nibbles zero, codes within levels, and
  every scale is ``+0`` or a *normal* float32 in ``[FLT_MIN, MAX_SCALE]`` so that ``code * scale``
  is finite and never subnormal. The result is always a fresh, finite float32 array of ``n``.
- Decoding is deterministic across machines: each value is one IEEE float32 product
  ``float32(code) * scale`` (or a copy of stored bits); no float64, no fused or reordered sums,
  and no subnormal operands, so flush-to-zero hardware decodes the same bytes to the same floats.

The body layouts are in ``_quant_format``, the top-k index decoding in ``_topk``.

Pure numpy: no I/O, no threads, no logging.
"""

from __future__ import annotations

import operator

import numpy as np

from edge_swarm.swarm._quant_format import (
    _CHUNK_HEAD,
    _FLT_MIN,
    _MAX_SCALE,
    _TOPK_HEAD,
    _U32_MAX,
    CODEC_FLOAT16,
    CODEC_FLOAT32,
    CODEC_IDS,
    CODEC_INT4,
    CODEC_INT8,
    FLAG_TOPK,
    CodecError,
    _dense_len,
)
from edge_swarm.swarm._topk import MalformedIndex, unpack_indices


def _as_view(body: object) -> memoryview:
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise CodecError(f"body must be bytes, got {type(body).__name__}")
    view = memoryview(body)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_header(codec_id: object, flags: object, n_params: object) -> tuple[int, int, int]:
    try:
        cid, fl, n = (operator.index(v) for v in (codec_id, flags, n_params))  # type: ignore[arg-type]
    except TypeError:
        raise CodecError("codec id, flags and n_params must be integers") from None
    if cid not in CODEC_IDS.values():
        raise CodecError(f"unsupported codec id {cid}")
    if fl & ~FLAG_TOPK or fl < 0:
        raise CodecError(f"unsupported flags {fl:#x}")
    if not 1 <= n <= _U32_MAX:
        raise CodecError(f"n_params {n} outside 1..{_U32_MAX}")
    return cid, fl, n


def _expect_len(view: memoryview, expected: int, what: str) -> None:
    if len(view) != expected:
        raise CodecError(f"{what} body of {len(view)} bytes, expected {expected}")


def _check_finite(out: np.ndarray, what: str) -> np.ndarray:
    if not (np.isfinite(out.max()) and np.isfinite(out.min())):
        raise CodecError(f"{what} body holds NaN or Inf")
    return out


def _decode_dense(view: memoryview, codec_id: int, n: int) -> np.ndarray:
    if codec_id == CODEC_FLOAT32:
        _expect_len(view, 4 * n, "float32")
        return _check_finite(np.frombuffer(view, "<f4", n).astype(np.float32), "float32")
    if codec_id == CODEC_FLOAT16:
        _expect_len(view, 2 * n, "float16")
        return _check_finite(np.frombuffer(view, "<f2", n).astype(np.float32), "float16")
    name = _codec_name(codec_id)
    if len(view) < _CHUNK_HEAD.size:
        raise CodecError(f"{name} body of {len(view)} bytes has no chunk size")
    (chunk,) = _CHUNK_HEAD.unpack_from(view, 0)
    if chunk < 1:
        raise CodecError(f"{name} chunk size 0")
    _expect_len(view, _dense_len(codec_id, n, chunk), name)
    n_scales = -(-n // chunk)
    scales = np.frombuffer(view, "<f4", n_scales, _CHUNK_HEAD.size).astype(np.float32)
    ok = (scales == 0) | ((scales >= _FLT_MIN) & (scales <= _MAX_SCALE[codec_id]))
    if not ok.all() or np.signbit(scales).any():
        raise CodecError(f"{name} body holds a negative, subnormal, huge or NaN scale")
    payload = np.frombuffer(view, np.uint8, offset=_CHUNK_HEAD.size + 4 * n_scales)
    if codec_id == CODEC_INT8:
        codes = payload.view(np.int8)
        if codes.min() < -127:
            raise CodecError("int8 code -128 is outside [-127, 127]")
    elif codec_id == CODEC_INT4:
        codes = _unpack_nibbles(payload, n)
    else:
        codes = _unpack_signs(payload, n)
    return _scale_rows(codes, scales, chunk)


def _codec_name(codec_id: int) -> str:
    return next(k for k, v in CODEC_IDS.items() if v == codec_id)


_NIBBLE = np.array([0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1], np.int8)


def _unpack_nibbles(payload: np.ndarray, n: int) -> np.ndarray:
    if n % 2 and payload[-1] >> 4:
        raise CodecError("int4 padding nibble is not zero")
    codes = np.empty(n, np.int8)
    codes[0::2] = _NIBBLE[payload & 0x0F]
    codes[1::2] = _NIBBLE[payload[: n // 2] >> 4]
    if codes.min() < -7:
        raise CodecError("int4 code -8 is outside [-7, 7]")
    return codes


def _unpack_signs(payload: np.ndarray, n: int) -> np.ndarray:
    if n % 8 and payload[-1] >> (n % 8):
        raise CodecError("sign1 padding bits are not zero")
    bits = np.unpackbits(payload, count=n, bitorder="little")
    bits <<= 1
    bits -= 1  # 0 -> 255 (-1 as int8), 1 -> 1
    return bits.view(np.int8)


def _scale_rows(codes: np.ndarray, scales: np.ndarray, chunk: int) -> np.ndarray:
    """``float32(code) * scale`` per chunk, one IEEE product an element, into a fresh array."""
    n = codes.size
    out = np.empty(n, np.float32)
    m = n // chunk
    if m:
        full = m * chunk
        np.multiply(
            codes[:full].reshape(m, chunk),
            scales[:m, None],
            out=out[:full].reshape(m, chunk),
            dtype=np.float32,
        )
    if n > m * chunk:
        np.multiply(codes[m * chunk :], scales[m], out=out[m * chunk :], dtype=np.float32)
    return out


def _decode_topk(view: memoryview, codec_id: int, n: int) -> np.ndarray:
    if len(view) < _TOPK_HEAD.size:
        raise CodecError(f"top-k body of {len(view)} bytes is shorter than its header")
    k, encoding, index_len = _TOPK_HEAD.unpack_from(view, 0)
    if not 1 <= k <= n:
        raise CodecError(f"top-k k={k} outside 1..{n}")
    end = _TOPK_HEAD.size + index_len
    if end > len(view):
        raise CodecError(f"top-k index of {index_len} bytes overruns the body")
    index = np.frombuffer(view, np.uint8, index_len, _TOPK_HEAD.size)
    try:
        idx = unpack_indices(index, encoding, n, k)
    except MalformedIndex as exc:
        raise CodecError(str(exc)) from None
    values = _decode_dense(view[end:], codec_id, k)
    out = np.zeros(n, np.float32)
    out[idx] = values
    return out
