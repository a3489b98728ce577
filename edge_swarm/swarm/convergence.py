"""Stop on convergence: when the mean site validation metric stops improving.

How it works
------------
Each agent scores every final model on its own held-out slice and reports the number,
signed, in the ``metrics`` of its next ``delta_commit`` (as a ledger entry when every node
merges; as a sixth element of its row in ``round_close`` when a committee merges, rows
being ``[node, envelope_sha256, n_samples, ts, sig]`` or ``[..., sig, metrics]``).
``site_metrics`` reads those numbers out of one entry; a ``MetricBook`` keeps them per
scored round; ``stop_reason`` is the rule: early stopping on the per-round mean, with the
genesis's ``patience`` and ``min_delta`` (``StopRule``, from ``params["stop"]``).

Invariants
----------
* Pure: no clock, no I/O. The same ledger gives the same metrics and the same decision,
  so a restarted coordinator reaches the decision its predecessor reached (or would have).
* Metrics are untrusted numbers: a value that is not a finite number (bools included) is
  ignored, never raised on. Each site counts once per round (its latest report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_METRIC = "val_acc"
SCORED_ROUND_KEY = "val_round"
"""The metrics field naming the round whose final model was scored; without it, a commit
to round r scores the model round r started from (r - 1's final model)."""
MAX_ROUNDS_KEPT = 1024  # a MetricBook forgets older rounds (patience never reaches so far)


class StopRuleError(ValueError):
    """The genesis's ``stop`` settings are not a usable rule."""


@dataclass(frozen=True)
class StopRule:
    """End a campaign once the mean of ``metric`` over sites has not improved by at least
    ``min_delta`` on its best for ``patience`` rounds in a row. Metrics whose name ends in
    ``loss`` improve downwards, the others upwards. Raises StopRuleError when built badly."""

    patience: int
    min_delta: float = 0.0
    metric: str = DEFAULT_METRIC

    def __post_init__(self) -> None:
        p = self.patience
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= MAX_ROUNDS_KEPT // 2:
            raise StopRuleError(f"stop.patience must be an int in [1, 512], not {p!r:.40}")
        d = self.min_delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < math.inf:
            raise StopRuleError(f"stop.min_delta must be a number >= 0, not {d!r:.40}")
        m = self.metric
        if not isinstance(m, str) or not m or len(m) > 64:
            raise StopRuleError(f"stop.metric must be a metric name, not {m!r:.40}")

    @property
    def lower_is_better(self) -> bool:
        return self.metric.endswith("loss")

    def to_dict(self) -> dict[str, Any]:
        return {"patience": self.patience, "min_delta": self.min_delta, "metric": self.metric}

    @classmethod
    def from_params(cls, value: Any) -> StopRule | None:
        """The genesis's ``stop`` object (None or absent: no stop rule)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise StopRuleError("stop must be an object {patience, min_delta, metric}")
        unknown = sorted(str(k) for k in value if k not in ("patience", "min_delta", "metric"))
        if unknown:
            raise StopRuleError(f"stop has unknown fields {unknown[:5]}")
        if "patience" not in value:
            raise StopRuleError("stop needs patience (rounds without improvement)")
        return cls(
            value["patience"], value.get("min_delta", 0.0), value.get("metric", DEFAULT_METRIC)
        )


def _describe(metric: str) -> str:
    return "mean validation accuracy" if metric == DEFAULT_METRIC else f"mean {metric}"


def stop_reason(per_round: Mapping[int, Sequence[float]], rule: StopRule) -> str | None:
    """The reason to stop, or None to go on. ``per_round``: scored round -> the sites'
    values of ``rule.metric`` for that round's final model (rounds without any are
    skipped). Early stopping on the per-round mean: the best mean so far moves only on an
    improvement of at least ``min_delta`` (and above zero); ``patience`` rounds in a row
    without one stop."""
    sign = -1.0 if rule.lower_is_better else 1.0
    best: float | None = None
    best_round, waited = 0, 0
    for rnd in sorted(per_round):
        values = [v for v in per_round[rnd] if _number(v) is not None]
        if not values:
            continue
        mean = _fmean(values)
        gain = 0.0 if best is None else sign * (mean - best)
        if best is None or (gain > 0 and gain >= rule.min_delta):  # a plateau is no gain
            best, best_round, waited = mean, rnd, 0
        else:
            waited += 1
    if best is None or waited < rule.patience:
        return None
    return (
        f"converged: {_describe(rule.metric)} improved < {rule.min_delta:g} for "
        f"{rule.patience} rounds (best {best:.4f}, model of round {best_round})"
    )


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


@dataclass(frozen=True)
class SiteMetric:
    """One site's score of one round's final model."""

    node: str
    round: int  # the round whose final model was scored
    value: float


def _from_metrics(node: Any, commit_round: Any, metrics: Any, metric: str) -> SiteMetric | None:
    if not isinstance(metrics, dict) or not isinstance(node, str):
        return None
    value = _number(metrics.get(metric))
    scored = metrics.get(SCORED_ROUND_KEY, None)
    if scored is None and isinstance(commit_round, int) and not isinstance(commit_round, bool):
        scored = commit_round - 1
    if value is None or isinstance(scored, bool) or not isinstance(scored, int) or scored < 0:
        return None
    return SiteMetric(node, scored, value)


def site_metrics(kind: str, author: str, payload: Any, metric: str) -> list[SiteMetric]:
    """The sites' ``metric`` values an entry carries: a ``delta_commit``'s own metrics, or
    a ``round_close``'s rows with a sixth element (a metrics object). Total: anything
    malformed is skipped, nothing raises."""
    if not isinstance(payload, dict):
        return []
    if kind == "delta_commit":
        found = _from_metrics(author, payload.get("round"), payload.get("metrics"), metric)
        return [] if found is None else [found]
    rows = payload.get("commits") if kind == "round_close" else None
    if not isinstance(rows, list):
        return []  # a light copy's digest, or no folded commits
    out = []
    for row in rows:
        if isinstance(row, list) and len(row) >= 6:
            found = _from_metrics(row[0], payload.get("round"), row[5], metric)
            if found is not None:
                out.append(found)
    return out


class MetricBook:
    """The sites' values of one metric per scored round, as the ledger reported them."""

    def __init__(self, metric: str = DEFAULT_METRIC) -> None:
        self.metric = metric
        self._rounds: dict[int, dict[str, float]] = {}  # scored round -> node -> value
        self.version = 0  # moves whenever a value is folded in (callers cache on it)

    def fold(self, kind: str, author: str, payload: Any) -> None:
        for m in site_metrics(kind, author, payload, self.metric):
            self._rounds.setdefault(m.round, {})[m.node] = m.value
            self.version += 1
        if len(self._rounds) > MAX_ROUNDS_KEPT:
            for old in sorted(self._rounds)[: len(self._rounds) - MAX_ROUNDS_KEPT]:
                del self._rounds[old]

    def per_round(self, since: int = 0) -> dict[int, list[float]]:
        """Scored round -> the sites' values (node-id order), for rounds >= ``since``."""
        return {
            r: [v for _, v in sorted(by_node.items())]
            for r, by_node in sorted(self._rounds.items())
            if r >= since
        }

    def means(self, since: int = 0) -> dict[int, float]:
        """Scored round -> the mean over the sites that reported it."""
        return {r: _fmean(v) for r, v in self.per_round(since).items() if v}


def _fmean(values: Sequence[float]) -> float:
    """``statistics.fmean`` (the same fsum / n), without loading statistics, fractions and
    decimal into every agent (issue 20)."""
    return math.fsum(values) / len(values)
