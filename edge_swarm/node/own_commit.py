"""An agent's own commits in a committee swarm: when each is settled, and the proof that the
round recorded it as the agent made it.

The commit goes to the coordinator, not the ledger, and comes back as a row of the round's
``round_close`` (``ledger_lite/commits.py``). A light agent holds that entry in its compact
form, where the rows are a Merkle digest signed by the coordinator
(``ledger_lite/detached.py``); it asks a gateway for its own row and the row's Merkle path
(``ledger/query`` op "contribution") and checks both: its node, the envelope sha256 it
committed, and the path to the signed digest. A missing or wrong row is a warning: the
coordinator left the device out (it can, but cannot hide it from the device).

The question waits for the next ``round_open`` (``on_entry``), when the gateway idles while
the agents train, or ``PROOF_WAIT_S`` after the close (the last round has no next one):
asked at the close, eight agents' proofs queued at the gateway in front of the committee's
attestations, and asked at the final, in front of the next round's opening (issue 20).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from edge_swarm.swarm import protocol as P
from edge_swarm.swarm.messages import Query, Reply
from ledger_lite import Entry
from ledger_lite.commits import commit_payload
from ledger_lite.detached import is_digest, row_in

log = logging.getLogger(__name__)

MAX_PENDING = 8
PROOF_WAIT_S = 1.0  # a held proof query goes out by then, whether or not a round opened


class OwnCommits:
    """Our commits by round (tx id, envelope sha256) and the proofs asked for them."""

    def __init__(self, node: str, ask: Callable[[Query], None] | None = None) -> None:
        self.node = node
        self._ask = ask  # sends a contribution query (on_entry and tick hold it until then)
        self._commits: dict[int, tuple[str, str]] = {}
        self._asked: dict[str, tuple[int, str, dict[str, Any]]] = {}  # req -> round, sha, digest
        self.proven = 0  # rounds whose row we checked against the signed digest
        self.missing = 0  # rounds that closed without our row, or with another one
        self._held: tuple[Query, float] | None = None  # our row's query, since when

    def committed(self, rnd: int, tx_id: str, envelope_sha256: str) -> None:
        self._commits[rnd] = (tx_id, envelope_sha256)
        for old in sorted(self._commits)[:-MAX_PENDING]:
            del self._commits[old]

    def recommit(
        self, machine: P.Participant | None, kept: tuple[int, bytes] | None, n_samples: int
    ) -> tuple[int, bytes, P.Append] | None:
        """After a restart: ``kept`` (the delta on disk: round, frame) was committed to the
        coordinator for the round still open, and the gateway's held commits may have died
        with it. Returns (round, frame, the commit to submit again) and marks the round
        trained, or None when there is nothing to resume."""
        m = machine
        if m is None or not m.by_committee or m.open is None or m.open.closed or kept is None:
            return None
        rnd, frame = kept
        if rnd != m.open.number or rnd in m.trained:
            return None
        m.trained.add(rnd)
        sha = hashlib.sha256(frame).hexdigest()
        log.info("round %d: our delta kept on disk is committed again", rnd)
        return rnd, frame, P.Append("delta_commit", commit_payload(rnd, self.node, sha, n_samples))

    def on_entry(self, entry: Entry, now: float) -> str:
        """Any applied entry: the tx id to settle ("" if none). A round_close's query is held
        (see the module header); a round_open sends it."""
        if entry.kind == "round_close":
            settled, query = self.on_close(entry)
            self._send()  # an older one still held: now
            self._held = (query, now) if query is not None else None
            return settled
        if entry.kind == "round_open":
            self._send()
        return ""

    def tick(self, now: float) -> None:
        """Send a held query that has waited ``PROOF_WAIT_S``."""
        if self._held is not None and now - self._held[1] >= PROOF_WAIT_S:
            self._send()

    def _send(self) -> None:
        held, self._held = self._held, None
        if held is not None and self._ask is not None:
            self._ask(held[0])

    def on_close(self, entry: Entry) -> tuple[str, Query | None]:
        """A round_close was applied: the tx id to settle ("" if none), and the query for our
        row when the entry is compact (a full one holds the rows: checked here)."""
        p = entry.payload
        mine = self._commits.pop(p["round"], None)
        if mine is None:
            return "", None
        tx_id, sha = mine
        rows = p.get("commits")
        if isinstance(rows, list):
            self._judge(p["round"], any(r[0] == self.node and r[1] == sha for r in rows), "")
            return tx_id, None
        if not is_digest(rows):
            return tx_id, None  # a swarm whose commits are entries: the ledger shows ours
        req = secrets.token_hex(8)
        while len(self._asked) >= MAX_PENDING:
            del self._asked[next(iter(self._asked))]
        self._asked[req] = (p["round"], sha, rows)
        return tx_id, Query(self.node, req, start=entry.height, op="contribution")

    def on_reply(self, reply: Reply) -> bool:
        """Whether ``reply`` answers one of our contribution queries (then it is judged)."""
        asked = self._asked.pop(reply.req, None)
        if asked is None:
            return False
        rnd, sha, digest = asked
        if reply.refused is not None or reply.proof is None:
            self._judge(rnd, False, f": {reply.refused or 'no proof'}")
            return True
        proof = reply.proof
        row = proof.get("row")
        ours = isinstance(row, list) and len(row) > 1 and row[:2] == [self.node, sha]
        index, path = proof.get("index"), proof.get("path")
        fits = isinstance(index, int) and isinstance(path, list)
        self._judge(rnd, ours and fits and row_in(row, index, path, digest), " (bad proof)")
        return True

    def _judge(self, rnd: int, ok: bool, why: str) -> None:
        if ok:
            self.proven += 1
            log.info("round %d: our commit is in the round's signed rows", rnd)
        else:
            self.missing += 1
            log.warning("round %d: the round closed without our commit as we made it%s", rnd, why)
