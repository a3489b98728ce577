"""A site's validation of the swarm's models: its held-out slice, and its score of every
final model (docs/VALIDATION.md).

How it works
------------
At the genesis the agent splits its data (``learn/data.holdout``: ``params["val_fraction"]``,
decided per sample by a hash of the node id, the genesis seed and the sample itself, so a
restart holds out the same samples), and again on every new read of it (``node/local_data``:
new files), where no old sample changes side. Training only ever sees the rest. Each final model the
agent takes (merged, adopted or applied from an update) is scored on the slice; the score of
the model a round starts from (the previous round's final) goes, signed, into the agent's
next ``delta_commit`` as ``metrics: {val_acc, val_n, val_round}``, and the latest into its
telemetry. The serving gate (``node/serving.py``) reads the scores by round.

Invariants
----------
- The slice never reaches training: `SiteValidation.holding_out` hands on the training part
  only and keeps the slice here, where nothing but `score` reads it.
- What leaves the device is numbers (an accuracy, a count, a round), never samples.
- A genesis without ``val_fraction`` (a swarm made before it existed) holds nothing out:
  its agents train on all their data, as they did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_swarm.learn.data import MIN_MEANINGFUL_VAL, holdout
from edge_swarm.learn.model import ModelSpec
from edge_swarm.learn.train import evaluate

log = logging.getLogger(__name__)

DEFAULT_SERVE_MARGIN = 0.02  # a genesis that names no margin (one made before the gate)
MAX_SCORES = 4096  # rounds whose score a device remembers (the serving gate looks back)


Prepare = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class SiteValidation:
    """A device's held-out slice and its scores of final models, by round."""

    def __init__(
        self,
        X_val: np.ndarray,
        y_val: np.ndarray,
        serve_margin: float = DEFAULT_SERVE_MARGIN,
        fraction: float = 0.0,
        key: str = "",
    ) -> None:
        self.X_val = X_val
        self.y_val = y_val
        self.serve_margin = serve_margin  # the genesis's, for the serving gate
        self.fraction = fraction  # the genesis's val_fraction
        self.key = key  # which device (learn/data.holdout)
        self.scores: dict[int, float] = {}  # round -> accuracy of that round's final model
        self._last: tuple[int, bytes] | None = None  # the last (round, params bytes) scored

    @classmethod
    def none(cls) -> SiteValidation:
        """No slice (before the genesis, or a swarm that holds nothing out)."""
        return cls(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))

    @classmethod
    def at_genesis(cls, params: dict[str, Any], node: str) -> SiteValidation:
        """An empty slice with the genesis's fraction and margin; `holding_out` fills it.
        Raises SystemExit with the reason when the genesis's values are not numbers in
        [0, 1) and [0, 1]: the device cannot take part in such a swarm."""
        fraction = params.get("val_fraction", 0.0)
        margin = params.get("serve_margin", DEFAULT_SERVE_MARGIN)
        for name, v, top in (("val_fraction", fraction, 0.99), ("serve_margin", margin, 1)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= top:
                raise SystemExit(f"{node}: the genesis's {name} {v!r} is out of [0, {top}]")
        key = f"{node}|{params.get('init_seed', 0)}"
        return cls(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), margin, fraction, key)

    def holding_out(self, prepare: Prepare) -> Prepare:
        """``prepare`` (raw arrays -> what the agent trains on: node/local_data.py) behind the
        split: the slice is taken out of the raw data first and kept here (its features
        through ``prepare`` too, its labels as they are), and only the rest is prepared for
        training. Applied to every new read of the data, so new samples go to the side their
        hash says and no old sample changes side."""

        def split(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            h = holdout(X, y, self.fraction, self.key)
            X_train, y_train = prepare(h.X_train, h.y_train)
            X_val = prepare(h.X_val, h.y_val)[0] if len(h.y_val) else h.X_val
            self._take_slice(X_val, h.y_val, len(y))
            return X_train, y_train

        return split

    def _take_slice(self, X_val: np.ndarray, y_val: np.ndarray, n_all: int) -> None:
        changed = len(y_val) != self.n
        self.X_val, self.y_val, self._last = X_val, y_val, None
        if not self.fraction or not changed:
            return
        if self.n < MIN_MEANINGFUL_VAL:
            log.warning(
                "only %d of our %d samples are held out for validation (fewer than %d): "
                "our validation accuracy is too coarse to mean much",
                self.n,
                n_all,
                MIN_MEANINGFUL_VAL,
            )
        else:
            log.info("holding out %d of our %d samples for validation", self.n, n_all)

    @property
    def n(self) -> int:
        """Samples in the slice."""
        return len(self.y_val)

    def score(self, spec: ModelSpec, params: np.ndarray, rnd: int) -> float | None:
        """The slice's accuracy of ``params``, the final model of round ``rnd``, kept by
        round; None when the slice is empty. Scoring the same bytes again costs nothing."""
        if self.n == 0:
            return None
        key = params.tobytes()
        if self._last == (rnd, key):  # the model a round starts from was scored as it came
            return self.scores[rnd]
        try:
            acc = round(float(evaluate(spec, params, self.X_val, self.y_val)["accuracy"]), 6)
        except ValueError as exc:  # labels the model has no output for: as training would
            log.warning("round %d: cannot score the final model on our slice: %s", rnd, exc)
            return None
        self.scores[rnd], self._last = acc, (rnd, key)
        for old in sorted(self.scores)[:-MAX_SCORES]:
            del self.scores[old]
        log.info(
            "round %d: its final model scores %.4f on our %d held-out samples", rnd, acc, self.n
        )
        return acc

    def report(self, spec: ModelSpec, params: np.ndarray, rnd: int) -> dict[str, Any]:
        """The metrics a commit carries for the model a round starts from (``params``, the
        final model of round ``rnd``): ``{val_acc, val_n, val_round}``, or ``{}`` without
        a slice."""
        acc = self.score(spec, params, rnd)
        if acc is None:
            return {}
        return {"val_acc": acc, "val_n": self.n, "val_round": rnd}

    def telemetry(self) -> dict[str, float]:
        """The latest score for the device's telemetry (``fleet ls``, the dashboard)."""
        if not self.scores:
            return {"val_n": self.n} if self.n else {}
        last = max(self.scores)
        return {"val_acc": self.scores[last], "val_round": last, "val_n": self.n}


def split_site_data(
    params: dict[str, Any],
    node: str,
    X: np.ndarray,
    y: np.ndarray,
    features: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, SiteValidation]:
    """`SiteValidation.at_genesis` and one `holding_out` split of ``(X, y)``: the training
    part (through ``features``, a frozen backbone, when given) and the slice."""
    val = SiteValidation.at_genesis(params, node)
    X_train, y_train = val.holding_out(lambda A, b: (features(A) if features else A, b))(X, y)
    return X_train, y_train, val
