"""Chunked publishing over MQTT: large messages under the broker's packet limit, with resends.

How it works
------------
``ChunkedSender.publish(topic, message)`` sends a message that fits in one PUBLISH packet
as it is, and any larger one as chunk frames (``swarm/chunking.py``) small enough that
every PUBLISH packet — fixed header, topic, packet id, a margin for MQTT 5 properties, and
the frame — stays within ``max_packet`` (default 256 KiB, Mosquitto's usual
``max_packet_size``). It keeps the last ``keep`` chunked messages so that it can answer
resend requests: ``on_resend_request(payload)`` re-publishes the named chunks on the
original topic (each chunk at most once per ``resend_interval_s``, however many receivers
ask).

``ChunkedReceiver.feed(topic, payload, now)`` passes unchunked payloads straight through
and feeds chunk frames to a ``Reassembler`` keyed by topic; it returns each whole message
exactly once. ``tick(now)`` asks the sender for the chunks that are still missing after
``retry_after_s`` without progress, by calling ``request(resend_topic, payload)``.

Why small messages go unframed: receivers tell the two apart by the first four bytes
(``b"ESCH"``; envelopes start ``b"ESWD"``, checkpoints ``b"ESCK"``), so the small deltas of
small models — whose size the byte benchmarks count — pay no 53-byte chunk header, and
nothing that worked before chunking changes on the wire. A sender never sends unframed a
payload that itself starts with ``b"ESCH"``.

Wiring (agent and gateway)
--------------------------
- A publisher of large messages on ``round/{r}/delta/{node}`` subscribes to
  ``topics.resend_filter(node)`` and hands each RESEND message's payload to
  ``sender.on_resend_request``.
- A receiver subscribes to the data topics as before and passes each payload through
  ``receiver.feed``; a non-None result is the message (then parsed as usual). It calls
  ``receiver.tick(now)`` from its loop's tick (every message and at least every
  ``tick_s``); requests go to ``round/{r}/resend/{node}`` (``resend_topic_for``).
- Chunks are only asked for when at least one chunk of a message arrived; a message lost
  whole is recovered by the protocol (ledger, retained checkpoint), not here.

Threads: like ``runtime.py``, paho's network thread only enqueues messages; every method of
these classes is called from the one owner thread that drains that queue. Neither class
takes locks. Bad input from the network is counted and logged (rate limited), never raised.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_swarm.io.mqtt import MqttClient
from edge_swarm.swarm.chunking import (
    HEADER_SIZE,
    MAGIC,
    ChunkError,
    Reassembler,
    chunk_at,
    chunk_count,
    encode_resend_request,
    is_chunk,
    message_id,
    parse_chunk,
    parse_resend_request,
)
from edge_swarm.swarm.topics import TopicError, TopicKind, Topics

__all__ = [
    "DEFAULT_MAX_PACKET",
    "ChunkedReceiver",
    "ChunkedSender",
    "publish_overhead",
    "resend_topic_for",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PACKET = 256 * 1024
"""The default largest MQTT packet a broker accepts, in bytes (Mosquitto's usual limit)."""

PROPERTIES_MARGIN = 64
"""Bytes kept free in each packet for MQTT 5 properties a client or broker may add."""

DEFAULT_RESEND_INTERVAL_S = 1.0
"""Least time between two re-publications of one chunk, in seconds."""


def publish_overhead(topic: str) -> int:
    """A conservative upper bound of a PUBLISH packet's bytes besides its payload.

    Fixed header byte + 4-byte remaining length + 2-byte topic length + topic + 2-byte
    packet id + PROPERTIES_MARGIN.
    """
    return 1 + 4 + 2 + len(topic.encode("utf-8")) + 2 + PROPERTIES_MARGIN


class _DropLog:
    """Logs the first three drops of each reason at warning, then every 100th."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def drop(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= 3 or n % 100 == 0:
            log.warning("dropped (%s, #%d): %s", reason, n, detail)


# --------------------------------------------------------------------------- sender


@dataclass
class _Sent:
    topic: str
    message: bytes = field(repr=False)
    frame_size: int
    count: int
    qos: int
    resent_at: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SenderStats:
    """Counters of a ChunkedSender."""

    messages: int = 0
    unframed: int = 0
    chunks: int = 0
    resend_requests: int = 0
    resent_chunks: int = 0
    throttled: int = 0
    bad_requests: int = 0
    unknown_requests: int = 0


class ChunkedSender:
    """Publishes messages in chunks under ``max_packet`` and answers resend requests.

    ``keep``: how many chunked messages are kept (by reference) to answer resend requests;
    memory is their total size. ``chunk_above``: messages longer than this are chunked even
    if they would fit one packet (None: only those that do not fit). ``clock``: seconds, for
    ``resend_interval_s``. Raises ValueError if a packet cannot hold a chunk header.
    Called from one owner thread only.
    """

    def __init__(
        self,
        client: MqttClient,
        max_packet: int = DEFAULT_MAX_PACKET,
        keep: int = 8,
        *,
        chunk_above: int | None = None,
        resend_interval_s: float = DEFAULT_RESEND_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_packet <= HEADER_SIZE + publish_overhead("") or keep < 0:
            raise ValueError("max_packet too small for a chunk, or keep < 0")
        self.client = client
        self.max_packet = max_packet
        self.keep = keep
        self.chunk_above = chunk_above
        self.resend_interval_s = resend_interval_s
        self._clock = clock
        self._sent: OrderedDict[bytes, _Sent] = OrderedDict()
        self._counts: Counter[str] = Counter()
        self._drops = _DropLog()

    @property
    def stats(self) -> SenderStats:
        """A snapshot of the counters."""
        return SenderStats(**self._counts)

    def frame_size(self, topic: str) -> int:
        """The largest chunk frame (MQTT payload) sent on ``topic``.

        Raises ValueError if the topic leaves no room for a chunk under ``max_packet``.
        """
        size = min(self.max_packet - publish_overhead(topic), self.client.max_payload)
        if size <= HEADER_SIZE:
            raise ValueError(f"topic {topic[:80]!r} leaves no room for a chunk")
        return size

    def prepare(self, topic: str, message: bytes, qos: int = 1) -> list[bytes]:
        """The payloads that ``publish`` would send for ``message``, in order.

        One unframed payload if the message fits one packet (and is not over
        ``chunk_above``, and does not start with the chunk magic); else the chunk frames,
        and the message is remembered to answer resend requests. Raises ValueError on a
        topic that leaves no room for a chunk.
        """
        data = bytes(message)
        size = self.frame_size(topic)
        limit = size if self.chunk_above is None else min(size, self.chunk_above)
        self._counts["messages"] += 1
        if len(data) <= limit and not data.startswith(MAGIC):
            self._counts["unframed"] += 1
            return [data]
        mid = message_id(data)
        count = chunk_count(len(data), size)
        self._remember(mid, _Sent(topic, data, size, count, qos))
        self._counts["chunks"] += count
        return [chunk_at(data, mid, i, size) for i in range(count)]

    def publish(self, topic: str, message: bytes, qos: int = 1) -> bool:
        """Publish ``message`` on ``topic``, in chunks if it needs them (see ``prepare``).

        Returns True if the client accepted every payload (sent, or queued for after a
        reconnect). Raises ValueError on a bad topic or qos (from the client).
        """
        ok = True
        for payload in self.prepare(topic, message, qos):
            ok = self.client.publish(topic, payload, qos=qos) and ok
        return ok

    def on_resend_request(self, payload: bytes) -> int:
        """Re-publish the chunks a resend request names; return how many were sent.

        Takes untrusted input: a malformed request, an id not kept any more, a topic other
        than the one the message went on, or an index out of range is counted and dropped.
        A chunk re-published less than ``resend_interval_s`` ago is skipped (throttled).
        """
        self._counts["resend_requests"] += 1
        try:
            req = parse_resend_request(payload)
        except ChunkError as exc:
            self._counts["bad_requests"] += 1
            self._drops.drop("bad resend request", str(exc))
            return 0
        sent = self._sent.get(req.message_id)
        if sent is None or sent.topic != req.topic:
            self._counts["unknown_requests"] += 1
            log.debug("resend request for %s on %s: not kept", req.message_id.hex(), req.topic)
            return 0
        if max(req.missing) >= sent.count:
            self._counts["bad_requests"] += 1
            self._drops.drop("bad resend request", f"index past {sent.count} chunks")
            return 0
        return self._resend(req.message_id, sent, req.missing)

    def _resend(self, mid: bytes, sent: _Sent, indices: tuple[int, ...]) -> int:
        now = self._clock()
        n = 0
        for i in indices:
            last = sent.resent_at.get(i)
            if last is not None and now - last < self.resend_interval_s:
                self._counts["throttled"] += 1
                continue
            sent.resent_at[i] = now
            frame = chunk_at(sent.message, mid, i, sent.frame_size)
            if self.client.publish(sent.topic, frame, qos=sent.qos):
                n += 1
        self._counts["resent_chunks"] += n
        return n

    def _remember(self, mid: bytes, sent: _Sent) -> None:
        if self.keep == 0:
            return
        self._sent[mid] = sent
        self._sent.move_to_end(mid)
        while len(self._sent) > self.keep:
            self._sent.popitem(last=False)


# --------------------------------------------------------------------------- receiver


def resend_topic_for(topics: Topics) -> Callable[[str], str]:
    """A map from a data topic to where its sender takes resend requests.

    ``round/{r}/{kind}/{node}`` (any per-round kind but RESEND itself) maps to
    ``round/{r}/resend/{node}``; any other topic raises TopicError.
    """

    def resend_topic(topic: str) -> str:
        parsed = topics.parse(topic)
        if parsed.round is None or parsed.node is None or parsed.kind == TopicKind.RESEND:
            raise TopicError(f"no resend topic for {topic[:200]!r}")
        return topics.resend(parsed.round, parsed.node)

    return resend_topic


@dataclass(frozen=True)
class ReceiverStats:
    """Counters of a ChunkedReceiver (the reassembler has its own)."""

    messages: int = 0
    unframed: int = 0
    chunks: int = 0
    bad_chunks: int = 0
    replayed: int = 0  # chunks of messages already completed (redelivered or replayed)
    requests_sent: int = 0
    request_errors: int = 0


class ChunkedReceiver:
    """Turns payloads (chunked or not) back into whole messages and asks for missing chunks.

    ``request(resend_topic, payload)`` sends one resend request (typically
    ``lambda t, p: client.publish(t, p, qos=1)``); ``resend_topic`` maps a data topic to
    its sender's resend topic (``resend_topic_for(topics)``). Called from one owner thread.
    """

    def __init__(
        self,
        reassembler: Reassembler,
        request: Callable[[str, bytes], object],
        resend_topic: Callable[[str], str],
    ) -> None:
        self.reassembler = reassembler
        self._request = request
        self._resend_topic = resend_topic
        self._counts: Counter[str] = Counter()
        self._drops = _DropLog()

    @property
    def stats(self) -> ReceiverStats:
        """A snapshot of the counters."""
        return ReceiverStats(**self._counts)

    def feed(self, topic: str, payload: bytes, now: float) -> bytes | None:
        """Take one received payload; return a whole message, or None if none is complete.

        An unframed payload is returned as it is. A chunk frame is reassembled; the message
        it completes is returned exactly once. ``now`` is seconds on the clock given to
        ``tick``. A bad or contradicting chunk is counted and dropped, never raised.
        """
        if not is_chunk(payload):
            self._counts["unframed"] += 1
            self._counts["messages"] += 1
            return bytes(payload)
        self._counts["chunks"] += 1
        try:
            chunk = parse_chunk(payload)
            if self.reassembler.was_completed(chunk, source=topic):
                # A chunk of a message already taken: a QoS 1 redelivery, or a replay of a
                # captured message; either way it is refused, and counted.
                self._counts["replayed"] += 1
                self._drops.drop("replayed", f"{topic}: a chunk of a message already received")
            message = self.reassembler.add(chunk, now, source=topic)
        except ChunkError as exc:
            self._counts["bad_chunks"] += 1
            self._drops.drop("bad chunk", f"{topic}: {exc}")
            return None
        if message is not None:
            self._counts["messages"] += 1
        return message

    def tick(self, now: float) -> int:
        """Ask for every chunk that is due again (see ``Reassembler.due_resends``).

        Returns how many requests were handed to ``request``. A data topic without a resend
        topic, or a ``request`` that raises, is counted and logged, never raised.
        """
        n = 0
        for due in self.reassembler.due_resends(now):
            try:
                target = self._resend_topic(due.source)
                self._request(
                    target, encode_resend_request(due.message_id, due.missing, due.source)
                )
            except (TopicError, ValueError, RuntimeError) as exc:
                self._counts["request_errors"] += 1
                self._drops.drop("resend request not sent", f"{due.source}: {exc}")
                continue
            log.info(
                "asked for %d missing chunk(s) of %s on %s",
                len(due.missing),
                due.message_id.hex()[:12],
                due.source,
            )
            n += 1
        self._counts["requests_sent"] += n
        return n
