"""Local training loop and metrics.

How it works:
    `train_local` runs mini-batch SGD over the local data for ``cfg.epochs`` epochs. Each
    epoch draws one permutation from ``numpy.random.default_rng(seed)`` and walks it in
    batches of ``cfg.batch_size`` (the last batch may be smaller). The step is

        g = grad(loss) + weight_decay * w + prox_mu * (w - w0)
        v = momentum * v + g          (v starts at zero; plain SGD when momentum = 0)
        w = w - lr * v

    where ``w0`` are the parameters the round started from (the FedProx term).

Invariants:
    - All arithmetic is float32 in a fixed order, so the same (params, data, cfg, seed)
      give the same bytes on one machine.
    - The input parameter array is never modified.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from edge_swarm.learn.model import (
    ModelSpec,
    _check_inputs,
    _check_labels,
    _check_params,
    _loss_and_grad,
    cross_entropy,
    forward,
)


@dataclass(frozen=True)
class LocalTraining:
    """Local optimiser settings for one round; checked when built (ValueError).

    ``epochs`` 1..1000, ``lr`` > 0, ``batch_size`` >= 1, ``momentum`` in [0, 1),
    ``weight_decay`` >= 0 (applied to every parameter), ``prox_mu`` >= 0 (FedProx).
    """

    epochs: int = 5
    lr: float = 0.1
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "prox_mu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 1 <= self.epochs <= 1000:
            raise ValueError(f"epochs must be in 1..1000, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.prox_mu < 0:
            raise ValueError("weight_decay and prox_mu must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LocalTraining:
        """Build from untrusted input; missing keys take defaults, unknown keys are refused."""
        if not isinstance(data, dict):
            raise ValueError(f"local training must be an object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"local training has unknown keys: {sorted(map(str, unknown))}")
        return cls(**data)


# The settings chosen for the standard workload with benchmarks/sim_standard.py (with
# STANDARD_MERGE in swarm/merge.py): 0.972 test accuracy after 20 rounds, flat around it.
STANDARD_TRAINING = LocalTraining(epochs=5, lr=0.2, batch_size=16, momentum=0.0)


def training_seed(swarm_seed: int, round_no: int, node: str) -> int:
    """A 63-bit seed for one node's training in one round, stable across machines."""
    text = f"{swarm_seed}/{round_no}/{node}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def _check_data(spec: ModelSpec, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = _check_inputs(spec, X)
    y = _check_labels(spec, X, y)
    if X.shape[0] == 0:
        raise ValueError("no samples: cannot train or evaluate on empty data")
    return X.astype(np.float32, copy=False), y


def evaluate(spec: ModelSpec, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``params`` on ``(X, y)``.

    Returns ``{"accuracy": float, "loss": float}``; raises ValueError on empty or
    mismatched data.
    """
    X, y = _check_data(spec, X, y)
    logits = forward(spec, params, X)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    return {"accuracy": accuracy, "loss": cross_entropy(logits, y)}


def train_local(
    spec: ModelSpec,
    params: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    cfg: LocalTraining,
    seed: int | np.random.Generator,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train a copy of ``params`` on ``(X, y)`` with ``cfg``; shuffles from ``seed``.

    Returns ``(new_params, metrics)``: float32 parameters of the same layout and
    ``{"loss", "accuracy"}`` on the local training data after training, plus
    ``"n_samples"``, ``"epochs"`` and ``"seconds"`` (wall time from ``clock``).
    Raises ValueError on empty or mismatched data; a diverged run (non-finite
    parameters) raises FloatingPointError so that it is never published.
    """
    started = clock()
    X, y = _check_data(spec, X, y)
    w0 = _check_params(spec, params).astype(np.float32, copy=True)
    w = w0.copy()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lr = np.float32(cfg.lr)
    momentum = np.float32(cfg.momentum)
    decay = np.float32(cfg.weight_decay)
    mu = np.float32(cfg.prox_mu)
    velocity = np.zeros_like(w) if cfg.momentum > 0 else None
    n = X.shape[0]
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for start in range(0, n, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            _, grad = _loss_and_grad(spec, w, X[batch], y[batch])
            if decay:
                grad += decay * w
            if mu:
                grad += mu * (w - w0)
            if velocity is not None:
                velocity *= momentum
                velocity += grad
                grad = velocity
            w -= lr * grad
    if not np.all(np.isfinite(w)):
        raise FloatingPointError("local training diverged (non-finite parameters)")
    metrics: dict[str, Any] = evaluate(spec, w, X, y)
    metrics.update(n_samples=int(n), epochs=cfg.epochs, seconds=clock() - started)
    return w, metrics
