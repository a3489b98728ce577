"""The merge committee inside the round machines (``merge_by = "committee"``, issue 16).

How it works
------------
Both machines keep a ``CommitteeBook``. It folds the ledger's enrolments and revocations
(``fold``) into who may sit on a committee, and on each round's ``round_open`` entry draws
that round's committee (``draw``) with ``committee.draw_committee``: the enrolled gateways,
plus ``k`` enrolled agents drawn from the entry's hash. ``quorum_winner`` says which
(model_hash, state_hash) a quorum of the committee attested, if any. The coordinator
finalises on it; a participant merges and attests only in the rounds it is drawn for.

Invariants
----------
* The draw reads only the ledger, folded up to the ``round_open`` entry itself: the nodes
  enrolled and not revoked by then whose enrolment had not expired at that entry's ``ts``
  (the ledger would refuse what an expired member signs). Never who is online: every node
  that holds the ledger, however late it replays it, draws the same members.
* A later ``enroll`` of the same id replaces its role, as ``ledger_lite.state`` does (key
  rotation, re-admission after a revocation); a ``revoke`` removes it from both sets.
* A round is drawn once; the first ``round_open`` of a round counts (the machines ignore a
  second one before asking for a draw).
* Only members' attestations count, each member once, and a winner needs
  ``Committee.quorum`` (a strict majority of the members): two different winners are
  impossible, and no single machine decides the model while the committee has two or more
  members.

Pure: no sockets, threads, files or logging. Misuse by our own code raises ValueError.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from edge_swarm.swarm.committee import Committee, draw_committee
from edge_swarm.swarm.rounds import Appended

__all__ = ["CommitteeBook", "quorum_winner"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


class CommitteeBook:
    """Who may sit on a round's committee (folded from the ledger) and each round's draw.

    ``k`` is the genesis's ``committee_k``: agents drawn per round beside the gateways.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        # node -> (role, expires_ms) of its latest enrolment; revoked nodes are removed.
        self._enrolled: dict[str, tuple[str, int | None]] = {}
        self._drawn: dict[int, Committee] = {}

    def fold(self, ev: Appended) -> None:
        """Fold an ``enroll`` or ``revoke`` entry; any other entry changes nothing."""
        p = ev.payload
        if ev.kind == "enroll":
            self._enrolled[p["node"]] = (p["role"], p.get("expires_ms"))
        elif ev.kind == "revoke":
            self._enrolled.pop(p["node"], None)

    def eligible(self, role: str, at_ms: int) -> set[str]:
        """The nodes of ``role`` enrolled, not revoked, and not expired at ``at_ms``."""
        return {
            node
            for node, (r, expires) in self._enrolled.items()
            if r == role and (expires is None or expires >= at_ms)
        }

    def draw(self, rnd: int, ev: Appended) -> Committee:
        """Draw round ``rnd``'s committee from its ``round_open`` entry ``ev`` and keep it.
        Raises ValueError if ``ev.hash`` is not the entry's 64-hex hash (the wiring must
        pass ``Appended.hash`` in committee mode)."""
        if not isinstance(ev.hash, str) or _HEX64.fullmatch(ev.hash) is None:
            raise ValueError(
                f"merge_by = committee draws round {rnd}'s committee from its round_open hash:"
                f" Appended.hash must be the entry's 64 lowercase hex chars, not {ev.hash!r:.80}"
            )
        drawn = draw_committee(
            ev.hash, self.eligible("agent", ev.ts), self.eligible("gateway", ev.ts), self.k
        )
        self._drawn[rnd] = drawn
        return drawn

    def of(self, rnd: int) -> Committee | None:
        """Round ``rnd``'s committee, or None if it was not drawn (or was forgotten)."""
        return self._drawn.get(rnd)

    def forget_before(self, rnd: int) -> None:
        """Drop the draws of rounds before ``rnd`` (they are final)."""
        for old in [r for r in self._drawn if r < rnd]:
            del self._drawn[old]


def quorum_winner(
    committee: Committee, attests: Mapping[str, tuple[str, str]]
) -> tuple[str, str] | None:
    """The (model_hash, state_hash) that at least ``committee.quorum`` members attested, or
    None. ``attests`` maps each attesting node to its pair; non-members are not counted.
    The quorum is a strict majority, so at most one pair can reach it."""
    votes = Counter(v for node, v in attests.items() if node in committee)
    for pair, count in votes.items():
        if count >= committee.quorum:
            return pair
    return None
