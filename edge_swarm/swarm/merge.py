"""Merge rules over decoded deltas: FedAvg and FedAvgM.

How it works:
    Contributions are sorted by node id (Python string order, i.e. by code point; for the
    ASCII id alphabet ``[A-Za-z0-9_.-]`` this is byte order, as in ``round_close``). Each
    weighs ``n_samples / sum(n_samples)``; the weighted mean of the deltas is accumulated
    elementwise in float64 in that order.

    - ``fedavg``:  params = base + server_lr * avg
    - ``fedavgm``: v = momentum * v + avg (float64 math, stored as float32);
                   params = base + server_lr * v   (v read back from its float32 form)

Invariants:
    - The result depends only on (rule, base bytes, the set of contributions, state bytes):
      never on the order the contributions arrived in. Elementwise float64 add/multiply is
      exactly rounded, so every honest node computes the same bytes.
    - The server state crosses the wire and the disk only as raw little-endian float32
      bytes (`MergeState.to_bytes`), never as a pickle.
    - No contributions: params and state are returned unchanged.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RULES = ("fedavg", "fedavgm")


@dataclass(frozen=True, eq=False)
class Contribution:
    """One peer's decoded delta (float32, 1-D, finite) and its positive sample count.

    The delta is stored as a read-only view; ValueError if any field is invalid.
    """

    node: str
    delta: np.ndarray
    n_samples: int

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not self.node:
            raise ValueError(f"node must be a non-empty string, got {self.node!r}")
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, (int, np.integer)):
            raise ValueError(f"n_samples must be an int, got {self.n_samples!r}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        delta = np.asarray(self.delta)
        if delta.dtype != np.float32 or delta.ndim != 1:
            raise ValueError(f"delta must be 1-D float32, got {delta.dtype} {delta.shape}")
        if not np.all(np.isfinite(delta)):
            raise ValueError(f"delta from {self.node} has non-finite values")
        view = delta.view()
        view.flags.writeable = False
        object.__setattr__(self, "delta", view)
        object.__setattr__(self, "n_samples", int(self.n_samples))


@dataclass(frozen=True)
class MergeRule:
    """The swarm's merge rule: ``name`` in RULES, ``server_lr`` > 0, ``momentum`` in [0, 1).

    ``momentum`` is used by ``fedavgm`` only. ValueError if any field is invalid.
    """

    name: str = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"merge rule must be one of {RULES}, got {self.name!r}")
        for key in ("server_lr", "momentum"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{key} must be finite, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {self.server_lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with every field."""
        return {"name": self.name, "server_lr": self.server_lr, "momentum": self.momentum}

    @classmethod
    def from_dict(cls, data: Any) -> MergeRule:
        """Build from untrusted input; missing keys take defaults, unknown keys are refused."""
        if not isinstance(data, dict):
            raise ValueError(f"merge rule must be an object, got {type(data).__name__}")
        unknown = set(data) - {"name", "server_lr", "momentum"}
        if unknown:
            raise ValueError(f"merge rule has unknown keys: {sorted(map(str, unknown))}")
        return cls(**data)


# Chosen for the standard workload with benchmarks/sim_standard.py, together with
# edge_swarm.learn.train.STANDARD_TRAINING.
STANDARD_MERGE = MergeRule(name="fedavgm", server_lr=1.0, momentum=0.5)


@dataclass(frozen=True, eq=False)
class MergeState:
    """Server-side optimiser state carried between rounds (FedAvgM's velocity).

    ``velocity`` is a read-only 1-D float32 array, or None before the first merge.
    """

    velocity: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.velocity is not None:
            v = np.asarray(self.velocity)
            if v.dtype != np.float32 or v.ndim != 1:
                raise ValueError(f"velocity must be 1-D float32, got {v.dtype} {v.shape}")
            v = v.view()
            v.flags.writeable = False
            object.__setattr__(self, "velocity", v)

    def to_bytes(self) -> bytes:
        """Raw little-endian float32 velocity; empty bytes when there is none."""
        if self.velocity is None:
            return b""
        return self.velocity.astype("<f4", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, n_params: int) -> MergeState:
        """Inverse of `to_bytes` for a model of ``n_params``; ValueError on a bad length or
        non-finite values."""
        if len(data) == 0:
            return cls(None)
        if len(data) != 4 * n_params:
            raise ValueError(f"merge state has {len(data)} bytes, expected 0 or {4 * n_params}")
        v = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(v)):
            raise ValueError("merge state has non-finite values")
        return cls(v)

    def state_hash(self) -> str:
        """Hex sha256 of `to_bytes` (sha256 of b"" when there is no state)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class MergeResult:
    """New float32 params, the next merge state, and each included node's weight."""

    params: np.ndarray
    state: MergeState
    weights: dict[str, float] = field(default_factory=dict)


def weighted_mean(contributions: list[Contribution]) -> tuple[np.ndarray, dict[str, float]]:
    """Sample-weighted mean of the deltas in float64, accumulated in node-id order.

    Returns ``(mean float64, {node: weight})``. ValueError on an empty list, duplicate
    nodes or deltas of different lengths.
    """
    if not contributions:
        raise ValueError("weighted_mean needs at least one contribution")
    ordered = sorted(contributions, key=lambda c: c.node)
    nodes = [c.node for c in ordered]
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"duplicate nodes among contributions: {nodes}")
    n = ordered[0].delta.shape[0]
    if any(c.delta.shape[0] != n for c in ordered):
        raise ValueError("contributions have deltas of different lengths")
    total = sum(c.n_samples for c in ordered)
    weights = {c.node: c.n_samples / total for c in ordered}
    acc = np.zeros(n, dtype=np.float64)
    for c in ordered:
        acc += weights[c.node] * c.delta.astype(np.float64)
    return acc, weights


def merge(
    rule: MergeRule,
    base: np.ndarray,
    contributions: list[Contribution],
    state: MergeState | None = None,
) -> MergeResult:
    """Apply ``rule`` to ``base`` with the peers' deltas; see the module header.

    ``base`` is a 1-D float32 vector; every delta and the state's velocity must match its
    length (ValueError otherwise). Returns a new float32 params array; inputs are not
    modified. The result is independent of the order of ``contributions``.
    """
    base = np.asarray(base)
    if base.dtype != np.float32 or base.ndim != 1:
        raise ValueError(f"base must be 1-D float32, got {base.dtype} {base.shape}")
    state = state if state is not None else MergeState()
    if state.velocity is not None and state.velocity.shape != base.shape:
        raise ValueError(f"merge state has {state.velocity.shape[0]} values, base {base.shape[0]}")
    if not contributions:
        return MergeResult(base.copy(), state, {})
    avg, weights = weighted_mean(contributions)
    if avg.shape != base.shape:
        raise ValueError(f"deltas have {avg.shape[0]} values, base has {base.shape[0]}")
    if rule.name == "fedavgm":
        v = (
            avg
            if state.velocity is None
            else rule.momentum * state.velocity.astype(np.float64) + avg
        )
        state = MergeState(v.astype(np.float32))
        step = state.velocity.astype(np.float64)
    else:
        step = avg
    params = (base.astype(np.float64) + rule.server_lr * step).astype(np.float32)
    if not np.all(np.isfinite(params)):
        raise ValueError("merged parameters are not finite")
    return MergeResult(params, state, weights)
