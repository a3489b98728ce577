"""Agents' submissions to the ledger, as the coordinating gateway takes them in.

A submission is authenticated before anything about the round is looked at (or told to its
sender), then checked against the round in progress (``Coordinator.admit``), then handed to
the ledger, which every replica checks again when it applies it. A refusal goes back to its
author on ``ledger/reply/{author}``, except where there is nothing to tell: a copy of what
the ledger already holds (an agent re-sending after a restart), and a full disk, which is not
final (the author's re-send lands once space is back; ``node.disk`` says it once).

In a swarm whose committee merges, an agent's ``delta_commit`` is not appended: checked as
the ledger would check it, it goes to the coordinator (``act`` given), which records it in
the round's ``round_close`` (``ledger_lite/commits.py``). Its author sends it again until the
round closes; a copy of a commit already recorded is dropped without a word.
"""

from __future__ import annotations

from collections.abc import Callable

from edge_swarm.io.ledger import LedgerBackend
from edge_swarm.node.disk import ledger_full
from edge_swarm.node.vitals import RateLimitedLog
from edge_swarm.swarm.coordinator import Coordinator
from edge_swarm.swarm.messages import MessageError, Reply, Submission
from edge_swarm.swarm.rounds import Action, CommitReceived
from edge_swarm.swarm.topics import Topics
from ledger_lite import Entry, Tx
from ledger_lite import verify as verify_signature
from ledger_lite.commits import commit_row, folded_problem
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
        act: Callable[[list[Action]], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._coordinator = coordinator
        self._topics = topics
        self._publish = publish
        self._call_soon = call_soon  # the ledger may answer on its replica's thread
        self._drops = drops
        self._now_ms = now_ms
        # Committee mode: commits are folded, not appended; ``act`` carries out what the
        # coordinator then does (it may close the round).
        self._act = act

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
        folded = self._act is not None and tx.kind == "delta_commit"
        if folded and self._coordinator.holds_commit(tx.author, tx.payload.get("round"), tx.sig):
            return  # a re-send of a commit the round already holds
        reason = self._coordinator.admit(tx.kind, tx.author, tx.payload, tx.ts, self._now_ms())
        if reason is not None:
            code = "not_applicable" if tx.kind == "campaign" else "out_of_round"
            self._refuse(tx, Refused(code, reason))
            return
        if folded:
            self._fold_commit(tx)
            return

        def result(entry: Entry | None, error: LedgerError | None) -> None:
            if error is not None:
                self._call_soon(lambda: self._refuse(tx, error))

        self._ledger.submit(tx, result)

    def _fold_commit(self, tx: Tx) -> None:
        """Check a commit as every replica will check its row in round_close, then hand it
        to the coordinator."""
        state = self._ledger.state
        p = tx.payload
        try:
            state.validate(tx.chain(state.height + 1, state.tip))
        except Refused as exc:
            self._refuse(tx, exc)
            return
        if (why := folded_problem(p, tx.author)) is not None:
            self._refuse(tx, Refused("bad_payload", why))
            return
        assert self._act is not None
        row = tuple(commit_row(tx))
        ev = CommitReceived(tx.author, p["round"], p["envelope_sha256"], p["n_samples"], row)
        self._act(self._coordinator.handle(ev))

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
