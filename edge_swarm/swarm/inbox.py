"""The envelope inbox: where delta envelopes from the network are checked and kept.

Every envelope is untrusted. ``offer`` checks, in this order: size, frame, topic against
header, swarm, round, sender enrolment, signature, base model, length, sample count, then
(in a sealed swarm) that it is sealed under the round's key epoch and opens with that key,
and finally finite values. Only then is the decoded delta kept, keyed by (round, node,
envelope sha256), because the ledger's ``delta_commit`` names the exact envelope a node
stands behind. Anything else raises ``Dropped`` with a short reason that the wiring counts
and logs.

An envelope for a round the inbox has not heard of yet is not dropped but held (bounded in
bytes): MQTT gives no order between the ledger's events and the envelopes, so a node that
is still catching up on the ledger may see a peer's envelope before that round's
``round_open``. ``expect`` re-checks what was held for the round it opens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_swarm.swarm.codec import (
    Envelope,
    EnvelopeError,
    decode_delta,
    decode_envelope,
    open_envelope,
)
from edge_swarm.swarm.merge import Contribution

MAX_PER_SENDER = 4  # distinct envelopes kept per (round, node): bounds a flooding sender
MAX_EARLY_BYTES = 32 * 1024 * 1024  # envelopes held for rounds not yet opened here
EARLY_ROUNDS_AHEAD = 2  # how far past the newest known round an envelope may be held


class Dropped(Exception):
    """An envelope refused before use; ``reason`` is a short counted label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Accepted:
    round: int
    node: str
    sha256: str


@dataclass(frozen=True)
class RoundView:
    """What the ledger says about a round the inbox may accept envelopes for."""

    round: int
    base_hash: str
    epoch: int | None = None  # the key epoch the round seals under (sealed swarms)


class EnvelopeInbox:
    """Checks and keeps envelopes; pure apart from the callables it is given.

    ``public_key(node)`` returns the enrolled, unrevoked key of a node or ``None``.
    ``security`` is the genesis's mode (``trust.epochs.SECURITY_MODES``); in a ``sealed``
    swarm ``data_key(epoch)`` returns the data key this node holds for an epoch, or None.
    ``revoked(node)``, if given, tells a revoked sender from an unknown one in the counts.
    """

    def __init__(
        self,
        swarm: str,
        n_params: int,
        public_key: Callable[[str], str | None],
        max_size: int,
        security: str = "signed",
        data_key: Callable[[int], bytes | None] | None = None,
        revoked: Callable[[str], bool] | None = None,
    ) -> None:
        if security == "sealed" and data_key is None:
            raise ValueError("a sealed swarm's inbox needs data_key")
        self.swarm = swarm
        self.n_params = n_params
        self.public_key = public_key
        self.max_size = max_size
        self.security = security
        self.data_key = data_key
        self.revoked = revoked
        self.rounds: dict[int, RoundView] = {}
        self.drops: Counter[str] = Counter()
        self._kept: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        self._samples: dict[tuple[int, str, str], int] = {}
        self._early: dict[tuple[int, str], bytes] = {}
        self._newest: int | None = None

    def expect(self, view: RoundView) -> list[Accepted]:
        """Accept envelopes for this round (called on ``round_open``); returns those that
        were held for it and pass the checks now."""
        self.rounds[view.round] = view
        self._newest = max(self._newest or 0, view.round)
        accepted = []
        for key in sorted(k for k in self._early if k[0] == view.round):
            payload = self._early.pop(key)
            try:
                ok = self.offer(payload, *key)
            except Dropped:
                continue  # counted by offer
            if ok is not None:
                accepted.append(ok)
        self._early = {k: v for k, v in self._early.items() if k[0] > view.round}
        return accepted

    def offer(self, payload: bytes, topic_round: int, topic_node: str) -> Accepted | None:
        """Check one envelope; keep it and return ``Accepted``, hold it for a round not yet
        opened here and return ``None``, or raise ``Dropped``."""
        try:
            return self._offer(payload, topic_round, topic_node)
        except Dropped as exc:
            self.drops[exc.reason] += 1
            raise

    def _offer(self, payload: bytes, topic_round: int, topic_node: str) -> Accepted | None:
        if len(payload) > self.max_size:
            raise Dropped("oversized", f"{len(payload)} bytes")
        try:
            env = decode_envelope(payload, max_size=self.max_size)
        except EnvelopeError as exc:
            raise Dropped("malformed", str(exc)) from None
        h = env.header
        if (h.round, h.node) != (topic_round, topic_node):
            raise Dropped("topic mismatch", f"header says round {h.round} node {h.node}")
        if h.swarm != self.swarm:
            raise Dropped("wrong swarm", h.swarm)
        view = self.rounds.get(h.round)
        if view is None:
            if self._hold(payload, h.round, h.node):
                return None
            raise Dropped("wrong round", f"round {h.round} is not open here")
        key = self.public_key(h.node)
        if key is None:
            if self.revoked is not None and self.revoked(h.node):
                raise Dropped("revoked node", h.node)
            raise Dropped("unknown node", h.node)
        # The signature is checked before anything else the header claims is believed.
        if self.security != "none":
            if not env.is_signed:
                raise Dropped("unsigned", h.node)
            if not env.verify(key):
                raise Dropped("bad signature", h.node)
        if h.base_hash != view.base_hash:
            raise Dropped("wrong base", h.base_hash[:12])
        if h.n_params != self.n_params:
            raise Dropped("wrong length", f"{h.n_params} != {self.n_params}")
        if h.n_samples < 1:  # weighs nothing, and merge refuses it: take() would fail later
            raise Dropped("no samples", h.node)
        kept = self._kept.setdefault((h.round, h.node), {})
        if env.sha256 not in kept:
            if len(kept) >= MAX_PER_SENDER:
                raise Dropped("flooding", h.node)
            body = self._open(env, view)
            try:
                kept[env.sha256] = decode_delta(env, self.n_params, body)
            except EnvelopeError as exc:
                raise Dropped("bad values", str(exc)) from None
            self._samples[(h.round, h.node, env.sha256)] = h.n_samples
        return Accepted(h.round, h.node, env.sha256)

    def _open(self, env: Envelope, view: RoundView) -> bytes:
        """The plaintext codec body; in a sealed swarm only a frame sealed under the round's
        epoch, with a key this node holds, gets this far."""
        h = env.header
        if self.security != "sealed":
            if h.sealed:
                raise Dropped("no key", f"sealed envelope in a {self.security} swarm")
            return env.body
        if not h.sealed:
            raise Dropped("unsealed", h.node)
        if view.epoch is None or h.epoch != view.epoch:
            raise Dropped("wrong epoch", f"epoch {h.epoch}, round {h.round} uses {view.epoch}")
        assert self.data_key is not None
        key = self.data_key(h.epoch)
        if key is None:  # revoked, or not yet a recipient: this node may not read it
            raise Dropped("no key", f"epoch {h.epoch}")
        try:
            return open_envelope(env, key)
        except EnvelopeError as exc:
            raise Dropped("undecryptable", str(exc)) from None

    def _hold(self, payload: bytes, rnd: int, node: str) -> bool:
        # The newest round ever opened here, not only those still kept: once a round is
        # merged and forgotten, its replays must be refused, not held as "early".
        newest = self._newest
        if newest is not None and not newest < rnd <= newest + EARLY_ROUNDS_AHEAD:
            return False
        if self._early_bytes(but=(rnd, node)) + len(payload) > MAX_EARLY_BYTES:
            if newest is None:
                return False
            # Held before any round was known, for rounds beyond the window now: they give
            # way rather than pin the budget forever (expect only frees rounds it reaches).
            for key in [k for k in self._early if k[0] > newest + EARLY_ROUNDS_AHEAD]:
                del self._early[key]
            if self._early_bytes(but=(rnd, node)) + len(payload) > MAX_EARLY_BYTES:
                return False
        self._early[(rnd, node)] = payload  # the latest one per sender; it checks later
        return True

    def _early_bytes(self, but: tuple[int, str]) -> int:
        return sum(len(p) for k, p in self._early.items() if k != but)

    def has(self, rnd: int, node: str, sha256: str) -> bool:
        return sha256 in self._kept.get((rnd, node), {})

    def take(
        self, rnd: int, included: tuple[tuple[str, str], ...], n_samples: dict[str, int]
    ) -> list[Contribution]:
        """The contributions named by ``round_close``; raise ``KeyError`` naming a missing one.

        Sample counts come from the ledger's ``delta_commit`` (what the node signed there),
        and must agree with the envelope header.
        """
        vectors = self.take_raw(rnd, included, n_samples)
        return [Contribution(node, vectors[node], n_samples[node]) for node, _ in included]

    def take_raw(
        self, rnd: int, included: tuple[tuple[str, str], ...], n_samples: dict[str, int]
    ) -> dict[str, np.ndarray]:
        """As ``take``, the decoded vectors by node (masked ring elements stay uint32)."""
        out = {}
        for node, sha in included:
            delta = self._kept.get((rnd, node), {}).get(sha)
            if delta is None:
                raise KeyError(f"envelope {sha[:12]} of {node} for round {rnd} never arrived")
            if node not in n_samples:
                raise KeyError(f"{node}: no sample count from the ledger for round {rnd}")
            if self._samples[(rnd, node, sha)] != n_samples[node]:
                raise KeyError(f"{node}: sample count in envelope and ledger disagree")
            out[node] = delta
        return out

    def forget_before(self, rnd: int) -> None:
        """Drop everything older than ``rnd`` (memory stays bounded over many rounds)."""
        for key in [k for k in self._kept if k[0] < rnd]:
            del self._kept[key]
        self._samples = {k: v for k, v in self._samples.items() if k[0] >= rnd}
        self.rounds = {r: v for r, v in self.rounds.items() if r >= rnd}
