"""The model a node holds: the current global parameters and merge state, and the merged
candidate of a round awaiting ``model_final``.

In a swarm whose committee publishes a downlink update (``swarm/downlink.py``), a merge's
candidate is ``base + decode(update)``, not the merge rule's raw output: that is what every
light agent can compute from the update, so it is what the committee attests. The update's
error-feedback residual then lives in the merge state. A light agent that applied an update
holds the model but not that state (``state_known`` False) until a checkpoint brings it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.learn.model import ModelSpec, model_hash
from edge_swarm.learn.poison import Attack, poison_delta
from edge_swarm.swarm.checkpoint import Checkpoint
from edge_swarm.swarm.downlink import Downlink, make_update
from edge_swarm.swarm.feedback import ErrorFeedback
from edge_swarm.swarm.merge import Contribution, MergeRule, MergeState, merge
from edge_swarm.swarm.quantize import CodecSpec

log = logging.getLogger(__name__)


def load_feedback(path: Path, n_params: int, enabled: bool) -> ErrorFeedback:
    """An agent's error-feedback residual from ``path``; a zero one when the file is
    missing, and when it is damaged (which costs the residual, not the agent)."""
    try:
        return ErrorFeedback.load(path, n_params, enabled=enabled, missing_ok=True)
    except ValueError as exc:
        log.warning("starting with a zero residual: %s is unusable (%s)", path, exc)
        return ErrorFeedback(n_params, enabled=enabled)


def merge_report(rule: MergeRule, result: Any) -> dict[str, Any]:
    """The ledger's record of a merge: the rule, each node's share (4 decimals), whom
    clipping scaled and by how much, and any fallback the rule took."""
    report: dict[str, Any] = {
        "rule": rule.aggregation,
        "weights": {n: round(float(w), 4) for n, w in sorted(result.weights.items())},
    }
    clipped = getattr(result, "clipped", {})
    if clipped:
        report["clipped"] = {n: round(float(s), 4) for n, s in sorted(clipped.items())}
    note = getattr(result, "note", "")
    if note:
        report["note"] = str(note)[:200]
    return report


@dataclass
class Candidate:
    params: np.ndarray
    state: MergeState
    model_hash: str
    state_hash: str
    report: dict[str, Any] | None = None  # what the rule did with each delta (model_final)
    update: Downlink | None = None  # the round's downlink update, when the swarm has one

    @property
    def update_sha256(self) -> str | None:
        return self.update.sha256 if self.update is not None else None


class ModelHolder:
    """The current global model of a node, and the merged candidate awaiting ``model_final``."""

    def __init__(
        self,
        spec: ModelSpec,
        params: np.ndarray,
        rule: MergeRule,
        downlink: tuple[str, CodecSpec] | None = None,
    ) -> None:
        self.spec = spec
        self.rule = rule
        self.downlink = downlink  # (swarm, the genesis's downlink codec), or None
        self.params = params
        self.state = MergeState()
        self.state_known = True  # False after an update: the merge state is not ours
        self.round = 0
        self.hash = model_hash(spec, params)
        self.candidates: dict[int, Candidate] = {}

    @property
    def state_array(self) -> np.ndarray:
        # The whole server state (FedAdam/FedYogi carry two moments), as the checkpoint holds it.
        return np.frombuffer(self.state.to_bytes(), dtype="<f4").astype(np.float32)

    def merge(self, rnd: int, contributions: list[Contribution]) -> Candidate:
        result = merge(self.rule, self.params, contributions, self.state)
        self.candidates[rnd] = self._candidate(rnd, result.params, result.state)
        self.candidates[rnd].report = merge_report(self.rule, result)
        return self.candidates[rnd]

    def _candidate(self, rnd: int, merged: np.ndarray, state: MergeState) -> Candidate:
        """The round's candidate from the rule's ``merged`` params: through the downlink
        update when the swarm has one (see the module header)."""
        update = None
        if self.downlink is not None:
            swarm, codec = self.downlink
            update = make_update(
                self.params, merged, self.state.residual, codec, swarm, rnd, self.hash
            )
            merged = np.array(update.params)
            state = MergeState(state.velocity, state.second, update.residual)
        return Candidate(
            params=merged,
            state=state,
            model_hash=model_hash(self.spec, merged),
            state_hash=state.state_hash(),
            update=update,
        )

    def spoil(self, rnd: int, attack: Attack) -> Candidate:
        """Tests only: make round ``rnd``'s candidate a lie (its change poisoned by
        ``attack``), as a compromised gateway's merge would be."""
        cand = self.candidates[rnd]
        rng = np.random.default_rng(rnd)
        bad = (self.params + poison_delta(attack, cand.params - self.params, rng)).astype(
            np.float32
        )
        if self.downlink is None:
            lie = replace(cand, params=bad, model_hash=model_hash(self.spec, bad))
        else:  # a lie told consistently: its update frame says it too
            lie = self._candidate(rnd, bad, MergeState(cand.state.velocity, cand.state.second))
        self.candidates[rnd] = lie
        return lie

    def commit(self, rnd: int) -> None:
        cand = self.candidates.pop(rnd)
        self.params, self.state, self.hash, self.round = (
            cand.params,
            cand.state,
            cand.model_hash,
            rnd,
        )
        self.state_known = True
        self.candidates = {r: c for r, c in self.candidates.items() if r > rnd}

    def take_update(self, rnd: int, params: np.ndarray, model_hash_: str) -> None:
        """A light agent applied round ``rnd``'s downlink update (checked against the
        ledger's final hash by the caller): the model moves, the merge state is unknown."""
        self.params, self.hash, self.round = params, model_hash_, rnd
        self.state_known = False
        self.candidates = {r: c for r, c in self.candidates.items() if r > rnd}

    def keep(self, rnd: int) -> None:
        """Round ``rnd`` was finalised on the model held (nobody could merge it)."""
        self.round = rnd
        self.candidates = {r: c for r, c in self.candidates.items() if r > rnd}

    def adopt(self, ck: Checkpoint) -> bool:
        """Take a checkpoint if its bytes hash to what it claims; return whether it was taken."""
        if ck.spec != self.spec.to_dict() or ck.params.size != self.spec.n_params:
            return False
        if model_hash(self.spec, ck.params) != ck.model_hash:
            return False
        try:
            state = MergeState.from_bytes(
                np.ascontiguousarray(ck.state, dtype="<f4").tobytes(),
                self.spec.n_params,
                residual=self.downlink is not None,
            )
        except ValueError:
            return False
        if state.state_hash() != ck.state_hash:
            return False
        self.params, self.hash, self.round = ck.params, ck.model_hash, ck.round
        self.state = state
        self.state_known = True
        self.candidates.clear()
        return True

    def checkpoint(self, swarm: str) -> Checkpoint:
        return Checkpoint(
            swarm=swarm,
            round=self.round,
            spec=self.spec.to_dict(),
            model_hash=self.hash,
            state_hash=self.state.state_hash(),
            params=self.params,
            state=self.state_array,
        )
