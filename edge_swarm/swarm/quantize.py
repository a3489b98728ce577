"""Quantized and sparse codec bodies for flat float32 parameter deltas.

How it works
------------
``encode(vec, spec, rng)`` turns a 1-D float32 vector into a *codec body*; the delta envelope
carries it next to its codec id, flags and ``n_params``. ``decode(body, codec_id, flags,
n_params)`` needs nothing else: a body is self-describing, so one swarm can mix codecs (a Pi on a
weak link sends ``sign1`` while a Jetson sends ``int8``) without sharing a ``CodecSpec``.

Body formats (all integers little-endian; ``n`` is ``n_params``)::

    dense, codec float32 (id 0)    n x <f4                        (the envelope's original body)
    dense, codec float16 (id 1)    n x <f2
    dense, int8 / int4 / sign1     <I chunk | ceil(n/chunk) x <f4 scale | payload
        int8  (id 2) payload: n x i8 codes in [-127, 127]                       value = code * scale
        int4  (id 3) payload: ceil(n/2) bytes, two codes in [-7, 7] a byte, low nibble first,
                     4-bit two's complement; an odd n pads the last high nibble with 0
        sign1 (id 4) payload: ceil(n/8) bytes, np.packbits(x >= 0, bitorder="little"),
                     padding bits 0                                     value = +scale or -scale
    top-k (flag FLAG_TOPK)         <I k | <B index_encoding | <I index_len | index bytes
                                   | the dense body of the codec over the k kept values (n = k)
        index_encoding 0 (bitmap): ceil(n/8) bytes, bit i set iff i is kept (bitorder little)
        index_encoding 1 (delta):  k unsigned LEB128 varints: idx[0], then idx[i] - idx[i-1]

Quantizers: int8/int4 use a per-chunk scale ``max|x| / levels`` (127 or 7), codes
``round(x / scale)`` to nearest (ties to even) or stochastically (``floor + Bernoulli(frac)``,
unbiased), clipped to ``[-levels, levels]``. sign1 uses ``mean|x|`` of the chunk. Top-k keeps the
``k = topk_count(n, fraction)`` largest ``|x|``, ties broken by the lower index.

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
- Memory: encoders work in float32 blocks of ``_BLOCK`` elements aligned to whole chunks, so
  temporaries are O(block) rather than O(n) (for ``chunk <= _BLOCK``); top-k needs one float32
  copy of ``|x|`` for the selection. Nothing makes a float64 copy of the vector.
- Misuse by our own code (bad spec, non-finite input) raises ValueError/TypeError; bad bytes
  from a peer raise CodecError (a ValueError subclass) and nothing else.

Top-k selection and the index encodings live in ``_topk.py``; this module owns the formats,
the quantizers and the one public error.

Pure numpy: no I/O, no threads, no logging.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from edge_swarm.swarm._topk import (
    INDEX_BITMAP,
    INDEX_DELTA,
    MalformedIndex,
    pack_indices,
    topk_count,
    topk_mask,
    unpack_indices,
)

__all__ = [
    "CODEC_FLOAT16",
    "CODEC_FLOAT32",
    "CODEC_IDS",
    "CODEC_INT4",
    "CODEC_INT8",
    "CODEC_SIGN1",
    "FLAG_TOPK",
    "INDEX_BITMAP",
    "INDEX_DELTA",
    "CodecError",
    "CodecSpec",
    "decode",
    "encode",
    "max_body_len",
    "topk_count",
]

# These ids and the flag are the envelope's (codec.py reserves the same numbers; a test pins them).
CODEC_FLOAT32 = 0
CODEC_FLOAT16 = 1
CODEC_INT8 = 2
CODEC_INT4 = 3
CODEC_SIGN1 = 4
FLAG_TOPK = 0x01

CODEC_IDS: dict[str, int] = {
    "float32": CODEC_FLOAT32,
    "float16": CODEC_FLOAT16,
    "int8": CODEC_INT8,
    "int4": CODEC_INT4,
    "sign1": CODEC_SIGN1,
}
ROUNDINGS = ("nearest", "stochastic")
INDEX_PACKINGS = ("delta", "bitmap", "auto")
MAX_CHUNK = 1 << 24
"""Largest chunk a CodecSpec accepts (a decoder accepts any u32 chunk >= 1)."""

_U32_MAX = 2**32 - 1
_BLOCK = 1 << 16  # elements per encoder block: 256 KiB of float32 stays in L2
_F16_MAX = 65504.0
_FLT_MAX = np.finfo(np.float32).max
_FLT_MIN = np.finfo(np.float32).tiny  # smallest *normal* float32
_LEVELS = {CODEC_INT8: 127, CODEC_INT4: 7}
_CHUNK_HEAD = struct.Struct("<I")
_TOPK_HEAD = struct.Struct("<IBI")  # k, index encoding, index length in bytes
_INTERNAL = "internal decode failure: "


class CodecError(ValueError):
    """A codec body from the network that is malformed, inconsistent or unsupported."""


def _largest_scale(levels: int) -> np.float32:
    """The largest float32 ``s`` with ``float32(s * levels)`` finite."""
    s = np.float32(float(_FLT_MAX) / levels)
    with np.errstate(over="ignore"):
        while not np.isfinite(s * np.float32(levels)):
            s = np.nextafter(s, np.float32(0))
    return s


_MAX_SCALE = {
    CODEC_INT8: _largest_scale(127),
    CODEC_INT4: _largest_scale(7),
    CODEC_SIGN1: _FLT_MAX,
}

# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class CodecSpec:
    """How a sender compresses its delta; validated when built (ValueError on bad fields).

    ``name``: float32, float16, int8, int4 or sign1. ``chunk``: elements per scale, 1..2**24
    (int8/int4/sign1 only). ``rounding``: nearest or stochastic (int8/int4 only; stochastic needs
    an rng). ``topk``: None, or the fraction ``0 < f <= 1`` of entries kept. ``index_packing``:
    how top-k indices travel, delta (varint gaps), bitmap, or auto (whichever is smaller).
    Receivers never need the spec: bodies are self-describing.
    """

    name: str
    chunk: int = 256
    rounding: str = "nearest"
    topk: float | None = None
    index_packing: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in CODEC_IDS:
            raise ValueError(f"codec name must be one of {sorted(CODEC_IDS)}, got {self.name!r}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int):
            raise ValueError(f"chunk must be an int, got {self.chunk!r}")
        if not 1 <= self.chunk <= MAX_CHUNK:
            raise ValueError(f"chunk must be in [1, {MAX_CHUNK}], got {self.chunk}")
        if not isinstance(self.rounding, str) or self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.topk is not None:
            f = self.topk
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f):
                raise ValueError(f"topk must be a number or None, got {f!r}")
            if not 0 < f <= 1:
                raise ValueError(f"topk must be in (0, 1], got {f}")
            object.__setattr__(self, "topk", float(f))
        if not isinstance(self.index_packing, str) or self.index_packing not in INDEX_PACKINGS:
            raise ValueError(
                f"index_packing must be one of {INDEX_PACKINGS}, got {self.index_packing!r}"
            )

    @property
    def codec_id(self) -> int:
        """The envelope's codec id (0..4)."""
        return CODEC_IDS[self.name]

    @property
    def flags(self) -> int:
        """The envelope's flags: FLAG_TOPK when ``topk`` is set, else 0."""
        return FLAG_TOPK if self.topk is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that ``from_dict`` turns back into an equal spec."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: object) -> CodecSpec:
        """Build a spec from untrusted data (config, ledger params). Raises only ValueError.

        Missing keys take their defaults except ``name``; unknown keys are refused.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"codec spec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValueError(f"unknown codec spec keys {sorted(map(str, unknown))}")
        if "name" not in data:
            raise ValueError("codec spec needs a name")
        return cls(**dict(data))


# --------------------------------------------------------------------------- encode


def encode(vec: np.ndarray, spec: CodecSpec, rng: np.random.Generator | None = None) -> bytes:
    """Encode a delta into the codec body that ``decode`` reads back (see the module header).

    ``vec``: a 1-D floating array of 1..2**32-1 finite values (float32 avoids a conversion copy).
    ``rng``: required for stochastic rounding with int8/int4, ignored otherwise.
    Raises TypeError/ValueError on misuse: wrong shape or dtype, non-finite values (or values that
    overflow float32), stochastic rounding without an rng.
    """
    if not isinstance(spec, CodecSpec):
        raise TypeError(f"spec must be a CodecSpec, got {type(spec).__name__}")
    stochastic = spec.rounding == "stochastic" and spec.codec_id in _LEVELS
    if stochastic and not isinstance(rng, np.random.Generator):
        raise ValueError("stochastic rounding needs an rng (np.random.Generator)")
    x = _as_input(vec)
    if spec.topk is None:
        return _encode_dense(x, spec, rng)
    return _encode_topk(x, spec, rng)


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


def _payload_len(codec_id: int, n: int) -> int:
    return {CODEC_INT8: n, CODEC_INT4: (n + 1) // 2, CODEC_SIGN1: (n + 7) // 8}[codec_id]


def _dense_len(codec_id: int, n: int, chunk: int) -> int:
    if codec_id == CODEC_FLOAT32:
        return 4 * n
    if codec_id == CODEC_FLOAT16:
        return 2 * n
    return _CHUNK_HEAD.size + 4 * (-(-n // chunk)) + _payload_len(codec_id, n)


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


# --------------------------------------------------------------------------- decode


def decode(
    body: bytes | bytearray | memoryview, codec_id: int, flags: int, n_params: int
) -> np.ndarray:
    """Decode a codec body into a fresh, finite float32 array of ``n_params`` values.

    ``body`` is untrusted; ``codec_id``, ``flags`` and ``n_params`` come from the envelope
    header. ``n_params`` sizes the output, and a top-k body is small for any n, so check it
    against the model before calling. Deterministic: the same bytes give bit-identical floats
    on every machine. Raises only CodecError, for any argument values.
    """
    try:
        view = _as_view(body)
        codec_id, flags, n = _check_header(codec_id, flags, n_params)
        if flags & FLAG_TOPK:
            return _decode_topk(view, codec_id, n)
        return _decode_dense(view, codec_id, n)
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - belt and braces: decode raises one error type
        raise CodecError(f"{_INTERNAL}{exc!r}") from None


def max_body_len(codec_id: int, flags: int, n_params: int) -> int:
    """An upper bound on the length of any body ``decode`` accepts for these header fields.

    Lets a receiver refuse an oversized body before decoding. Raises CodecError for an unknown
    codec id, unknown flags or an ``n_params`` outside 1..2**32-1.
    """
    codec_id, flags, n = _check_header(codec_id, flags, n_params)
    dense = _dense_len(codec_id, n, 1)
    if flags & FLAG_TOPK:
        return _TOPK_HEAD.size + max((n + 7) // 8, 5 * n) + dense
    return dense


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
