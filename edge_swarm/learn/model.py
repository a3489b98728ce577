"""Model spec, flat parameters, forward and backward passes for small MLPs.

How it works:
    A model is a `ModelSpec` (layer sizes, hidden activation) plus one flat float32
    parameter vector. The vector's layout is fixed by the spec: for each layer i = 1..L,
    first ``W_i`` (``sizes[i-1] x sizes[i]``, row-major) and then ``b_i`` (``sizes[i]``).
    Hidden layers apply the activation; the last layer yields logits for a softmax.

Invariants:
    - Everything a peer sees (hashes, deltas) is a function of the flat float32 vector and
      the spec's canonical JSON only.
    - The same inputs give the same bytes on one machine: no threading, no randomness
      outside ``init_params``; accumulations are in a fixed order.
    - ``ModelSpec`` is checked when built, so a spec from the network is safe to size
      allocations with once ``ModelSpec.from_dict`` has accepted it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

ACTIVATIONS = ("relu", "tanh")
MAX_LAYERS = 32
MAX_WIDTH = 1_000_000
MAX_PARAMS = 50_000_000  # 200 MB of float32: more than any edge model we plan to train
INIT_STD = 0.1


class ParamSlot(NamedTuple):
    """Where one named tensor lives in the flat vector."""

    name: str
    slice: slice
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """Layer sizes ``(n_in, hidden..., n_out)`` and the hidden activation.

    Raises ValueError on construction if there are fewer than two sizes, a size is not a
    positive int, the activation is unknown, or the model would exceed ``MAX_PARAMS``.
    """

    sizes: tuple[int, ...]
    activation: str = "relu"

    def __post_init__(self) -> None:
        sizes = self.sizes
        if not isinstance(sizes, (tuple, list)):
            raise ValueError(f"sizes must be a tuple of ints, got {type(sizes).__name__}")
        if not 2 <= len(sizes) <= MAX_LAYERS + 1:
            raise ValueError(f"sizes needs 2..{MAX_LAYERS + 1} entries, got {len(sizes)}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
                raise ValueError(f"layer sizes must be ints, got {s!r}")
            if not 1 <= s <= MAX_WIDTH:
                raise ValueError(f"layer sizes must be in 1..{MAX_WIDTH}, got {s}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.n_params > MAX_PARAMS:
            raise ValueError(f"model has {self.n_params} parameters, limit is {MAX_PARAMS}")

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector."""
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    @property
    def n_inputs(self) -> int:
        """Number of input features."""
        return self.sizes[0]

    @property
    def n_outputs(self) -> int:
        """Number of output classes (logits)."""
        return self.sizes[-1]

    def layout(self) -> tuple[ParamSlot, ...]:
        """Slots ``W1, b1, W2, b2, ...`` in vector order; W is (in, out) row-major."""
        slots: list[ParamSlot] = []
        pos = 0
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True), start=1):
            slots.append(ParamSlot(f"W{i}", slice(pos, pos + a * b), (a, b)))
            pos += a * b
            slots.append(ParamSlot(f"b{i}", slice(pos, pos + b), (b,)))
            pos += b
        return tuple(slots)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"sizes": [...], "activation": "..."}``."""
        return {"sizes": list(self.sizes), "activation": self.activation}

    def canonical_json(self) -> bytes:
        """UTF-8 JSON of ``to_dict()`` with sorted keys and no whitespace."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """Build a spec from untrusted input; raises ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"model spec must be an object, got {type(data).__name__}")
        unknown = set(data) - {"sizes", "activation"}
        if unknown:
            raise ValueError(f"model spec has unknown keys: {sorted(map(str, unknown))}")
        if "sizes" not in data:
            raise ValueError("model spec lacks 'sizes'")
        sizes = data["sizes"]
        if not isinstance(sizes, (list, tuple)):
            raise ValueError(f"model spec 'sizes' must be a list, got {type(sizes).__name__}")
        if len(sizes) > MAX_LAYERS + 1:
            raise ValueError(f"model spec 'sizes' has {len(sizes)} entries, max {MAX_LAYERS + 1}")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in sizes):
            raise ValueError(f"model spec 'sizes' must hold ints, got {sizes!r}")
        activation = data.get("activation", "relu")
        if not isinstance(activation, str):
            raise ValueError("model spec 'activation' must be a string")
        return cls(tuple(sizes), activation)


def _check_params(spec: ModelSpec, params: np.ndarray) -> np.ndarray:
    params = np.asarray(params)
    if params.ndim != 1 or params.shape[0] != spec.n_params:
        raise ValueError(f"params must have shape ({spec.n_params},), got {params.shape}")
    if params.dtype.kind != "f":
        raise ValueError(f"params must be floating point, got {params.dtype}")
    return params


def _check_inputs(spec: ModelSpec, X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != spec.n_inputs:
        raise ValueError(f"X must have shape (n, {spec.n_inputs}), got {X.shape}")
    return X


def _check_labels(spec: ModelSpec, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer labels, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= spec.n_outputs):
        raise ValueError(f"labels must be in 0..{spec.n_outputs - 1}")
    return y


def init_params(spec: ModelSpec, seed: int = 0) -> np.ndarray:
    """Fresh float32 parameters: ``W_i ~ normal(0, 0.1)`` drawn in layer order, biases 0.

    One ``numpy.random.default_rng(seed)`` draws W1, then W2, ... (the standard workload's
    initialisation for ``seed=0``).
    """
    rng = np.random.default_rng(seed)
    params = np.zeros(spec.n_params, dtype=np.float32)
    for slot in spec.layout():
        if slot.name.startswith("W"):
            params[slot.slice] = rng.normal(0.0, INIT_STD, slot.shape).ravel()
    return params


def unflatten(spec: ModelSpec, params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Views ``[(W1, b1), (W2, b2), ...]`` into ``params`` (no copy; writes go through)."""
    params = _check_params(spec, params)
    slots = spec.layout()
    return [
        (params[w.slice].reshape(w.shape), params[b.slice])
        for w, b in zip(slots[0::2], slots[1::2], strict=True)
    ]


def _activate(activation: str, z: np.ndarray) -> np.ndarray:
    if activation == "relu":
        return np.maximum(z, 0, out=z)
    return np.tanh(z, out=z)


def _hidden_states(
    spec: ModelSpec, layers: list[tuple[np.ndarray, np.ndarray]], X: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Inputs of every layer (X first) and the final logits."""
    states = [X]
    for W, b in layers[:-1]:
        states.append(_activate(spec.activation, states[-1] @ W + b))
    W, b = layers[-1]
    return states, states[-1] @ W + b


def forward(spec: ModelSpec, params: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Logits of shape ``(n, n_outputs)`` in float32 for inputs ``X`` of shape (n, n_in)."""
    X = _check_inputs(spec, X).astype(np.float32, copy=False)
    layers = unflatten(spec, _check_params(spec, params).astype(np.float32, copy=False))
    return _hidden_states(spec, layers, X)[1]


def predict(spec: ModelSpec, params: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Predicted class per row (int64)."""
    return np.argmax(forward(spec, params, X), axis=1).astype(np.int64)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy of ``logits`` against integer labels ``y``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(y)), y], dtype=np.float64))


def loss_and_grad(
    spec: ModelSpec,
    params: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    dtype: type[np.floating] = np.float32,
) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch and its gradient as a flat vector.

    Computes in ``dtype`` (float32 for training; float64 for gradient checks) and returns
    ``(loss, grad)`` with ``grad`` in ``dtype`` and the layout of ``params``.
    Raises ValueError on shape, dtype or label-range mismatch, or an empty batch.
    """
    X = _check_inputs(spec, X)
    y = _check_labels(spec, X, y)
    if X.shape[0] == 0:
        raise ValueError("loss_and_grad needs at least one sample")
    params = _check_params(spec, params).astype(dtype, copy=False)
    return _loss_and_grad(spec, params, X.astype(dtype, copy=False), y)


def _loss_and_grad(
    spec: ModelSpec, params: np.ndarray, X: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """Unchecked core of `loss_and_grad`; X and params share one float dtype."""
    layers = unflatten(spec, params)
    states, logits = _hidden_states(spec, layers, X)
    n = X.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, y], dtype=np.float64))
    delta = exp / total
    delta[rows, y] -= 1
    delta /= n
    grad = np.empty_like(params)
    grads = unflatten(spec, grad)
    for i in range(len(layers) - 1, -1, -1):
        gW, gb = grads[i]
        np.matmul(states[i].T, delta, out=gW)
        np.sum(delta, axis=0, out=gb)
        if i > 0:
            upstream = delta @ layers[i][0].T
            if spec.activation == "relu":
                delta = upstream * (states[i] > 0)
            else:
                delta = upstream * (1 - states[i] * states[i])
    return loss, grad


def model_hash(spec: ModelSpec, params: np.ndarray) -> str:
    """Hex sha256 of the spec's canonical JSON followed by the float32 LE parameter bytes."""
    params = _check_params(spec, params)
    digest = hashlib.sha256(spec.canonical_json())
    digest.update(params.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()
