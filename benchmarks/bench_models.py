"""On-device models: a head fine-tuned over a frozen backbone against full-model training, and
numpy / onnxruntime / TFLite side by side (inference latency, agent memory).

1. Accuracy. The digits train split is cut into a public 20% (the backbone is pretrained
   there, ``edge-swarm model pretrain``) and a private 80% split among 8 agents (Dirichlet
   0.5). The real swarm (processes, broker, ledger) trains, on the same private partitions,
   (a) the whole MLP 64-32-10 and (b) only a head 32-32-10 over the frozen backbone 64-64-32;
   with pooled training of each on all private data as references.
2. Memory. The head-over-backbone swarm once per engine the agents run the backbone with:
   agent peak RSS (VmHWM) from their telemetry.
3. Latency. The final models of (a) and (b), exported by the gateway, run by each engine on
   the test set: microseconds per call at batch 1 and batch 64 (median of repeats), in this
   one process, one after the other.

Writes ``benchmarks/results/models.json``.

    .venv/bin/python benchmarks/bench_models.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.learn.backbone import features, load_backbone, pretrain, write_backbone
from edge_swarm.learn.data import PUBLIC_FRACTION, public_private, standard_workload
from edge_swarm.learn.runtimes import available_engines, load_model
from edge_swarm.site.demo import RunConfig, RunResult, model_spec, run_swarm
from edge_swarm.site.report import baselines, print_table, write_json

RESULTS = Path(__file__).parent / "results"
ENGINES = ("numpy", "onnxruntime", "tflite")
EXT = {"numpy": ".npz", "onnxruntime": ".onnx", "tflite": ".tflite"}


def swarm(root: Path, name: str, rounds: int, **kw: Any) -> RunResult:
    t0 = time.monotonic()
    res = run_swarm(RunConfig(workdir=root / name, rounds=rounds, **kw))
    print(
        f"  {name}: accuracy {res.final_accuracy:.3f} ({time.monotonic() - t0:.0f} s)", flush=True
    )
    return res


def latency_us(model: Any, X: np.ndarray, batch: int, repeats: int = 200) -> float:
    """Median microseconds of one call on ``batch`` rows (rows cycle through ``X``)."""
    times = []
    for i in range(repeats):
        rows = X[(i * batch) % (len(X) - batch) :][:batch]
        t0 = time.perf_counter()
        model.predict_logits(rows)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "models.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"engines: {available_engines()}")
    workload = standard_workload()
    public, private = public_private(workload, PUBLIC_FRACTION, 0)
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        root = Path(tmp)
        layers, backbone_acc = pretrain(public)
        ref = write_backbone(layers, root / "backbone")
        print(
            f"backbone {ref.sizes} pretrained on {len(public.y_train)} public samples: "
            f"its own classifier {backbone_acc:.3f}"
        )
        # (a) the whole MLP on the private partitions: the same data the head sees.
        full = swarm(root, "full", args.rounds, backbone=None, private_only=True)
        runs = {
            e: swarm(root, f"head-{e}", args.rounds, backbone=root / "backbone", engine=e)
            for e in ENGINES
        }
        head = runs["numpy"]
        spec_full = model_spec(64, 10, (32,))
        spec_head = model_spec(ref.n_features, 10, (32,))
        bb = load_backbone(root / "backbone", ref, "numpy")
        pooled_full = baselines(spec_full, private, []).pooled
        pooled_head = baselines(spec_head, private, [], transform=lambda X: features(bb, X)).pooled
        acc_rows = [
            [
                "whole MLP 64-32-10",
                full.final_accuracy,
                pooled_full,
                spec_full.n_params,
                _bytes(full),
            ],
            [
                "head 32-32-10 over frozen 64-64-32",
                head.final_accuracy,
                pooled_head,
                spec_head.n_params,
                _bytes(head),
            ],
        ]
        mem = {
            e: {
                "agent_peak_rss_mib": max(
                    r.peak_rss_kb[a] for a in r.layout.agent_configs if a in r.peak_rss_kb
                )
                / 1024,
                "accuracy": r.final_accuracy,
            }
            for e, r in runs.items()
        }
        X = workload.X_test
        lat: dict[str, dict[str, dict[str, float]]] = {}
        for label, res in (("whole MLP", full), ("backbone + head", head)):
            exports = res.layout.ledger_path.parent / "exports"
            lat[label] = {}
            for e in ENGINES:
                model = load_model(exports / f"latest{EXT[e]}", engine=e, threads=1)
                lat[label][e] = {
                    "batch1_us": latency_us(model, X, 1),
                    "batch64_us": latency_us(model, X, 64),
                }
    print_table(
        f"digits, private 80% over 8 agents, {args.rounds} rounds: swarm vs pooled",
        [
            "model trained by the swarm",
            "swarm acc",
            "pooled acc",
            "trained params",
            "delta B/agent/round",
        ],
        acc_rows,
    )
    print_table(
        "agents running the backbone with each engine (head-over-backbone swarm)",
        ["engine", "agent peak RSS MiB", "× numpy", "swarm acc"],
        [
            [
                e,
                m["agent_peak_rss_mib"],
                m["agent_peak_rss_mib"] / mem["numpy"]["agent_peak_rss_mib"],
                m["accuracy"],
            ]
            for e, m in mem.items()
        ],
    )
    print_table(
        "inference latency per call, one thread (median µs)",
        ["model", "engine", "batch 1", "batch 64", "batch 64 per row"],
        [
            [label, e, v["batch1_us"], v["batch64_us"], v["batch64_us"] / 64]
            for label, d in lat.items()
            for e, v in d.items()
        ],
    )
    path = write_json(
        args.out,
        {
            "rounds": args.rounds,
            "backbone": {
                "sizes": list(ref.sizes),
                "pretrained_accuracy": backbone_acc,
                "public_samples": len(public.y_train),
            },
            "accuracy": [
                dict(zip(["model", "swarm", "pooled", "params", "delta_bytes"], r, strict=True))
                for r in acc_rows
            ],
            "memory": mem,
            "latency": lat,
        },
    )
    print(f"\nJSON: {path}")
    return 0


def _bytes(res: RunResult) -> float:
    later = [r for r in res.rounds if r.round > 1 and r.included]
    return statistics.fmean(r.envelope_bytes / res.config.n_agents for r in later)


if __name__ == "__main__":
    raise SystemExit(main())
