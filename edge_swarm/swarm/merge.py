"""Merge rules over decoded deltas: an aggregator, then a server optimizer.

How it works:
    Contributions are sorted by node id (Python string order, i.e. by code point; for the
    ASCII id alphabet ``[A-Za-z0-9_.-]`` this is byte order, as in ``round_close``) and
    stacked as float64 rows. Then, in order:

    1. ``clip`` (optional, any aggregator): each delta is scaled by
       ``min(1, clip / ||delta||_2)``, so one peer cannot dominate by sheer size.
    1b. ``mix`` (optional, any aggregator): ``"nnm"`` replaces each delta by the mean of its
       n - f nearest deltas (`robust.nnm`), which keeps robust rules accurate on non-IID
       data; skipped, with a note, when there are not more than 2f deltas.
    2. ``aggregator`` (`edge_swarm.swarm.robust`) turns the rows into one vector ``agg``:
       ``mean`` (each delta weighs ``n_samples / sum(n_samples)``), or a Byzantine-robust
       rule: median, trimmed_mean, geomed, krum, multikrum, bulyan.
    3. ``name``, the server optimizer, takes the step from ``base``:

    - ``fedavg``:  params = base + server_lr * agg
    - ``fedavgm``: v = momentum * v + agg; params = base + server_lr * v
    - ``fedadam``: m = beta1 * m + (1 - beta1) * agg; v = beta2 * v + (1 - beta2) * agg²;
                   params = base + server_lr * m / (sqrt(v) + tau)   (Reddi et al. 2021)
    - ``fedyogi``: as fedadam with v = v - (1 - beta2) * agg² * sign(v - agg²)

    Server state (FedAvgM's v; Adam's and Yogi's m and v) is computed in float64, stored as
    float32, and the step uses it read back from float32: what every node holds is the
    float32 state, so the step must come from exactly those bytes.

Invariants:
    - The result depends only on (rule, base bytes, the set of contributions, state bytes):
      never on the order the contributions arrived in. Elementwise float64 arithmetic is
      exactly rounded and every reduction has a fixed order (see `robust`), so every honest
      node computes the same bytes.
    - ``mean`` with fedavg or fedavgm gives the same bytes as before aggregators existed, and
      a rule dict with only ``name``, ``server_lr`` and ``momentum`` means what it meant.
    - The server state crosses the wire and the disk only as raw little-endian float32 bytes
      (`MergeState.to_bytes`: first vector, second, downlink residual), never as a pickle.
    - No contributions: params and state are returned unchanged.
    - ValueError for misuse (bad rule fields, mismatched shapes or state); an input set too
      small for the aggregator's ``f`` falls back to the median and says so in ``note``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from edge_swarm.swarm import robust
from edge_swarm.swarm.robust import AGGREGATORS

SERVER_RULES = ("fedavg", "fedavgm", "fedadam", "fedyogi")
MIXES = ("nnm",)
RULES = SERVER_RULES  # the old name, still imported elsewhere

# A merge must finish within a round: a genesis asking for more Weiszfeld steps is refused.
MAX_GEOMED_ITERS = 10_000


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


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    return float(value)


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{key} must be an int, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class MergeRule:
    """The swarm's merge rule: server optimizer ``name`` in SERVER_RULES, ``aggregator`` in
    AGGREGATORS, and their parameters (see the module header).

    ``server_lr`` > 0; ``momentum``, ``beta1``, ``beta2`` in [0, 1); ``tau`` > 0. ``f`` >= 0
    Byzantine inputs assumed by krum, multikrum, bulyan and (when ``trim`` is None)
    trimmed_mean; ignored by mean, median and geomed. ``trim`` in [0, 0.5) only with
    trimmed_mean; ``multikrum_m`` >= 1 only with multikrum; ``clip`` > 0 or None (off);
    ``mix`` None (off) or one of MIXES, which needs ``f`` >= 1 (it also uses ``f``).
    ``geomed_iters`` in [1, MAX_GEOMED_ITERS], ``geomed_tol`` > 0. ValueError otherwise.
    """

    name: str = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9
    aggregator: str = "mean"
    f: int = 0
    trim: float | None = None
    clip: float | None = None
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    geomed_iters: int = 100
    geomed_tol: float = 1e-6
    multikrum_m: int | None = None
    mix: str | None = None

    def __post_init__(self) -> None:
        if self.name not in SERVER_RULES:
            raise ValueError(f"merge rule must be one of {SERVER_RULES}, got {self.name!r}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        for key in ("server_lr", "momentum", "beta1", "beta2", "tau", "geomed_tol"):
            object.__setattr__(self, key, _number(key, getattr(self, key)))
        for key in ("f", "geomed_iters"):
            object.__setattr__(self, key, _integer(key, getattr(self, key)))
        for key in ("trim", "clip"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, _number(key, getattr(self, key)))
        if self.multikrum_m is not None:
            object.__setattr__(self, "multikrum_m", _integer("multikrum_m", self.multikrum_m))
        self._check_ranges()

    def _check_ranges(self) -> None:
        for key in ("server_lr", "tau", "geomed_tol"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("momentum", "beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.f < 0:
            raise ValueError(f"f must be >= 0, got {self.f}")
        if not 1 <= self.geomed_iters <= MAX_GEOMED_ITERS:
            raise ValueError(f"geomed_iters must be in [1, {MAX_GEOMED_ITERS}]")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip}")
        if self.trim is not None:
            if self.aggregator != "trimmed_mean":
                raise ValueError(f"trim applies to trimmed_mean only, not {self.aggregator}")
            if not 0 <= self.trim < 0.5:
                raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")
        if self.multikrum_m is not None:
            if self.aggregator != "multikrum":
                raise ValueError(f"multikrum_m applies to multikrum only, not {self.aggregator}")
            if self.multikrum_m < 1:
                raise ValueError(f"multikrum_m must be >= 1, got {self.multikrum_m}")
        if self.mix is not None:
            if self.mix not in MIXES:
                raise ValueError(f"mix must be one of {MIXES} or None, got {self.mix!r}")
            if self.f < 1:
                raise ValueError(f"mix {self.mix!r} needs f >= 1 (the deltas it may distrust)")

    def min_deltas(self) -> int:
        """The fewest deltas a round needs for this rule to run as chosen; with fewer, the
        aggregator falls back to the median (or mixing is skipped) and says so."""
        need = robust.min_rows(self.aggregator, self.f, self.trim)
        return max(need, robust.nnm_min_rows(self.f) if self.mix is not None else 1)

    @property
    def aggregation(self) -> str:
        """The aggregator with its mixing pre-step, e.g. ``median`` or ``nnm+median``."""
        return self.aggregator if self.mix is None else f"{self.mix}+{self.aggregator}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with every field (None for an unset optional one)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> MergeRule:
        """Build from untrusted input; missing keys take defaults, unknown keys are refused.

        A dict from before aggregators existed (name, server_lr, momentum) gets ``mean`` and
        no clipping, i.e. exactly the rule it described."""
        if not isinstance(data, dict):
            raise ValueError(f"merge rule must be an object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"merge rule has unknown keys: {sorted(map(str, unknown))}")
        return cls(**data)


# Chosen for the standard workload with benchmarks/sim_standard.py, together with
# edge_swarm.learn.train.STANDARD_TRAINING.
STANDARD_MERGE = MergeRule(name="fedavgm", server_lr=1.0, momentum=0.5)

_INT_FIELDS = ("f", "geomed_iters", "multikrum_m")
_TEXT_FIELDS = ("name", "aggregator", "mix")


def parse_merge(text: str, base: MergeRule = STANDARD_MERGE) -> MergeRule:
    """A merge rule from a command line: comma-separated words over ``base``.

    A word is a server rule (``fedadam``), an aggregator (``median``), a mix (``nnm``), such
    names joined by ``+`` (``nnm+trimmed_mean``), or ``field=value`` for any MergeRule field
    (``f=2``, ``clip=2.0``, ``trim=none``). E.g. ``nnm+median,f=2``. ValueError naming the
    word and what is allowed."""
    fields_by_name = {f.name for f in fields(MergeRule)}
    changes: dict[str, Any] = {}
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        if "=" in word:
            key, _, raw = (p.strip() for p in word.partition("="))
            if key not in fields_by_name:
                known = sorted(fields_by_name)
                raise ValueError(f"{word!r}: unknown field {key!r}; fields: {known}")
            changes[key] = _parse_value(key, raw)
            continue
        for name in word.split("+"):
            if name in SERVER_RULES:
                changes["name"] = name
            elif name in AGGREGATORS:
                changes["aggregator"] = name
            elif name in MIXES:
                changes["mix"] = name
            else:
                raise ValueError(
                    f"{name!r} is not a server rule {SERVER_RULES}, an aggregator "
                    f"{AGGREGATORS}, a mix {MIXES} or field=value"
                )
    return MergeRule.from_dict({**base.to_dict(), **changes})


def _parse_value(key: str, raw: str) -> Any:
    if raw.lower() in ("", "none", "off"):
        return None
    if key in _TEXT_FIELDS:
        return raw
    try:
        return int(raw) if key in _INT_FIELDS else float(raw)
    except ValueError:
        kind = "an integer" if key in _INT_FIELDS else "a number"
        raise ValueError(f"{key}={raw}: {key} takes {kind}") from None


def _frozen_vector(name: str, value: Any) -> np.ndarray:
    v = np.asarray(value)
    if v.dtype != np.float32 or v.ndim != 1:
        raise ValueError(f"{name} must be 1-D float32, got {v.dtype} {v.shape}")
    v = v.view()
    v.flags.writeable = False
    return v


@dataclass(frozen=True, eq=False)
class MergeState:
    """Server state carried between rounds: FedAvgM's velocity in ``velocity``; FedAdam's
    and FedYogi's first moment in ``velocity`` and second moment in ``second``; and, in a
    swarm whose committee publishes a quantized downlink update (``swarm/downlink.py``),
    the downlink's error-feedback ``residual``. Every member must hold the same residual to
    publish the same update, so it is part of the state (and of ``state_hash``).

    All are read-only 1-D float32 arrays of one length, or None (before the first merge, or
    for rules without that vector); ``second`` needs ``velocity``. ValueError otherwise.
    ``merge`` neither reads nor returns ``residual``: the downlink is applied after it.
    """

    velocity: np.ndarray | None = None
    second: np.ndarray | None = None
    residual: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.velocity is not None:
            object.__setattr__(self, "velocity", _frozen_vector("velocity", self.velocity))
        if self.second is not None:
            if self.velocity is None:
                raise ValueError("merge state has a second vector but no first")
            second = _frozen_vector("second", self.second)
            if second.shape != self.velocity.shape:
                raise ValueError(f"state vectors differ: {self.velocity.shape} {second.shape}")
            object.__setattr__(self, "second", second)
        if self.residual is not None:
            residual = _frozen_vector("residual", self.residual)
            if self.velocity is not None and residual.shape != self.velocity.shape:
                raise ValueError(f"state vectors differ: {self.velocity.shape} {residual.shape}")
            object.__setattr__(self, "residual", residual)

    def to_bytes(self) -> bytes:
        """Raw little-endian float32: velocity, second, then residual; empty bytes when
        there is none."""
        parts = (v for v in (self.velocity, self.second, self.residual) if v is not None)
        return b"".join(v.astype("<f4", copy=False).tobytes() for v in parts)

    @classmethod
    def from_bytes(cls, data: bytes, n_params: int, *, residual: bool = False) -> MergeState:
        """Inverse of `to_bytes` for a model of ``n_params``: 0, 4n or 8n bytes, plus 4n
        for the residual when ``residual`` (a swarm with a downlink; its state is empty only
        before the first merge). ValueError on another length or non-finite values."""
        if residual and len(data) >= 4 * n_params > 0:
            res = np.frombuffer(data[len(data) - 4 * n_params :], dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(res)):
                raise ValueError("merge state has non-finite values")
            rest = cls.from_bytes(data[: len(data) - 4 * n_params], n_params)
            return cls(rest.velocity, rest.second, res)
        if len(data) == 0:
            return cls(None)
        if len(data) not in (4 * n_params, 8 * n_params):
            raise ValueError(
                f"merge state has {len(data)} bytes, expected 0, {4 * n_params} or {8 * n_params}"
            )
        v = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(v)):
            raise ValueError("merge state has non-finite values")
        if v.size == n_params:
            return cls(v)
        return cls(v[:n_params].copy(), v[n_params:].copy())

    def state_hash(self) -> str:
        """Hex sha256 of `to_bytes` (sha256 of b"" when there is no state)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class MergeResult:
    """New float32 params, the next merge state, each node's share in the aggregate (summing
    to 1 over the included nodes, 0 for one the aggregator left out), the scale clipping
    applied to each node it shrank (< 1), and a note when the aggregator fell back."""

    params: np.ndarray
    state: MergeState
    weights: dict[str, float] = field(default_factory=dict)
    clipped: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _ordered(contributions: list[Contribution]) -> list[Contribution]:
    """Sorted by node id; ValueError on duplicate nodes or deltas of different lengths."""
    ordered = sorted(contributions, key=lambda c: c.node)
    nodes = [c.node for c in ordered]
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"duplicate nodes among contributions: {nodes}")
    n = ordered[0].delta.shape[0]
    if any(c.delta.shape[0] != n for c in ordered):
        raise ValueError("contributions have deltas of different lengths")
    return ordered


def weighted_mean(contributions: list[Contribution]) -> tuple[np.ndarray, dict[str, float]]:
    """Sample-weighted mean of the deltas in float64, accumulated in node-id order.

    Returns ``(mean float64, {node: weight})``. ValueError on an empty list, duplicate
    nodes or deltas of different lengths.
    """
    if not contributions:
        raise ValueError("weighted_mean needs at least one contribution")
    ordered = _ordered(contributions)
    agg = robust.mean(_stack(ordered), [c.n_samples for c in ordered])
    return agg.vector, {c.node: float(w) for c, w in zip(ordered, agg.weights, strict=True)}


def _stack(ordered: list[Contribution]) -> np.ndarray:
    X = np.empty((len(ordered), ordered[0].delta.shape[0]), dtype=np.float64)
    for i, c in enumerate(ordered):
        X[i] = c.delta  # float32 -> float64 is exact
    return X


def _server_step(
    rule: MergeRule, agg: np.ndarray, state: MergeState
) -> tuple[np.ndarray, MergeState]:
    """The step to add (before server_lr) and the next state; see the module header."""
    if rule.name == "fedavg":
        return agg, state
    if rule.name == "fedavgm":
        if state.second is not None:
            raise ValueError("fedavgm state has a second vector")
        v = (
            agg
            if state.velocity is None
            else rule.momentum * state.velocity.astype(np.float64) + agg
        )
        state = MergeState(v.astype(np.float32))
        return state.velocity.astype(np.float64), state
    if (state.velocity is None) != (state.second is None):
        raise ValueError(f"{rule.name} state needs both moments or neither")
    if state.velocity is None:
        m_prev = v_prev = np.zeros_like(agg)
    else:
        m_prev, v_prev = state.velocity.astype(np.float64), state.second.astype(np.float64)
        if np.any(v_prev < 0):
            raise ValueError(f"{rule.name} state has a negative second moment")
    m = rule.beta1 * m_prev + (1 - rule.beta1) * agg
    sq = agg * agg
    if rule.name == "fedadam":
        v = rule.beta2 * v_prev + (1 - rule.beta2) * sq
    else:
        v = v_prev - (1 - rule.beta2) * sq * np.sign(v_prev - sq)
    state = MergeState(m.astype(np.float32), v.astype(np.float32))
    m32, v32 = state.velocity.astype(np.float64), state.second.astype(np.float64)
    return m32 / (np.sqrt(v32) + rule.tau), state


def merge(
    rule: MergeRule,
    base: np.ndarray,
    contributions: list[Contribution],
    state: MergeState | None = None,
) -> MergeResult:
    """Apply ``rule`` to ``base`` with the peers' deltas; see the module header.

    ``base`` is a 1-D float32 vector; every delta and the state's vectors must match its
    length, and the state must fit the server rule (ValueError otherwise). Returns a new
    float32 params array; inputs are not modified. The result is independent of the order
    of ``contributions``. ValueError("merged parameters are not finite") if the step
    overflows.
    """
    base = np.asarray(base)
    if base.dtype != np.float32 or base.ndim != 1:
        raise ValueError(f"base must be 1-D float32, got {base.dtype} {base.shape}")
    state = state if state is not None else MergeState()
    if state.velocity is not None and state.velocity.shape != base.shape:
        raise ValueError(f"merge state has {state.velocity.shape[0]} values, base {base.shape[0]}")
    if not contributions:
        return MergeResult(base.copy(), state, {})
    if state.residual is not None:  # the downlink's, applied after the merge (see MergeState)
        state = MergeState(state.velocity, state.second)
    ordered = _ordered(contributions)
    if ordered[0].delta.shape != base.shape:
        raise ValueError(
            f"deltas have {ordered[0].delta.shape[0]} values, base has {base.shape[0]}"
        )
    X = _stack(ordered)
    clipped: dict[str, float] = {}
    if rule.clip is not None:
        scales = robust.clip_rows(X, rule.clip)
        clipped = {c.node: float(s) for c, s in zip(ordered, scales, strict=True) if s < 1}
    mixing, notes = None, []
    if rule.mix is not None:
        if X.shape[0] >= robust.nnm_min_rows(rule.f):
            X, mixing = robust.nnm(X, rule.f)
        else:
            notes.append(f"nnm needs more than 2f = {2 * rule.f} deltas, got {X.shape[0]}: skipped")
    agg = robust.aggregate(
        rule.aggregator,
        X,
        [c.n_samples for c in ordered],
        f=rule.f,
        trim=rule.trim,
        geomed_iters=rule.geomed_iters,
        geomed_tol=rule.geomed_tol,
        multikrum_m=rule.multikrum_m,
    )
    # An overflow to inf is caught just below as a ValueError, not left to a warning.
    with np.errstate(over="ignore", invalid="ignore"):
        step, state = _server_step(rule, agg.vector, state)
        params = (base.astype(np.float64) + rule.server_lr * step).astype(np.float32)
    if not np.all(np.isfinite(params)):
        raise ValueError("merged parameters are not finite")
    if not all(v is None or np.all(np.isfinite(v)) for v in (state.velocity, state.second)):
        raise ValueError("merged server state is not finite")
    shares = agg.weights if mixing is None else robust.unmix(agg.weights, mixing)
    weights = {c.node: float(w) for c, w in zip(ordered, shares, strict=True)}
    note = "; ".join(notes + ([agg.note] if agg.note else []))
    return MergeResult(params, state, weights, clipped, note)
