"""Tests for edge_swarm.learn.model: spec validation, layout, init, gradients, hashing."""

from __future__ import annotations

import numpy as np
import pytest

from edge_swarm.learn.model import (
    ModelSpec,
    forward,
    init_params,
    loss_and_grad,
    model_hash,
    predict,
    unflatten,
)

STANDARD = ModelSpec((64, 32, 10))


def test_standard_spec_has_2410_params_in_documented_order() -> None:
    assert STANDARD.n_params == 2410
    names = [(s.name, s.slice.start, s.slice.stop, s.shape) for s in STANDARD.layout()]
    assert names == [
        ("W1", 0, 2048, (64, 32)),
        ("b1", 2048, 2080, (32,)),
        ("W2", 2080, 2400, (32, 10)),
        ("b2", 2400, 2410, (10,)),
    ]


def test_init_matches_workload_recipe() -> None:
    params = init_params(STANDARD, 0)
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.1, (64, 32))
    w2 = rng.normal(0, 0.1, (32, 10))
    expected = np.concatenate([w1.ravel(), np.zeros(32), w2.ravel(), np.zeros(10)])
    assert params.dtype == np.float32
    np.testing.assert_array_equal(params, expected.astype(np.float32))
    np.testing.assert_array_equal(init_params(STANDARD, 0), params)
    assert not np.array_equal(init_params(STANDARD, 1), params)


@pytest.mark.parametrize(
    "sizes, activation",
    [
        ((64,), "relu"),
        ((), "relu"),
        ((64, 0, 10), "relu"),
        ((64, -3, 10), "relu"),
        ((64, 3.0, 10), "relu"),
        ((64, True, 10), "relu"),
        ((64, 32, 10), "gelu"),
        ((100_000, 100_000, 10), "relu"),
        ("64,10", "relu"),
    ],
)
def test_spec_rejects_invalid(sizes: object, activation: str) -> None:
    with pytest.raises(ValueError):
        ModelSpec(sizes, activation)  # type: ignore[arg-type]


def test_spec_dict_round_trip_and_untrusted_input() -> None:
    spec = ModelSpec((30, 16, 8, 2), "tanh")
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec.from_dict({"sizes": [4, 2]}) == ModelSpec((4, 2), "relu")
    for bad in (
        None,
        [],
        {"sizes": "4,2"},
        {"activation": "relu"},
        {"sizes": [4, 2], "extra": 1},
        {"sizes": [4, "2"]},
        {"sizes": [4, 2], "activation": 3},
        {"sizes": [4] * 1000},
    ):
        with pytest.raises(ValueError):
            ModelSpec.from_dict(bad)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradient_matches_central_differences(activation: str) -> None:
    spec = ModelSpec((5, 4, 3, 3), activation)
    rng = np.random.default_rng(1)
    params = rng.normal(0, 0.5, spec.n_params)
    X = rng.normal(size=(7, 5))
    y = rng.integers(0, 3, 7)
    loss, grad = loss_and_grad(spec, params, X, y, dtype=np.float64)
    assert grad.dtype == np.float64
    eps = 1e-6
    numeric = np.empty_like(params)
    for i in range(spec.n_params):
        step = np.zeros_like(params)
        step[i] = eps
        plus, _ = loss_and_grad(spec, params + step, X, y, dtype=np.float64)
        minus, _ = loss_and_grad(spec, params - step, X, y, dtype=np.float64)
        numeric[i] = (plus - minus) / (2 * eps)
    rel = np.linalg.norm(grad - numeric) / np.linalg.norm(grad + numeric)
    assert rel < 1e-4
    f32_loss, f32_grad = loss_and_grad(spec, params.astype(np.float32), X, y)
    assert f32_grad.dtype == np.float32
    assert f32_loss == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(f32_grad, grad, atol=1e-5)


def test_forward_predict_and_determinism() -> None:
    params = init_params(STANDARD, 3)
    X = np.random.default_rng(0).random((20, 64), dtype=np.float32)
    logits = forward(STANDARD, params, X)
    assert logits.shape == (20, 10) and logits.dtype == np.float32
    np.testing.assert_array_equal(predict(STANDARD, params, X), logits.argmax(axis=1))
    y = np.arange(20) % 10
    a = loss_and_grad(STANDARD, params, X, y)
    b = loss_and_grad(STANDARD, params.copy(), X.copy(), y)
    assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes()


def test_shape_and_label_checks() -> None:
    params = init_params(STANDARD)
    X = np.zeros((3, 64), np.float32)
    with pytest.raises(ValueError):
        forward(STANDARD, params[:-1], X)
    with pytest.raises(ValueError):
        forward(STANDARD, params, X[:, :10])
    with pytest.raises(ValueError):
        loss_and_grad(STANDARD, params, X, np.array([0, 1, 10]))
    with pytest.raises(ValueError):
        loss_and_grad(STANDARD, params, X, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError):
        loss_and_grad(STANDARD, params, X[:0], np.array([], np.int64))


def test_unflatten_returns_views() -> None:
    params = init_params(STANDARD)
    (W1, b1), (W2, _) = unflatten(STANDARD, params)
    assert W1.shape == (64, 32) and W2.shape == (32, 10)
    b1[0] = 7.0
    assert params[2048] == 7.0


def test_model_hash_depends_on_spec_and_bytes() -> None:
    params = init_params(STANDARD)
    h = model_hash(STANDARD, params)
    assert len(h) == 64 and h == model_hash(STANDARD, params.copy())
    assert h == model_hash(STANDARD, params.astype(">f4"))
    assert h != model_hash(ModelSpec((64, 32, 10), "tanh"), params)
    bumped = params.copy()
    bumped[5] = np.nextafter(bumped[5], np.float32(1))
    assert h != model_hash(STANDARD, bumped)
