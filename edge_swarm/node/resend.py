"""What an agent sends again, bounded: submissions the ledger has not shown yet, its own
delta of a round that is not merged yet, and its ledger queries. Times are
``time.monotonic()`` seconds, passed in.

Both are needed because an acknowledgement from a broker is not delivery: a gateway can stop
leading before it forwards a submission, and a broker can acknowledge a delta and go away
before forwarding it. Copies are harmless: the ledger refuses a replayed transaction, and
receivers keep envelopes by sha256.

The delta is also kept on disk before its commit is submitted: after a power cut the ledger
may hold our commit while the envelope behind it died with the broker and our memory, and
only these exact bytes (their sha256 is on the ledger) let the round be merged.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable
from pathlib import Path

from ledger_lite.files import write_atomic

log = logging.getLogger(__name__)

# Resends back off (3, 6, 12, 24, then every 30 s) so that they outlast a gateway that is
# restarting, which can take tens of seconds on a loaded Pi, without flooding a healthy site.
RESEND_FIRST_S = 3.0
RESEND_MAX_S = 30.0
MAX_SUBMITS = 10  # about 3 minutes of trying
MAX_REPUBLISH = 8  # about 2 minutes
_MAGIC = b"ESOD"  # the kept delta: magic, round (u32 big-endian), the envelope frame
MAX_KEPT_BYTES = 64 * 1024 * 1024
QUERY_RETRY_S = 2.0  # a ledger query unanswered this long is sent again, backing off
MAX_OUTSTANDING_QUERIES = 8


def backoff_s(tries: int) -> float:
    """Seconds to wait after the ``tries``-th send before the next one."""
    return min(RESEND_FIRST_S * 2 ** max(tries - 1, 0), RESEND_MAX_S)


class PendingSubmissions:
    """Submissions (tx id -> payload) sent and not yet seen on the ledger or refused."""

    def __init__(self, publish: Callable[[bytes], None]) -> None:
        self._publish = publish
        self._items: dict[str, list] = {}  # tx id -> [payload, last sent, tries]

    def sent(self, tx_id: str, payload: bytes, now: float) -> None:
        self._items[tx_id] = [payload, now, 1]

    def settled(self, tx_id: str) -> None:
        """The ledger has it, or refused it: stop sending."""
        self._items.pop(tx_id, None)

    def tick(self, now: float) -> None:
        for tx_id, item in list(self._items.items()):
            payload, sent, tries = item
            if now - sent < backoff_s(tries):
                continue
            if tries >= MAX_SUBMITS:
                del self._items[tx_id]
                log.warning("submission %s never reached the ledger; giving up", tx_id[:12])
                continue
            self._publish(payload)
            item[1], item[2] = now, tries + 1


class OwnDelta:
    """This agent's latest envelope, sent again while its round is not merged here."""

    def __init__(
        self,
        publish: Callable[[str, bytes], None],
        path: Path | None = None,
        topic_of: Callable[[int], str] = str,
    ) -> None:
        self._publish = publish
        self._path = path
        self._topic_of = topic_of  # a round's delta topic (for a delta kept on disk)
        self._last: tuple[int, str, bytes] | None = None  # (round, topic, frame)
        self._at = 0.0
        self._times = 0
        self._answered: tuple[int, str, float] | None = None  # round, sha256, when

    def keep(self, rnd: int, frame: bytes) -> None:
        """Put the delta on disk (atomically), before its commit is submitted. Raises
        OSError if it cannot be written: the caller must then not commit it."""
        if self._path is not None:
            write_atomic(self._path, _MAGIC + struct.pack(">I", rnd) + frame)

    def kept(self) -> tuple[int, bytes] | None:
        """The delta kept on disk by an earlier run (round, frame), or None (none, or
        unreadable: logged, and the round goes on without it)."""
        if self._path is None:
            return None
        try:
            with open(self._path, "rb") as f:
                data = f.read(MAX_KEPT_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the kept delta %s: %s", self._path, exc)
            return None
        if len(data) < 8 or len(data) > MAX_KEPT_BYTES or data[:4] != _MAGIC:
            log.warning("ignoring a damaged kept delta %s", self._path)
            return None
        return struct.unpack(">I", data[4:8])[0], data[8:]

    def resume(
        self, committed: dict[int, str], merged_round: int, now: float
    ) -> tuple[int, bytes] | None:
        """After a restart: if the ledger holds our commit (``committed``: round -> its
        envelope sha256) of a round past ``merged_round``, send the kept delta again (the
        bytes that commit names) and return (round, frame) for our inbox; else None."""
        kept = self.kept()
        if kept is None:
            return None
        rnd, frame = kept
        if rnd <= merged_round or committed.get(rnd) != hashlib.sha256(frame).hexdigest():
            return None
        log.info("round %d: our committed delta, kept on disk, is sent again", rnd)
        topic = self._topic_of(rnd)
        self.sent(rnd, topic, frame, now)
        self._publish(topic, frame)
        return rnd, frame

    def sent(self, rnd: int, topic: str, frame: bytes, now: float) -> None:
        self._last, self._at, self._times = (rnd, topic, frame), now, 0

    def due(self, now: float) -> bool:
        return self._last is not None and now - self._at > backoff_s(self._times + 1)

    def republish(self, merged_round: int, now: float, why: str) -> None:
        """Send it again (at most ``MAX_REPUBLISH`` times) if its round is past
        ``merged_round``, the newest round this agent holds the model of."""
        last = self._last
        if last is None or last[0] <= merged_round or self._times >= MAX_REPUBLISH:
            return
        self._times += 1
        self._at = now
        self._publish(last[1], last[2])
        log.info("round %d: published our delta again (%s)", last[0], why)

    def answer(self, rnd: int, sha256: str, now: float) -> bool:
        """A gateway or a committee member that missed our envelope of ``rnd`` asks for it by
        the sha256 our commit names: send it again if we hold those bytes (in memory or kept
        on disk), at most once per ``RESEND_FIRST_S`` for the same delta (one answer reaches
        everyone who asked), while a request for a newer round's is answered at once.
        Returns whether it was sent."""
        done = self._answered
        if done is not None and done[:2] == (rnd, sha256) and now - done[2] < RESEND_FIRST_S:
            return False
        last = self._last
        frame = last[2] if last is not None and last[0] == rnd else None
        if frame is None:
            kept = self.kept()
            frame = kept[1] if kept is not None and kept[0] == rnd else None
        if frame is None or hashlib.sha256(frame).hexdigest() != sha256:
            return False
        self._answered = (rnd, sha256, now)
        self._publish(self._topic_of(rnd), frame)
        log.info("round %d: sent our delta again, as asked", rnd)
        return True


class LedgerQueries:
    """The ids of this agent's unanswered ledger queries, and when to ask again.

    A reply to *any* outstanding query is taken, and retries back off (2, 4, 8, 16, then
    every 30 s): a gateway that needs longer than one retry interval to answer (a hundred
    agents syncing at once) otherwise never has a reply accepted, since each retry replaced
    the id the agent would take, and every retry added to its queue.
    """

    def __init__(self) -> None:
        self._sent: dict[str, float] = {}  # id -> when sent, oldest first
        self._tries = 0
        self._last = float("-inf")
        self._asked_again = False  # since the last answer, for a gateway heard from

    def sent(self, query_id: str, now: float) -> None:
        self._sent[query_id] = now
        while len(self._sent) > MAX_OUTSTANDING_QUERIES:
            del self._sent[next(iter(self._sent))]
        self._tries += 1
        self._last = now

    def due(self, now: float) -> bool:
        """Whether to ask again now (the caller knows whether it still needs to)."""
        wait = min(QUERY_RETRY_S * 2 ** max(self._tries - 1, 0), RESEND_MAX_S)
        return now - self._last > wait

    def gateway_heard(self) -> None:
        """A gateway spoke (a ledger event). A query still unanswered may have gone out
        before it listened (a whole site starting at once: the first retry came 2 s later,
        most of a site's start-up, issue 20), so the next one is due now; once per answer."""
        if self._sent and not self._asked_again:
            self._asked_again = True
            self._last = float("-inf")

    def answered(self, query_id: str) -> bool:
        """Whether ``query_id`` is one of ours still open; if so the backoff starts over."""
        if query_id not in self._sent:
            return False
        self._sent.clear()  # older ones asked for less; the mirror skips what it holds
        self._tries = 0
        self._asked_again = False
        return True
