"""Quantized and sparse codec bodies for flat float32 parameter deltas.

How it works
------------
``encode(vec, spec, rng)`` turns a 1-D float32 vector into a *codec body*; the delta envelope
carries it next to its codec id, flags and ``n_params``. ``decode(body, codec_id, flags,
n_params)`` needs nothing else: a body is self-describing, so one swarm can mix codecs (a Pi on a
weak link sends ``sign1`` while a Jetson sends ``int8``) without sharing a ``CodecSpec``.

The body formats and the codec ids are in ``_quant_format``, the quantizers in
``_quant_encode``, the checks of untrusted bodies in ``_quant_decode``, and top-k selection
and the index encodings in ``_topk``; this module owns the public face: ``CodecSpec``,
``encode``, ``decode``, ``max_body_len`` and the one public error, and re-exports the ids.

Invariants
----------
- ``decode`` takes untrusted bytes and raises only ``CodecError``; the result is always a
  fresh, finite float32 array of ``n``, the same bits on every machine (``_quant_decode``).
- Misuse by our own code (bad spec, non-finite input) raises ValueError/TypeError; bad bytes
  from a peer raise CodecError (a ValueError subclass) and nothing else.

Pure numpy: no I/O, no threads, no logging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from edge_swarm.swarm._quant_decode import _as_view, _check_header, _decode_dense, _decode_topk
from edge_swarm.swarm._quant_encode import _as_input, _encode_dense, _encode_topk
from edge_swarm.swarm._quant_format import (
    _LEVELS,
    _TOPK_HEAD,
    CODEC_FLOAT16,
    CODEC_FLOAT32,
    CODEC_IDS,
    CODEC_INT4,
    CODEC_INT8,
    CODEC_SIGN1,
    FLAG_TOPK,
    CodecError,
    _dense_len,
)
from edge_swarm.swarm._topk import INDEX_BITMAP, INDEX_DELTA, topk_count

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

ROUNDINGS = ("nearest", "stochastic")
INDEX_PACKINGS = ("delta", "bitmap", "auto")
MAX_CHUNK = 1 << 24
"""Largest chunk a CodecSpec accepts (a decoder accepts any u32 chunk >= 1)."""

_INTERNAL = "internal decode failure: "

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
    """Encode a delta into the codec body that ``decode`` reads back (layouts: ``_quant_format``).

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
