"""In-process simulation of the standard workload (no network): settings search and references.

Runs shared/WORKLOAD.md: 8 agents (Dirichlet alpha 0.5, seed 0), MLP n_in-32-n_out from
``init_params(spec, 0)``, 20 rounds with every agent, at most 5 local epochs, using
`train_local` and `merge` exactly as agents do. Each agent's shuffling seed in round r is
``training_seed(trial, r, "agent-XX")``; several trials show how robust a setting is.

    python benchmarks/sim_standard.py                 # references + chosen settings
    python benchmarks/sim_standard.py --search        # also the settings grid (a few minutes)
    python benchmarks/sim_standard.py --robust        # also other splits, int8 deltas
    python benchmarks/sim_standard.py --workload breast_cancer
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from edge_swarm.learn.data import WORKLOADS, Workload, dirichlet_partition
from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.learn.train import (
    STANDARD_TRAINING,
    LocalTraining,
    evaluate,
    train_local,
    training_seed,
)
from edge_swarm.swarm.merge import STANDARD_MERGE, Contribution, MergeRule, MergeState, merge

N_AGENTS, ALPHA, PART_SEED, ROUNDS, HIDDEN = 8, 0.5, 0, 20, 32
CHOSEN_TRAINING, CHOSEN_MERGE = STANDARD_TRAINING, STANDARD_MERGE
FEDAVG_1 = (LocalTraining(epochs=1, lr=0.1, batch_size=32), MergeRule("fedavg"))


def setup(name: str) -> tuple[Workload, ModelSpec, list[tuple[np.ndarray, np.ndarray]]]:
    """The workload, its model spec and the 8 agents' local (X, y)."""
    wl = WORKLOADS[name]()
    spec = ModelSpec((wl.n_features, HIDDEN, wl.n_classes))
    parts = dirichlet_partition(wl.y_train, N_AGENTS, ALPHA, PART_SEED)
    return wl, spec, [(wl.X_train[i], wl.y_train[i]) for i in parts]


def int8(delta: np.ndarray) -> np.ndarray:
    """A crude stand-in for the wire codec: symmetric per-vector int8, no error feedback."""
    scale = float(np.abs(delta).max()) / 127 or 1.0
    return (np.round(delta / scale).clip(-127, 127) * scale).astype(np.float32)


def run_swarm(
    wl, spec, agents, cfg: LocalTraining, rule: MergeRule, trial: int = 0, quantize: bool = False
) -> list[float]:
    """Per-round test accuracy of a 20-round swarm (deltas int8-rounded if ``quantize``)."""
    params, state, curve = init_params(spec, 0), MergeState(), []
    for r in range(ROUNDS):
        contribs = []
        for i, (X, y) in enumerate(agents):
            node = f"agent-{i:02d}"
            local, m = train_local(spec, params, X, y, cfg, training_seed(trial, r, node))
            delta = int8(local - params) if quantize else local - params
            contribs.append(Contribution(node, delta, m["n_samples"]))
        result = merge(rule, params, contribs, state)
        params, state = result.params, result.state
        curve.append(evaluate(spec, params, wl.X_test, wl.y_test)["accuracy"])
    return curve


def run_alone(wl, spec, X, y, epochs: int = ROUNDS, trial: int = 0) -> float:
    """Test accuracy after ``epochs`` of SGD lr 0.1 batch 32 on (X, y) alone."""
    cfg = LocalTraining(epochs=epochs, lr=0.1, batch_size=32)
    params, _ = train_local(spec, init_params(spec, 0), X, y, cfg, trial)
    return evaluate(spec, params, wl.X_test, wl.y_test)["accuracy"]


def references(wl, spec, agents, trials: int) -> dict[str, float]:
    """Pooled, alone (mean/worst) and FedAvg-1-epoch reference points, mean over trials."""
    pooled = [run_alone(wl, spec, wl.X_train, wl.y_train, trial=t) for t in range(trials)]
    alone = np.array(
        [[run_alone(wl, spec, X, y, trial=t) for X, y in agents] for t in range(trials)]
    )
    fedavg = [run_swarm(wl, spec, agents, *FEDAVG_1, trial=t)[-1] for t in range(trials)]
    return {
        "pooled": float(np.mean(pooled)),
        "alone_mean": float(alone.mean()),
        "alone_worst": float(alone.min(axis=1).mean()),
        "fedavg_1epoch": float(np.mean(fedavg)),
        "fedavg_1epoch_min": float(np.min(fedavg)),
    }


def grid() -> list[tuple[LocalTraining, MergeRule]]:
    """Candidate settings: local SGD x merge rule (FedAvg, FedAvgM), optional FedProx."""
    out = []
    for epochs, lr, bs, mom, mu in itertools.product(
        (1, 2, 5), (0.05, 0.1, 0.2, 0.3), (16, 32), (0.0, 0.5), (0.0, 0.01)
    ):
        cfg = LocalTraining(epochs=epochs, lr=lr, batch_size=bs, momentum=mom, prox_mu=mu)
        out.append((cfg, MergeRule("fedavg")))
        for slr, smom in ((1.0, 0.5), (1.0, 0.9), (0.5, 0.9)):
            out.append((cfg, MergeRule("fedavgm", server_lr=slr, momentum=smom)))
    return out


def score(wl, spec, agents, cfg, rule, trials: int) -> dict[str, float]:
    """Final accuracy over trials: mean, min, and mean of the last 3 rounds."""
    curves = np.array([run_swarm(wl, spec, agents, cfg, rule, trial=t) for t in range(trials)])
    return {
        "mean": float(curves[:, -1].mean()),
        "min": float(curves[:, -1].min()),
        "last3": float(curves[:, -3:].mean()),
    }


def describe(cfg: LocalTraining, rule: MergeRule) -> str:
    return (
        f"ep={cfg.epochs} lr={cfg.lr} bs={cfg.batch_size} mom={cfg.momentum} "
        f"mu={cfg.prox_mu} | {rule.name} slr={rule.server_lr} smom={rule.momentum}"
    )


def search(wl, spec, agents, trials: int, top: int = 15) -> list[tuple[dict, str]]:
    rows = []
    t0 = time.perf_counter()
    for cfg, rule in grid():
        rows.append((score(wl, spec, agents, cfg, rule, trials), describe(cfg, rule)))
    rows.sort(key=lambda r: (r[0]["min"], r[0]["mean"]), reverse=True)
    print(f"searched {len(rows)} settings x {trials} trials in {time.perf_counter() - t0:.0f} s")
    for s, d in rows[:top]:
        print(f"  mean {s['mean']:.4f} min {s['min']:.4f} last3 {s['last3']:.4f}  {d}")
    return rows


def robustness(wl, spec, trials: int) -> None:
    """The chosen settings off the standard split: other partitions, alpha 0.1, int8 deltas."""
    cases = [(f"partition seed {s}", 0.5, s, False) for s in (1, 2, 3)]
    cases += [("alpha 0.1 (seed 0)", 0.1, 0, False), ("int8 deltas (standard)", 0.5, 0, True)]
    print("\nrobustness of the chosen settings (final accuracy, mean / worst trial):")
    for label, alpha, seed, quantize in cases:
        parts = dirichlet_partition(wl.y_train, N_AGENTS, alpha, seed)
        agents = [(wl.X_train[i], wl.y_train[i]) for i in parts if len(i)]
        finals = [
            run_swarm(wl, spec, agents, CHOSEN_TRAINING, CHOSEN_MERGE, t, quantize)[-1]
            for t in range(trials)
        ]
        print(f"  {label:<26}{np.mean(finals):.4f} / {np.min(finals):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="digits", choices=sorted(WORKLOADS))
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--search", action="store_true")
    ap.add_argument("--robust", action="store_true", help="also other splits and int8 deltas")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    wl, spec, agents = setup(args.workload)
    print(f"workload {args.workload}: agent sizes {[len(y) for _, y in agents]}")
    if args.search:
        search(wl, spec, agents, trials=max(2, args.trials // 2))
    refs = references(wl, spec, agents, args.trials)
    chosen = score(wl, spec, agents, CHOSEN_TRAINING, CHOSEN_MERGE, args.trials)
    curve = run_swarm(wl, spec, agents, CHOSEN_TRAINING, CHOSEN_MERGE, trial=0)
    print(f"\n{'setting':<34}{'test accuracy':>14}")
    print(f"{'swarm, chosen (mean of trials)':<34}{chosen['mean']:>14.4f}")
    print(f"{'swarm, chosen (worst trial)':<34}{chosen['min']:>14.4f}")
    print(f"{'pooled, 20 epochs':<34}{refs['pooled']:>14.4f}")
    print(f"{'alone, mean of agents':<34}{refs['alone_mean']:>14.4f}")
    print(f"{'alone, worst agent':<34}{refs['alone_worst']:>14.4f}")
    print(f"{'FedAvg, 1 local epoch':<34}{refs['fedavg_1epoch']:>14.4f}")
    print(f"\nchosen: {describe(CHOSEN_TRAINING, CHOSEN_MERGE)}  ({args.trials} trials)")
    print("trial-0 curve:", " ".join(f"{a:.3f}" for a in curve))
    if args.robust:
        robustness(wl, spec, args.trials)
    if args.json:
        out = {
            "workload": args.workload,
            "chosen": chosen,
            "references": refs,
            "training": CHOSEN_TRAINING.to_dict(),
            "merge": CHOSEN_MERGE.to_dict(),
            "curve_trial0": curve,
        }
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
