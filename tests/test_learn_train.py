"""Tests for edge_swarm.learn.train: config validation, determinism, learning, FedProx."""

from __future__ import annotations

import numpy as np
import pytest

from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.learn.train import LocalTraining, evaluate, train_local, training_seed

SPEC = ModelSpec((4, 8, 3))


def blobs(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], np.float32)
    X = centers[y] + rng.normal(0, 0.5, (n, 4)).astype(np.float32)
    return X.astype(np.float32), y.astype(np.int64)


def test_config_validation_and_round_trip() -> None:
    cfg = LocalTraining(epochs=2, lr=0.05, batch_size=16, momentum=0.5, prox_mu=0.01)
    assert LocalTraining.from_dict(cfg.to_dict()) == cfg
    assert LocalTraining.from_dict({}) == LocalTraining()
    for bad in (
        {"epochs": 0},
        {"epochs": 2.0},
        {"lr": 0},
        {"lr": float("nan")},
        {"batch_size": 0},
        {"momentum": 1.0},
        {"weight_decay": -1},
        {"prox_mu": "0.1"},
        {"unknown": 1},
    ):
        with pytest.raises(ValueError):
            LocalTraining.from_dict(bad)
    with pytest.raises(ValueError):
        LocalTraining.from_dict([1, 2])


def test_training_learns_and_reports_metrics() -> None:
    X, y = blobs()
    params = init_params(SPEC, 0)
    before = params.copy()
    new, metrics = train_local(SPEC, params, X, y, LocalTraining(epochs=10), seed=1)
    np.testing.assert_array_equal(params, before)  # input untouched
    assert new.dtype == np.float32 and new.shape == params.shape
    assert metrics["accuracy"] > 0.95
    assert metrics["n_samples"] == 90 and metrics["epochs"] == 10
    assert metrics["seconds"] >= 0
    assert metrics["loss"] < evaluate(SPEC, params, X, y)["loss"]


@pytest.mark.parametrize(
    "cfg",
    [
        LocalTraining(epochs=2),
        LocalTraining(epochs=2, momentum=0.9, weight_decay=1e-3, prox_mu=0.1),
    ],
)
def test_training_is_deterministic(cfg: LocalTraining) -> None:
    X, y = blobs()
    a, _ = train_local(SPEC, init_params(SPEC), X, y, cfg, seed=5)
    b, _ = train_local(SPEC, init_params(SPEC), X.copy(), y.copy(), cfg, seed=5)
    c, _ = train_local(SPEC, init_params(SPEC), X, y, cfg, seed=6)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    g, _ = train_local(SPEC, init_params(SPEC), X, y, cfg, seed=np.random.default_rng(5))
    assert g.tobytes() == a.tobytes()


def test_prox_term_keeps_params_near_start() -> None:
    X, y = blobs()
    start = init_params(SPEC)
    free, _ = train_local(SPEC, start, X, y, LocalTraining(epochs=5), seed=0)
    prox, _ = train_local(SPEC, start, X, y, LocalTraining(epochs=5, prox_mu=5.0), seed=0)
    assert np.linalg.norm(prox - start) < np.linalg.norm(free - start)


def test_divergence_and_bad_data_raise() -> None:
    X, y = blobs()
    with pytest.raises(FloatingPointError), np.errstate(all="ignore"):
        train_local(SPEC, init_params(SPEC), X * 1e30, y, LocalTraining(lr=1e6), seed=0)
    with pytest.raises(ValueError):
        train_local(SPEC, init_params(SPEC), X[:0], y[:0], LocalTraining(), seed=0)
    with pytest.raises(ValueError):
        evaluate(SPEC, init_params(SPEC), X, y[:-1])


def test_evaluate_values() -> None:
    X, y = blobs(30)
    result = evaluate(SPEC, np.zeros(SPEC.n_params, np.float32), X, y)
    assert result["loss"] == pytest.approx(np.log(3), rel=1e-6)
    assert result["accuracy"] == pytest.approx(1 / 3)


def test_training_seed_is_stable_and_distinct() -> None:
    assert training_seed(0, 1, "a") == training_seed(0, 1, "a")
    seeds = {training_seed(s, r, n) for s in (0, 1) for r in (0, 1) for n in ("a", "b")}
    assert len(seeds) == 8
    assert all(0 <= s < 2**63 for s in seeds)
