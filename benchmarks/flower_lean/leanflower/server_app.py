"""The SuperLink's ServerApp: FedAvg over every SuperNode each round; it writes the wall
time at which each round starts and ends to the ``timeline`` file (bench_lean.py reads it)."""

from __future__ import annotations

import time

import numpy as np
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

SIZES = (64, 32, 10)


class Timed(FedAvg):
    def __init__(self, timeline: str, **kw):  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.timeline = timeline

    def _mark(self, what: str, rnd: int) -> None:
        with open(self.timeline, "a") as f:
            f.write(f"{time.time():.4f} {what} {rnd}\n")

    def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
        self._mark("open", server_round)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        out = super().aggregate_fit(server_round, results, failures)
        self._mark("final", server_round)
        return out


def server_fn(context: Context) -> ServerAppComponents:
    rng = np.random.default_rng(0)
    init = [
        rng.normal(0, 0.1, (64, 32)).astype(np.float32),
        np.zeros(32, np.float32),
        rng.normal(0, 0.1, (32, 10)).astype(np.float32),
        np.zeros(10, np.float32),
    ]
    strategy = Timed(
        str(context.run_config["timeline"]),
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=8,
        min_available_clients=8,
        initial_parameters=ndarrays_to_parameters(init),
        on_fit_config_fn=lambda rnd: {"round": rnd},
    )
    rounds = int(context.run_config["num-server-rounds"])
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))


app = ServerApp(server_fn=server_fn)
