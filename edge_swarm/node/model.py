"""The model a node holds: the current global parameters and merge state, and the merged
candidate of a round awaiting ``model_final``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge_swarm.learn.model import ModelSpec, model_hash
from edge_swarm.learn.poison import Attack, poison_delta
from edge_swarm.swarm.checkpoint import Checkpoint
from edge_swarm.swarm.merge import Contribution, MergeRule, MergeState, merge


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


class ModelHolder:
    """The current global model of a node, and the merged candidate awaiting ``model_final``."""

    def __init__(self, spec: ModelSpec, params: np.ndarray, rule: MergeRule) -> None:
        self.spec = spec
        self.rule = rule
        self.params = params
        self.state = MergeState()
        self.round = 0
        self.hash = model_hash(spec, params)
        self.candidates: dict[int, Candidate] = {}

    @property
    def state_array(self) -> np.ndarray:
        # The whole server state (FedAdam/FedYogi carry two moments), as the checkpoint holds it.
        return np.frombuffer(self.state.to_bytes(), dtype="<f4").astype(np.float32)

    def merge(self, rnd: int, contributions: list[Contribution]) -> Candidate:
        result = merge(self.rule, self.params, contributions, self.state)
        cand = Candidate(
            params=result.params,
            state=result.state,
            model_hash=model_hash(self.spec, result.params),
            state_hash=result.state.state_hash(),
            report=merge_report(self.rule, result),
        )
        self.candidates[rnd] = cand
        return cand

    def spoil(self, rnd: int, attack: Attack) -> Candidate:
        """Tests only: make round ``rnd``'s candidate a lie (its change poisoned by
        ``attack``), as a compromised gateway's merge would be."""
        cand = self.candidates[rnd]
        rng = np.random.default_rng(rnd)
        bad = self.params + poison_delta(attack, cand.params - self.params, rng)
        lie = replace(cand, params=bad.astype(np.float32), model_hash=model_hash(self.spec, bad))
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
                np.ascontiguousarray(ck.state, dtype="<f4").tobytes(), self.spec.n_params
            )
        except ValueError:
            return False
        if state.state_hash() != ck.state_hash:
            return False
        self.params, self.hash, self.round = ck.params, ck.model_hash, ck.round
        self.state = state
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
