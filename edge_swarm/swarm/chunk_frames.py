"""The chunk frame: how ``split`` cuts a large message under a broker's packet limit, and
how ``parse_chunk`` reads one frame back.

How it works
------------
``split`` cuts a message into chunk frames. All integers little-endian::

    offset  size  field
    0       4     magic  b"ESCH"
    4       1     version (u8, = 1)
    5       32    message id = sha256 of the whole message
    37      4     chunk index (u32)
    41      4     chunk count (u32)
    45      8     total message length (u64)
    53      ...   the piece: message[index * stride : (index + 1) * stride]

Every chunk but the last carries exactly ``stride`` bytes and the last carries the rest
(1..stride bytes), so each frame alone fixes where its piece goes. The empty message is one
chunk with an empty piece.

``is_chunk`` tells a frame from the unchunked payloads sent on the same topics by its magic.

Invariants
----------
- ``parse_chunk`` takes untrusted input and raises only ``ChunkError``; a frame it accepts
  is self-consistent (its piece fits the layout ``split`` makes), though not yet checked
  against the other chunks of its message (``chunking.Reassembler`` does that).

Misuse by our own code raises ValueError. Pure: no sockets, no threads, no logging.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

MAGIC = b"ESCH"
VERSION = 1
_HEAD = struct.Struct("<4sB32sIIQ")  # magic, version, id, index, count, total
HEADER_SIZE = _HEAD.size
"""Bytes of framing in front of every piece (53)."""

MAX_COUNT = 2**32 - 1
MAX_TOTAL = 2**64 - 1


class ChunkError(ValueError):
    """A chunk or resend request from a peer that is malformed or contradicts earlier ones."""


def message_id(message: bytes) -> bytes:
    """The id of ``message``: its raw 32-byte sha256."""
    return hashlib.sha256(message).digest()


def is_chunk(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` starts with the chunk magic (cheap; ``parse_chunk`` does the checks).

    Unchunked payloads sent on the same topics must never start with ``b"ESCH"``: the
    delta envelope starts with ``b"ESWD"`` and the checkpoint with ``b"ESCK"``.
    """
    return bytes(data[:4]) == MAGIC


# --------------------------------------------------------------------------- splitting


def _stride(max_chunk_payload: int) -> int:
    if isinstance(max_chunk_payload, bool) or not isinstance(max_chunk_payload, int):
        raise ValueError(f"max_chunk_payload must be an int, got {max_chunk_payload!r}")
    if max_chunk_payload <= HEADER_SIZE:
        raise ValueError(f"max_chunk_payload must exceed the {HEADER_SIZE}-byte header")
    return max_chunk_payload - HEADER_SIZE


def chunk_count(total: int, max_chunk_payload: int) -> int:
    """How many frames of at most ``max_chunk_payload`` bytes a ``total``-byte message takes."""
    stride = _stride(max_chunk_payload)
    return max(1, -(-total // stride))


def chunk_at(message: bytes, mid: bytes, index: int, max_chunk_payload: int) -> bytes:
    """The frame of chunk ``index`` of ``message`` (whose id is ``mid``), as ``split`` makes it.

    Lets a sender keep only the message and rebuild one chunk on a resend request. Raises
    ValueError if ``index`` is out of range or ``max_chunk_payload`` is too small.
    """
    stride = _stride(max_chunk_payload)
    count = chunk_count(len(message), max_chunk_payload)
    if not 0 <= index < count:
        raise ValueError(f"chunk index {index} outside 0..{count - 1}")
    if count > MAX_COUNT:
        raise ValueError("message needs more than 2**32 - 1 chunks")
    piece = message[index * stride : (index + 1) * stride]
    return _HEAD.pack(MAGIC, VERSION, mid, index, count, len(message)) + piece


def split(message: bytes, max_chunk_payload: int) -> list[bytes]:
    """Cut ``message`` into chunk frames of at most ``max_chunk_payload`` bytes each.

    Always frames, even a message that fits in one chunk (count 1). Returns the frames in
    index order. Raises ValueError if ``max_chunk_payload <= HEADER_SIZE``.
    """
    data = bytes(message)
    mid = message_id(data)
    return [
        chunk_at(data, mid, i, max_chunk_payload)
        for i in range(chunk_count(len(data), max_chunk_payload))
    ]


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Chunk:
    """One parsed chunk frame: well formed and self-consistent, but not yet checked against
    the other chunks of its message."""

    message_id: bytes
    index: int
    count: int
    total: int
    piece: bytes = field(repr=False)

    @property
    def is_last(self) -> bool:
        """Whether this is the final chunk of its message."""
        return self.index == self.count - 1

    def stride(self) -> int | None:
        """The piece length of every non-last chunk, or None when the message has one chunk."""
        if self.count == 1:
            return None
        if not self.is_last:
            return len(self.piece)
        return (self.total - len(self.piece)) // (self.count - 1)


def parse_chunk(data: object) -> Chunk:
    """Parse one chunk frame from untrusted input; raise only ChunkError.

    Checks magic, version, ``index < count``, and that the piece length fits the layout
    ``split`` makes: a non-last piece of length s needs ``(count-1)*s < total <= count*s``;
    the last piece of length L needs ``total - L`` to be ``(count-1)`` equal strides, each
    at least L (and at least 1); a single chunk carries the whole message.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ChunkError(f"chunk is not bytes: {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise ChunkError(f"chunk of {len(data)} bytes is shorter than its header")
    magic, version, mid, index, count, total = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ChunkError(f"bad chunk magic {magic!r}")
    if version != VERSION:
        raise ChunkError(f"unsupported chunk version {version}")
    if count < 1 or index >= count:
        raise ChunkError(f"chunk index {index} outside a count of {count}")
    piece = data[HEADER_SIZE:]
    _check_layout(index, count, total, len(piece))
    return Chunk(mid, index, count, total, piece)


def _check_layout(index: int, count: int, total: int, size: int) -> None:
    if count == 1:
        if size != total:
            raise ChunkError(f"single chunk carries {size} of {total} bytes")
        return
    if index < count - 1:
        if size < 1 or not (count - 1) * size < total <= count * size:
            raise ChunkError(f"piece of {size} bytes does not fit {count} chunks of {total}")
        return
    rest = total - size
    if size < 1 or rest < count - 1 or rest % (count - 1) or rest // (count - 1) < size:
        raise ChunkError(f"last piece of {size} bytes does not fit {count} chunks of {total}")
