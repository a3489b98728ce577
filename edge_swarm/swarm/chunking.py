"""Chunking of large messages under a broker's packet limit, and their idempotent reassembly.

How it works
------------
``split`` cuts a message into chunk frames of at most ``max_chunk_payload`` bytes each
(``chunk_frames`` has the frame layout); ``parse_chunk`` reads one back.

A ``Reassembler`` collects pieces per (source, message id) — ``source`` is whatever the
caller keys senders by, the MQTT topic in ``io/chunked.py``, so one sender's chunks can
never fill in another's message — and returns the message once all pieces are in and their
concatenation hashes to the id. Pieces that are still missing after ``retry_after_s``
without progress are reported by ``due_resends`` (at most once every ``retry_after_s``),
so the owner can ask the sender again instead of waiting forever; a message that makes no
progress for ``give_up_after_s`` is dropped. ``encode_resend_request`` and
``parse_resend_request`` are the wire form of that question.

Invariants
----------
- ``parse_chunk`` and ``parse_resend_request`` take untrusted input and raise only
  ``ChunkError``. ``Reassembler.add`` raises only ``ChunkError`` for a chunk that
  contradicts what is already known (other count/total/stride, other bytes at an index,
  a message larger than the whole budget, an assembly that does not hash to its id); the
  state is then as if the chunk had not come, except that a failed assembly drops its
  pieces so that all of them are asked for again.
- ``add`` is idempotent: a duplicate returns None, chunks come in any order, and a message
  is returned exactly once; completed ids are remembered (the last ``max_completed``) so
  late duplicates do not start it again.
- Memory is bounded: buffered piece bytes never exceed ``max_bytes`` and partial messages
  never exceed ``max_messages``; to make room the partial message with the oldest progress
  is evicted. Completing a message briefly needs its size once more (the join).
- Time is injected: ``now`` is in seconds on any monotonic clock.

Misuse by our own code raises ValueError. Pure: no sockets, no threads, no logging.

The frames are in ``chunk_frames``, the resend requests in ``chunk_resend``; this module
holds the ``Reassembler`` and re-exports the rest, so callers import from one place.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from edge_swarm.swarm.chunk_frames import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Chunk,
    ChunkError,
    chunk_at,
    chunk_count,
    is_chunk,
    message_id,
    parse_chunk,
    split,
)
from edge_swarm.swarm.chunk_frames import MAX_COUNT as MAX_COUNT
from edge_swarm.swarm.chunk_frames import MAX_TOTAL as MAX_TOTAL
from edge_swarm.swarm.chunk_resend import (
    MAX_MISSING_PER_REQUEST,
    MAX_REQUEST_BYTES,
    ResendRequest,
    encode_resend_request,
    parse_resend_request,
)

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_MISSING_PER_REQUEST",
    "MAX_REQUEST_BYTES",
    "VERSION",
    "Chunk",
    "ChunkError",
    "Reassembler",
    "ReassemblerStats",
    "Resend",
    "ResendRequest",
    "chunk_at",
    "chunk_count",
    "encode_resend_request",
    "is_chunk",
    "message_id",
    "parse_chunk",
    "parse_resend_request",
    "split",
]

# --------------------------------------------------------------------------- reassembly


class Resend(NamedTuple):
    """Chunks of one partial message to ask for again (at most MAX_MISSING_PER_REQUEST)."""

    message_id: bytes
    missing: list[int]
    source: str


@dataclass(frozen=True)
class ReassemblerStats:
    """A snapshot of a Reassembler's counters and current buffer use."""

    completed: int = 0
    duplicates: int = 0
    late_duplicates: int = 0
    rejected: int = 0
    evicted: int = 0
    gave_up: int = 0
    resends_due: int = 0
    buffered_bytes: int = 0
    partial_messages: int = 0


@dataclass
class _Partial:
    count: int
    total: int
    stride: int | None
    last_progress: float
    last_request: float | None = None
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0  # bytes held in pieces

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.pieces]


_Key = tuple[str, bytes]


class Reassembler:
    """Collects chunks into whole messages, with bounded memory and resend scheduling.

    ``max_bytes``: most piece bytes buffered over all partial messages (also the largest
    message accepted). ``max_messages``: most partial messages at once. ``retry_after_s``:
    how long without progress before missing chunks are due to be asked for, and the least
    time between two requests for one message. ``give_up_after_s``: how long without progress
    before a partial message is dropped. ``max_completed``: how many completed ids are
    remembered to ignore late duplicates. Raises ValueError on bad limits.

    Not thread-safe: one owner thread calls every method.
    """

    def __init__(
        self,
        max_bytes: int,
        max_messages: int,
        retry_after_s: float,
        give_up_after_s: float,
        max_completed: int = 1024,
    ) -> None:
        if max_bytes < 1 or max_messages < 1 or max_completed < 0:
            raise ValueError("need max_bytes >= 1, max_messages >= 1, max_completed >= 0")
        if not 0 < retry_after_s <= give_up_after_s:
            raise ValueError("need 0 < retry_after_s <= give_up_after_s")
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.retry_after_s = retry_after_s
        self.give_up_after_s = give_up_after_s
        self.max_completed = max_completed
        self._partials: OrderedDict[_Key, _Partial] = OrderedDict()  # oldest progress first
        self._completed: OrderedDict[_Key, None] = OrderedDict()
        self._buffered = 0
        counters = set(ReassemblerStats.__dataclass_fields__) - {
            "buffered_bytes",
            "partial_messages",
        }
        self._counts = dict.fromkeys(counters, 0)

    @property
    def stats(self) -> ReassemblerStats:
        """A snapshot of the counters and of the memory held now."""
        return ReassemblerStats(
            **self._counts, buffered_bytes=self._buffered, partial_messages=len(self._partials)
        )

    def was_completed(self, chunk: Chunk, source: str = "") -> bool:
        """Whether ``chunk`` belongs to a message completed earlier (among the remembered)."""
        return (source, chunk.message_id) in self._completed

    def add(self, chunk: Chunk, now: float, source: str = "") -> bytes | None:
        """Take one chunk; return the whole message when this chunk completes it, else None.

        ``source`` names the sender's channel (the topic): messages are keyed by
        (source, id). Duplicates (also of a message completed earlier) return None. Raises
        ChunkError, leaving the state unchanged, if the chunk contradicts its message's
        known count, total or stride, carries other bytes than an index already held, or
        belongs to a message larger than ``max_bytes``; raises ChunkError after dropping the
        pieces (so all are asked for again) if the assembly does not hash to its id.
        """
        key = (source, chunk.message_id)
        if key in self._completed:
            self._counts["late_duplicates"] += 1
            return None
        part = self._partials.get(key)
        try:
            if part is None:
                part = self._start(key, chunk, now)
            else:
                self._check_same(part, chunk)
        except ChunkError:
            self._counts["rejected"] += 1
            raise
        held = part.pieces.get(chunk.index)
        if held is not None:
            self._counts["duplicates"] += 1
            if held != chunk.piece:
                self._counts["rejected"] += 1
                raise ChunkError(f"chunk {chunk.index} differs from the one already held")
            return None
        self._make_room(len(chunk.piece), keep=key)
        part.pieces[chunk.index] = chunk.piece
        part.size += len(chunk.piece)
        self._buffered += len(chunk.piece)
        part.last_progress = now
        self._partials.move_to_end(key)
        if len(part.pieces) < part.count:
            return None
        return self._assemble(key, part)

    def due_resends(self, now: float) -> list[Resend]:
        """Partial messages whose missing chunks should be asked for again now.

        First drops every partial message without progress for ``give_up_after_s``. Then a
        message is due when its last progress and its last request (if any) are both at
        least ``retry_after_s`` old; reporting it counts as a request. Returns them oldest
        progress first, each with its first MAX_MISSING_PER_REQUEST missing indices.
        """
        due: list[Resend] = []
        for key, part in list(self._partials.items()):
            if now - part.last_progress >= self.give_up_after_s:
                self._drop(key)
                self._counts["gave_up"] += 1
                continue
            if now - part.last_progress < self.retry_after_s:
                continue
            if part.last_request is not None and now - part.last_request < self.retry_after_s:
                continue
            part.last_request = now
            missing = part.missing()[:MAX_MISSING_PER_REQUEST]
            due.append(Resend(key[1], missing, key[0]))
        self._counts["resends_due"] += len(due)
        return due

    def forget(self, mid: bytes, source: str = "") -> bool:
        """Drop the partial state of message ``mid`` from ``source``; return whether it had any.

        Completed ids stay remembered (late duplicates are still ignored).
        """
        return self._drop((source, mid))

    def missing(self, mid: bytes, source: str = "") -> list[int] | None:
        """The indices still missing of a partial message, or None if it is not partial."""
        part = self._partials.get((source, mid))
        return None if part is None else part.missing()

    # ------------------------------------------------------------------ internals

    def _start(self, key: _Key, chunk: Chunk, now: float) -> _Partial:
        if chunk.total > self.max_bytes:
            raise ChunkError(f"message of {chunk.total} bytes exceeds the {self.max_bytes} budget")
        while len(self._partials) >= self.max_messages:
            self._evict_oldest(keep=None)
        part = _Partial(chunk.count, chunk.total, chunk.stride(), last_progress=now)
        self._partials[key] = part
        return part

    @staticmethod
    def _check_same(part: _Partial, chunk: Chunk) -> None:
        if chunk.count != part.count or chunk.total != part.total:
            raise ChunkError(
                f"chunk says {chunk.count} chunks of {chunk.total} bytes; "
                f"the message has {part.count} of {part.total}"
            )
        stride = chunk.stride()
        if stride is not None and stride != part.stride:
            raise ChunkError(f"chunk stride {stride} differs from {part.stride}")

    def _make_room(self, size: int, keep: _Key) -> None:
        while self._buffered + size > self.max_bytes:
            if not self._evict_oldest(keep=keep):
                break  # cannot happen: the kept message alone fits (total <= max_bytes)

    def _evict_oldest(self, keep: _Key | None) -> bool:
        for key in self._partials:
            if key != keep:
                self._drop(key)
                self._counts["evicted"] += 1
                return True
        return False

    def _drop(self, key: _Key) -> bool:
        part = self._partials.pop(key, None)
        if part is None:
            return False
        self._buffered -= part.size
        return True

    def _assemble(self, key: _Key, part: _Partial) -> bytes:
        message = b"".join(part.pieces[i] for i in range(part.count))
        if len(message) != part.total or message_id(message) != key[1]:
            self._buffered -= part.size
            part.pieces.clear()
            part.size = 0
            self._counts["rejected"] += 1
            raise ChunkError("reassembled message does not match its id; asking for all again")
        self._drop(key)
        self._counts["completed"] += 1
        if self.max_completed:
            self._completed[key] = None
            while len(self._completed) > self.max_completed:
                self._completed.popitem(last=False)
        return message
