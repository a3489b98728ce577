"""Secure aggregation's masked ring elements as an envelope body (``swarm/codec.py``).

A masked update is uniform noise in Z_{2^bits}: nothing compresses it, so what it costs on
the wire is its width. A ring of 32 bits travels as u32 (codec 16), one of at most 24 bits
as 3 little-endian bytes per element (codec 17): a quarter less, for a site whose fleet and
fixed-point scale fit (swarm/privacy.py sizes the scale to the ring). Pure numpy.
"""

from __future__ import annotations

import numpy as np

CODEC_MASKED = 16  # u32 per element
CODEC_MASKED24 = 17  # 3 bytes per element (rings of at most 24 bits)
WIDTH = {CODEC_MASKED: 4, CODEC_MASKED24: 3}


def ring_codec(bits: int) -> int:
    """The codec id that carries elements of a ``bits``-bit ring."""
    return CODEC_MASKED24 if bits <= 24 else CODEC_MASKED


def pack(values: np.ndarray, codec: int) -> bytes:
    """``values`` (uint32, each below 2**(8 * width)) as the codec's body."""
    raw = np.ascontiguousarray(values, dtype="<u4").view(np.uint8).reshape(-1, 4)
    return raw[:, : WIDTH[codec]].tobytes()


def unpack(body: bytes, codec: int, n: int, flags: int = 0) -> np.ndarray | None:
    """The uint32 elements of a masked body; None for another codec. Raises
    ``EnvelopeError`` (from ``swarm/codec.py``) for a body of the wrong length or flags."""
    width = WIDTH.get(codec)
    if width is None:
        return None
    if len(body) != width * n or flags:
        from edge_swarm.swarm.codec import EnvelopeError

        raise EnvelopeError(f"masked body of {len(body)} bytes for {n} params")
    out = np.zeros((n, 4), dtype=np.uint8)
    out[:, :width] = np.frombuffer(body, dtype=np.uint8).reshape(n, width)
    return out.view("<u4").reshape(n).astype(np.uint32)
