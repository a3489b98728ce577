"""The swarm on the standard workload (shared/WORKLOAD.md) and on breast cancer, in one run.

Runs the real thing — a broker, a gateway process and eight agent processes — for each
workload, then the reference points on the same split and model (pooled data; each agent
alone), and prints per workload: accuracy side by side, round time and its coordination
overhead, cold start, bytes per agent per round and each agent's peak RSS. Writes
``benchmarks/results/swarm.json``.

    .venv/bin/python benchmarks/bench_swarm.py [--workloads digits breast_cancer]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_swarm.learn.train import LocalTraining
from edge_swarm.site.demo import RunConfig, model_spec, run_swarm
from edge_swarm.site.report import baselines, print_table, write_json
from edge_swarm.swarm.merge import MergeRule

RESULTS = Path(__file__).parent / "results"


# shared/WORKLOAD.md's third reference point, run through the real swarm: plain FedAvg,
# one local epoch of SGD lr 0.1, batch 32 (0.833 there after 20 rounds).
PLAIN_FEDAVG = {
    "local": LocalTraining(epochs=1, lr=0.1, batch_size=32),
    "merge": MergeRule("fedavg"),
}


def bench_workload(
    name: str, broker: str, rounds: int, label: str | None = None, **settings: Any
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        cfg = RunConfig(workdir=Path(tmp), workload=name, rounds=rounds, broker=broker)
        cfg = replace(cfg, **settings)
        res = run_swarm(cfg)
        n_classes = int(res.workload.y_train.max()) + 1
        spec = model_spec(res.workload.X_train.shape[1], n_classes, cfg.hidden)
        base = baselines(spec, res.workload, res.parts, cfg.seed)
    done = [r for r in res.rounds if r.included]
    overheads = [r.overhead_s for r in done]
    per_agent = {}
    for node, rows in sorted(res.bytes_per_agent_round.items()):
        later = [(o, i) for r, o, i in rows if r > 1]
        per_agent[node] = {
            "bytes_out_per_round": statistics.fmean(o for o, _ in later) if later else None,
            "bytes_in_per_round": statistics.fmean(i for _, i in later) if later else None,
            "peak_rss_kb": res.peak_rss_kb.get(node),
        }
    return {
        "workload": label or name,
        "agents": cfg.n_agents,
        "rounds": cfg.rounds,
        "local_training": cfg.local.to_dict(),
        "merge_rule": cfg.merge.to_dict(),
        "broker": broker,
        "swarm_accuracy": res.final_accuracy,
        "accuracy_per_round": [r.accuracy for r in res.rounds],
        "pooled_accuracy": base.pooled,
        "alone_accuracy": base.alone,
        "alone_mean": base.alone_mean,
        "alone_worst": base.alone_worst,
        "round_s_mean": statistics.fmean(r.seconds for r in done),
        "slowest_train_s_mean": statistics.fmean(r.slowest_train_s for r in done),
        "overhead_s_mean": statistics.fmean(overheads),
        "overhead_s_p50": statistics.median(overheads),
        "overhead_s_max": max(overheads),
        "cold_start_s": res.cold_start_s,
        "wall_s": res.wall_s,
        "envelope_bytes_per_round": statistics.fmean(r.envelope_bytes for r in done),
        "per_agent": per_agent,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=["digits", "breast_cancer"])
    ap.add_argument("--broker", default="embedded", choices=["embedded", "mosquitto"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "swarm.json")
    ap.add_argument(
        "--no-reference", action="store_true", help="skip the plain-FedAvg reference run"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for name in args.workloads:
        t0 = time.monotonic()
        print(
            f"running the swarm on {name} ({args.rounds} rounds, {args.broker} broker)...",
            flush=True,
        )
        results.append(bench_workload(name, args.broker, args.rounds))
        print(f"  done in {time.monotonic() - t0:.1f} s", flush=True)
    if not args.no_reference:
        print("running plain FedAvg (1 local epoch) on digits as the reference...", flush=True)
        label = "digits, plain FedAvg 1 epoch"
        results.append(bench_workload("digits", args.broker, args.rounds, label, **PLAIN_FEDAVG))

    print_table(
        "test accuracy: swarm vs pooled vs alone (same split, same model)",
        ["workload", "swarm", "pooled", "alone mean", "alone worst"],
        [
            [
                r["workload"],
                r["swarm_accuracy"],
                r["pooled_accuracy"],
                r["alone_mean"],
                r["alone_worst"],
            ]
            for r in results
        ],
    )
    print_table(
        "round timing (s): overhead = round_open→model_final minus the slowest training",
        [
            "workload",
            "round",
            "slowest train",
            "overhead mean",
            "overhead p50",
            "overhead max",
            "cold start",
        ],
        [
            [
                r["workload"],
                r["round_s_mean"],
                r["slowest_train_s_mean"],
                r["overhead_s_mean"],
                r["overhead_s_p50"],
                r["overhead_s_max"],
                r["cold_start_s"],
            ]
            for r in results
        ],
    )
    for r in results:
        print_table(
            f"{r['workload']}: per agent, per round on MQTT (mean of rounds 2..) and peak RSS",
            ["agent", "out KiB", "in KiB", "peak RSS MiB"],
            [
                [
                    n,
                    (a["bytes_out_per_round"] or 0) / 1024,
                    (a["bytes_in_per_round"] or 0) / 1024,
                    (a["peak_rss_kb"] or 0) / 1024,
                ]
                for n, a in r["per_agent"].items()
            ],
        )
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()}
    path = write_json(args.out, {"meta": meta, "results": results})
    print(f"\nJSON: {path}")
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    raise SystemExit(main())
