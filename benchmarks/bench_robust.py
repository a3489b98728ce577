"""Robust merging under poisoning: every rule × every attack, side by side with the clean run.

The standard workload (shared/WORKLOAD.md: digits, 8 agents, Dirichlet 0.5, MLP 64-32-10, 20
rounds, local SGD lr 0.2 batch 16 × 5 epochs), simulated in this process with the agents'
own code (``train_local``, ``merge``, ``learn.poison``): agents 7 and 8 poison every round
with each attack in turn, the others are honest. Every aggregator runs with the standard
server rule (FedAvgM, momentum 0.5) and f = 2 where it takes one (Bulyan needs n >= 4f + 3,
so f = 1 with 8 agents). Reports the final test accuracy of each (rule, attack), its change
against the same rule's clean run and against the plain mean's clean run, and how much
weight the poisoners got; then a real swarm (processes, broker, ledger, int8 deltas) for the
plain mean and Krum under sign flipping, as a check of the simulation. Writes
``benchmarks/results/robust.json``.

    .venv/bin/python benchmarks/bench_robust.py [--no-swarm]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_standard import ROUNDS, setup  # noqa: E402

from edge_swarm.learn.model import init_params  # noqa: E402
from edge_swarm.learn.poison import ATTACKS, Attack, poison_delta, poison_labels  # noqa: E402
from edge_swarm.learn.train import STANDARD_TRAINING, evaluate, train_local, training_seed  # noqa: E402
from edge_swarm.report import print_table, write_json  # noqa: E402
from edge_swarm.swarm.merge import Contribution, MergeRule, MergeState, merge  # noqa: E402

RESULTS = Path(__file__).parent / "results"
POISONERS = ("agent-07", "agent-08")
GOAL_POINTS = 3.0

RULES: dict[str, MergeRule] = {
    "mean": MergeRule("fedavgm", momentum=0.5),
    "clip+mean": MergeRule("fedavgm", momentum=0.5, clip=2.0),
    "median": MergeRule("fedavgm", momentum=0.5, aggregator="median"),
    "clip+median": MergeRule("fedavgm", momentum=0.5, aggregator="median", clip=2.0),
    "trimmed mean": MergeRule("fedavgm", momentum=0.5, aggregator="trimmed_mean", f=2),
    "clip+trimmed mean": MergeRule(
        "fedavgm", momentum=0.5, aggregator="trimmed_mean", f=2, clip=2.0
    ),
    "geometric median": MergeRule("fedavgm", momentum=0.5, aggregator="geomed"),
    "krum": MergeRule("fedavgm", momentum=0.5, aggregator="krum", f=2),
    "multi-krum": MergeRule("fedavgm", momentum=0.5, aggregator="multikrum", f=2),
    "bulyan": MergeRule("fedavgm", momentum=0.5, aggregator="bulyan", f=1),
}


def simulate(
    wl: Any, spec: Any, agents: list, rule: MergeRule, attack: Attack | None
) -> dict[str, Any]:
    params, state = init_params(spec, 0), MergeState()
    poison_weight = []
    for r in range(ROUNDS):
        contribs = []
        for i, (X, y) in enumerate(agents):
            node = f"agent-{i + 1:02d}"
            bad = attack is not None and node in POISONERS
            ys = poison_labels(attack, y, spec.n_outputs) if bad else y  # type: ignore[arg-type]
            seed = training_seed(0, r + 1, node)
            local, m = train_local(spec, params, X, ys, STANDARD_TRAINING, seed)
            delta = local - params
            if bad:
                delta = poison_delta(attack, delta, np.random.default_rng(seed + 2))  # type: ignore[arg-type]
            contribs.append(Contribution(node, delta.astype(np.float32), m["n_samples"]))
        result = merge(rule, params, contribs, state)
        params, state = result.params, result.state
        poison_weight.append(sum(result.weights.get(p, 0.0) for p in POISONERS))
    acc = evaluate(spec, params, wl.X_test, wl.y_test)["accuracy"]
    return {"accuracy": float(acc), "poisoner_weight": statistics.fmean(poison_weight)}


def real_swarm(rule: MergeRule, attack: Attack | None) -> float:
    from edge_swarm.demo import RunConfig, run_swarm

    attacks = tuple((p, attack.to_dict()) for p in POISONERS) if attack is not None else ()
    with tempfile.TemporaryDirectory(prefix="bench-robust-") as tmp:
        res = run_swarm(RunConfig(workdir=Path(tmp), merge=rule, attacks=attacks, min_peers=8))
    return res.final_accuracy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-swarm", action="store_true", help="skip the real-swarm check")
    ap.add_argument("--out", type=Path, default=RESULTS / "robust.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    wl, spec, agents = setup("digits")
    conditions: list[tuple[str, Attack | None]] = [("clean", None)] + [
        (a, Attack(a)) for a in ATTACKS
    ]
    table: dict[str, dict[str, dict[str, Any]]] = {}
    t0 = time.monotonic()
    for name, rule in RULES.items():
        table[name] = {}
        for label, attack in conditions:
            table[name][label] = simulate(wl, spec, agents, rule, attack)
        print(f"  {name}: done ({time.monotonic() - t0:.0f} s)", flush=True)
    clean_mean = table["mean"]["clean"]["accuracy"]
    rows = []
    verdicts: dict[str, bool] = {}
    for name, by in table.items():
        worst = min(by[a]["accuracy"] for a, _ in conditions[1:])
        holds = worst >= clean_mean - GOAL_POINTS / 100
        verdicts[name] = holds
        own = by["clean"]["accuracy"]
        rows.append(
            [name, own]
            + [by[a]["accuracy"] for a, _ in conditions[1:]]
            + [
                f"{100 * (worst - own):+.1f}",
                f"{100 * (worst - clean_mean):+.1f}",
                "yes" if holds else "no",
            ]
        )
    print_table(
        f"final test accuracy, standard workload, {ROUNDS} rounds, "
        f"{len(POISONERS)} of 8 agents poisoning",
        [
            "rule",
            "clean",
            *[a for a, _ in conditions[1:]],
            "worst vs own clean (pts)",
            "worst vs clean mean (pts)",
            f"within {GOAL_POINTS:g} pts of clean mean",
        ],
        rows,
    )
    print_table(
        "mean weight the two poisoners got per round (2/8 = 0.25 is an equal share)",
        ["rule", *[a for a, _ in conditions[1:]]],
        [
            [name] + [by[a]["poisoner_weight"] for a, _ in conditions[1:]]
            for name, by in table.items()
        ],
    )
    swarm: dict[str, float] = {}
    if not args.no_swarm:
        for name in ("mean", "krum"):
            for label, attack in (("clean", None), ("sign_flip", Attack("sign_flip"))):
                swarm[f"{name}/{label}"] = real_swarm(RULES[name], attack)
                print(f"  real swarm {name} {label}: {swarm[f'{name}/{label}']:.3f}", flush=True)
    path = write_json(
        args.out,
        {
            "rounds": ROUNDS,
            "poisoners": list(POISONERS),
            "rules": {n: r.to_dict() for n, r in RULES.items()},
            "simulation": table,
            "within_goal": verdicts,
            "clean_mean": clean_mean,
            "real_swarm": swarm,
        },
    )
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
