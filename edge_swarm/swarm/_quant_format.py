"""The byte layout of quantized and sparse codec bodies (``quantize.py``): codec ids, flags,
lengths and the limits on scales; the one error a bad body raises.

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

Scales are ``+0`` or a *normal* float32 in ``[FLT_MIN, MAX_SCALE]`` (``_MAX_SCALE``: the
largest ``s`` with ``float32(s * levels)`` finite), so that ``code * scale`` is finite and
never subnormal; encoders write only such scales and the decoder accepts only them.

Pure: no I/O.
"""

from __future__ import annotations

import struct

import numpy as np

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

_U32_MAX = 2**32 - 1
_FLT_MAX = np.finfo(np.float32).max
_FLT_MIN = np.finfo(np.float32).tiny  # smallest *normal* float32
_LEVELS = {CODEC_INT8: 127, CODEC_INT4: 7}
_CHUNK_HEAD = struct.Struct("<I")
_TOPK_HEAD = struct.Struct("<IBI")  # k, index encoding, index length in bytes


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


def _payload_len(codec_id: int, n: int) -> int:
    return {CODEC_INT8: n, CODEC_INT4: (n + 1) // 2, CODEC_SIGN1: (n + 7) // 8}[codec_id]


def _dense_len(codec_id: int, n: int, chunk: int) -> int:
    if codec_id == CODEC_FLOAT32:
        return 4 * n
    if codec_id == CODEC_FLOAT16:
        return 2 * n
    return _CHUNK_HEAD.size + 4 * (-(-n // chunk)) + _payload_len(codec_id, n)
