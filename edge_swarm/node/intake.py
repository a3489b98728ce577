"""Agents' submissions to the ledger, as the coordinating gateway takes them in.

A submission is authenticated before anything about the round is looked at (or told to its
sender), then checked against the round in progress (``Coordinator.admit``), then handed to
the ledger, which every replica checks again when it applies it. A refusal goes back to its
author on ``ledger/reply/{author}``, except where there is nothing to tell: a copy of what
the ledger already holds (an agent re-sending after a restart), and a full disk, which is not
final (the author's re-send lands once space is back; ``node.disk`` says it once).
"""

from __future__ import annotations

from collections.abc import Callable

from edge_swarm.io.ledger import LedgerBackend
from edge_swarm.node.disk import ledger_full
from edge_swarm.node.vitals import RateLimitedLog
from edge_swarm.swarm.coordinator import Coordinator
from edge_swarm.swarm.messages import MessageError, Reply, Submission
from edge_swarm.swarm.topics import Topics
from ledger_lite import Entry, Tx
from ledger_lite import verify as verify_signature
from ledger_lite.errors import LedgerError, Refused
from ledger_lite.store import NoSpace


class Intake:
    """Takes ``ledger/submit`` messages for a coordinating gateway (on its loop thread)."""

    def __init__(
        self,
        ledger: LedgerBackend,
        coordinator: Coordinator,
        topics: Topics,
        publish: Callable[[str, bytes], None],
        call_soon: Callable[[Callable[[], None]], None],
        drops: RateLimitedLog,
        now_ms: Callable[[], int],
    ) -> None:
        self._ledger = ledger
        self._coordinator = coordinator
        self._topics = topics
        self._publish = publish
        self._call_soon = call_soon  # the ledger may answer on its replica's thread
        self._drops = drops
        self._now_ms = now_ms

    def take(self, payload: bytes) -> None:
        try:
            tx = Tx.from_dict(Submission.decode(payload).tx)
        except (MessageError, LedgerError) as exc:
            self._drops.drop("bad submission", str(exc))
            return
        state = self._ledger.state
        key = state.public_key(tx.author)
        if key is None or not verify_signature(key, tx.signing_bytes(), bytes.fromhex(tx.sig)):
            self._refuse(tx, Refused("bad_signature", "unknown author or bad signature"))
            return
        if tx.tx_id in state.seen:
            return  # a re-send of what the ledger has: not "out of round", nothing to tell
        reason = self._coordinator.admit(tx.kind, tx.author, tx.payload, tx.ts, self._now_ms())
        if reason is not None:
            self._refuse(tx, Refused("out_of_round", reason))
            return

        def result(entry: Entry | None, error: LedgerError | None) -> None:
            if error is not None:
                self._call_soon(lambda: self._refuse(tx, error))

        self._ledger.submit(tx, result)

    def _refuse(self, tx: Tx, error: LedgerError) -> None:
        if isinstance(error, Refused) and error.reason == "replay":
            return  # a resubmission of what is already in: nothing to tell
        if isinstance(error, NoSpace):
            ledger_full(error, f"{tx.author}'s {tx.kind}")
            return
        self._drops.drop("refused submission", f"{tx.kind} from {tx.author}: {error}")
        try:
            topic = self._topics.ledger_reply(tx.author)
        except ValueError:
            return
        self._publish(topic, Reply(req=tx.tx_id, refused=str(error)).encode())
