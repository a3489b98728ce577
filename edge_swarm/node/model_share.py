"""What a restarted gateway lost, got back from the swarm: a round's deltas, a final model.

A merge still waiting for envelopes the gateway never got (it was down when they were
published) asks each author for exactly the bytes its commit names (``DeltaAsks``), backing
off. An agent keeps its last delta until it trains again, which it cannot do before that
round ends, so a restarted gateway can always merge the round it closed.

Any node that holds a final model can give it back to a gateway that lost it.

A gateway killed at the wrong moment can come back without the model of the ledger's last
final round: the deltas of that round died with its memory while the agents merged without
it, or it was killed between appending ``model_final`` and saving ``checkpoint.bin``. Only
a gateway publishes the retained checkpoint, so waiting for one would wait forever; and the
agents that attested that round hold exactly those bytes.

- ``ModelAsks`` (the gateway's side): while its model is older than the ledger's last final
  round it asks one holder at a time (the attesters the ledger names, in turn) on
  ``round/{r}/resend/{node}`` with ``{"model_hash": h, "want": "model"}``, backing off as
  the agents' re-sends do (3, 6, 12, 24, 30 s), so a dead holder costs one wait and the next
  is asked; one request per wait, whatever the fleet's size.
- ``ModelAnswers`` (any node's side): a node whose model is exactly that round's, with
  exactly that hash, sends its checkpoint (sealed as the retained one is) on
  ``round/{r}/model/{node}``, at most once per ``ANSWER_EVERY_S``: a request costs the
  asker nothing, so a flood of them must not make a Pi send its model in a loop.

The gateway checks what it receives against the ledger's hash before it adopts it
(``Gateway._adopt``), so a node that sends the wrong bytes changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from edge_swarm.node.resend import RESEND_FIRST_S, backoff_s

log = logging.getLogger(__name__)

# A committee member subscribes to its round's deltas when it sees round_open, racing the
# first ones published: once the round closes, those it lacks are asked of their authors.
# Soon: an author publishes its delta before its commit, and the broker routes both before
# the close they lead to, so a delta still missing when the close comes almost never comes;
# waiting 0.2 s for it was most of a round (issue 20). A copy that does come is harmless.
MEMBER_ASK_S = 0.02

ANSWER_EVERY_S = 3.0
"""A node sends its model at most this often, however often it is asked."""


class DeltaAsks:
    """When a gateway asks the authors of a merge's missing deltas for them again."""

    def __init__(self, ask: Callable[[int, str, str], None], first_s: float = RESEND_FIRST_S):
        self._ask = ask  # (round, node, envelope sha256) -> publish the request
        self._first_s = first_s
        self._at = 0.0
        self._tries = 0
        self._round: int | None = None

    def start(self, now: float, rnd: int) -> None:
        """A new merge of round ``rnd``: those on their way get a moment before anyone is
        asked again."""
        self._at, self._tries, self._round = now + self._first_s, 0, rnd

    def tick(self, rnd: int, missing: Sequence[tuple[str, str]], now: float) -> None:
        """Ask for each of round ``rnd``'s ``missing`` (node, envelope sha256), if due. The
        first time something is missing of a round, it is asked ``first_s`` later."""
        if not missing:
            return
        if rnd != self._round:
            self.start(now, rnd)
        if now < self._at:
            return
        self._tries += 1
        self._at = now + backoff_s(self._tries)
        for node, sha in missing:
            self._ask(rnd, node, sha)


class ModelAsks:
    """When and whom a gateway asks for the last final model it does not hold."""

    def __init__(self, own_id: str, ask: Callable[[int, str, str], None]) -> None:
        self._own = own_id
        self._ask = ask  # (round, node, model hash) -> publish the request
        self._round = 0  # the final round being asked for (0: none)
        self._at = 0.0  # when to ask next (monotonic seconds)
        self._tries = 0

    def want(self, rnd: int, now: float, delay_s: float = 0.0) -> None:
        """Start asking for round ``rnd``'s final model ``delay_s`` from now (a newer round
        restarts the turn; the same round keeps its backoff)."""
        if rnd != self._round:
            self._round, self._tries, self._at = rnd, 0, now + delay_s

    def held(self) -> None:
        """The model is here: stop asking."""
        self._round, self._tries = 0, 0

    def tick(self, final_round: int, model_hash: str, holders: Sequence[str], now: float) -> None:
        """Ask the next holder if one is due. ``final_round``/``model_hash``: the ledger's
        last final round and its model; ``holders``: who attested it."""
        if self._round == 0 or now < self._at:
            return
        if final_round != self._round:
            self.want(final_round, now)  # the swarm moved on: the newest model will do
        others = [n for n in holders if n != self._own]
        self._tries += 1
        self._at = now + backoff_s(self._tries)
        if not others:
            if self._tries == 1:
                log.warning(
                    "round %d: nobody but this gateway attested the final model %s; "
                    "waiting for the retained checkpoint",
                    final_round,
                    model_hash[:12],
                )
            return
        node = others[(self._tries - 1) % len(others)]
        log.info(
            "round %d: asking %s for the final model %s (this gateway does not hold it)",
            final_round,
            node,
            model_hash[:12],
        )
        self._ask(final_round, node, model_hash)


class ModelAnswers:
    """Whether this node sends its model to an asking gateway now."""

    def __init__(self) -> None:
        self._answered_at = float("-inf")

    def should_send(
        self, rnd: int, model_hash: str, held_round: int, held_hash: str, now: float
    ) -> bool:
        if held_round != rnd or held_hash != model_hash:
            return False  # not exactly that model: someone else holds it
        if now - self._answered_at < ANSWER_EVERY_S:
            return False
        self._answered_at = now
        return True
