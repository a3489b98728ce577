"""A SuperNode's ClientApp: the standard workload's local training (numpy MLP 64-32-10,
SGD lr 0.2, batch 16, 5 epochs), on the partition file named by the node config."""

from __future__ import annotations

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

SIZES = (64, 32, 10)


def unflatten(flat: np.ndarray) -> list[np.ndarray]:
    out, i = [], 0
    for a, b in zip(SIZES[:-1], SIZES[1:], strict=True):
        out.append(flat[i : i + a * b].reshape(a, b))
        i += a * b
        out.append(flat[i : i + b])
        i += b
    return out


def train(params: list[np.ndarray], X: np.ndarray, y: np.ndarray, seed: int) -> list[np.ndarray]:
    W1, b1, W2, b2 = (p.astype(np.float32).copy() for p in params)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        order = rng.permutation(len(y))
        for s in range(0, len(y), 16):
            idx = order[s : s + 16]
            h = np.maximum(X[idx] @ W1 + b1, 0)
            z = h @ W2 + b2
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            g = p / len(idx)
            gW2, gb2 = h.T @ g, g.sum(0)
            gh = (g @ W2.T) * (h > 0)
            gW1, gb1 = X[idx].T @ gh, gh.sum(0)
            W1 -= 0.2 * gW1
            b1 -= 0.2 * gb1
            W2 -= 0.2 * gW2
            b2 -= 0.2 * gb2
    return [W1, b1, W2, b2]


class Agent(NumPyClient):
    def __init__(self, X: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.X, self.y, self.seed = X, y, seed

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        rnd = int(config.get("round", 0))
        return train(parameters, self.X, self.y, self.seed * 1000 + rnd), len(self.y), {}


def client_fn(context: Context):  # type: ignore[no-untyped-def]
    with np.load(str(context.node_config["data"])) as npz:
        X, y = npz["X"].astype(np.float32), npz["y"].astype(np.int64)
    return Agent(X, y, int(context.node_config["partition-id"])).to_client()


app = ClientApp(client_fn=client_fn)
