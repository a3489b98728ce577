"""Delta codecs on the standard workload: bytes on MQTT against accuracy, in one run.

For each codec, with and without error feedback, runs the real swarm (broker, gateway and
eight agent processes) on the standard workload (shared/WORKLOAD.md) and reports, per agent
per round: the delta envelope bytes it published and received (what the codec controls),
all its MQTT bytes both ways (envelopes plus ledger traffic, which no codec shrinks), the
ratio of each to float32, the final test accuracy and its change against float32. Then the
same table on a larger model (64-512-128-10, 100,234 parameters) where headers no longer
dominate. Writes ``benchmarks/results/codecs.json``.

    .venv/bin/python benchmarks/bench_codecs.py [--models small large] [--rounds 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_swarm.site.demo import RunConfig, run_swarm
from edge_swarm.site.report import print_table, write_json
from edge_swarm.swarm.quantize import CodecSpec

RESULTS = Path(__file__).parent / "results"
MODELS = {"small": (32,), "large": (512, 128)}

# (label, codec); each quantizer runs with and without error feedback.
CODECS: list[tuple[str, CodecSpec]] = [
    ("float16", CodecSpec("float16")),
    ("int8", CodecSpec("int8")),
    ("int4", CodecSpec("int4")),
    ("sign1", CodecSpec("sign1")),
    ("top10%+int8", CodecSpec("int8", topk=0.1)),
    ("top10%+int4", CodecSpec("int4", topk=0.1)),
]

# The targets: (label, error feedback) -> (minimum envelope ratio, minimum Δ points).
TARGETS = {
    ("int8", False): (3.9, -0.5),
    ("int8", True): (3.9, -0.5),
    ("top10%+int8", True): (15.0, -1.0),
    ("top10%+int4", True): (15.0, -1.0),
    ("sign1", True): (25.0, -2.0),
}


def one_run(model: str, label: str, codec: CodecSpec, ef: bool, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"codec-{label}-") as tmp:
        cfg = RunConfig(workdir=Path(tmp), rounds=rounds, hidden=MODELS[model])
        res = run_swarm(replace(cfg, codec=codec, error_feedback=ef))
    n = cfg.n_agents
    later = [r for r in res.rounds if r.round > 1 and r.included]
    env_out = statistics.fmean(r.envelope_bytes / n for r in later)
    env_in = statistics.fmean(r.envelope_bytes * (n - 1) / n for r in later)
    mqtt_out = statistics.fmean(
        o for rows in res.bytes_per_agent_round.values() for r, o, _ in rows if r > 1
    )
    mqtt_in = statistics.fmean(
        i for rows in res.bytes_per_agent_round.values() for r, _, i in rows if r > 1
    )
    return {
        "model": model,
        "codec": label,
        "codec_spec": codec.to_dict(),
        "error_feedback": ef,
        "accuracy": res.final_accuracy,
        "accuracy_per_round": [r.accuracy for r in res.rounds],
        "envelope_bytes_out": env_out,
        "envelope_bytes_in": env_in,
        "mqtt_bytes_out": mqtt_out,
        "mqtt_bytes_in": mqtt_in,
        "peak_rss_kb": max(res.peak_rss_kb.values()),
        "round_s": statistics.fmean(r.seconds for r in later),
    }


def bench_model(model: str, rounds: int) -> list[dict[str, Any]]:
    rows = [one_run(model, "float32", CodecSpec("float32"), False, rounds)]
    for label, codec in CODECS:
        for ef in (False, True):
            t0 = time.monotonic()
            rows.append(one_run(model, label, codec, ef, rounds))
            acc = rows[-1]["accuracy"]
            print(
                f"  {model} {label} ef={ef}: {acc:.3f} ({time.monotonic() - t0:.0f} s)", flush=True
            )
    base = rows[0]
    for r in rows:
        r["envelope_ratio"] = (base["envelope_bytes_out"] + base["envelope_bytes_in"]) / (
            r["envelope_bytes_out"] + r["envelope_bytes_in"]
        )
        r["mqtt_ratio"] = (base["mqtt_bytes_out"] + base["mqtt_bytes_in"]) / (
            r["mqtt_bytes_out"] + r["mqtt_bytes_in"]
        )
        r["delta_pts"] = 100 * (r["accuracy"] - base["accuracy"])
        target = TARGETS.get((r["codec"], r["error_feedback"]))
        if target is not None:
            r["target"] = {"ratio": target[0], "delta_pts": target[1]}
            r["meets_target"] = r["envelope_ratio"] >= target[0] and r["delta_pts"] >= target[1]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["small", "large"], choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "codecs.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    all_rows: list[dict[str, Any]] = []
    for model in args.models:
        print(f"model {model} (hidden {MODELS[model]}), {args.rounds} rounds:", flush=True)
        rows = bench_model(model, args.rounds)
        all_rows += rows
        print_table(
            f"{model} model: per agent per round; ratio = float32 bytes / these bytes (out+in)",
            [
                "codec",
                "EF",
                "env out B",
                "env in B",
                "env ratio",
                "MQTT out+in B",
                "MQTT ratio",
                "accuracy",
                "Δ pts",
                "target",
            ],
            [
                [
                    r["codec"],
                    "yes" if r["error_feedback"] else "no",
                    round(r["envelope_bytes_out"]),
                    round(r["envelope_bytes_in"]),
                    r["envelope_ratio"],
                    round(r["mqtt_bytes_out"] + r["mqtt_bytes_in"]),
                    r["mqtt_ratio"],
                    r["accuracy"],
                    f"{r['delta_pts']:+.1f}",
                    _target_cell(r),
                ]
                for r in rows
            ],
        )
    path = write_json(args.out, {"rounds": args.rounds, "results": all_rows})
    print(f"\nJSON: {path}")
    return 0


def _target_cell(r: dict[str, Any]) -> str:
    if "target" not in r:
        return ""
    t = r["target"]
    verdict = "met" if r["meets_target"] else "missed"
    return f"{verdict} (≥{t['ratio']:g}x, ≥{t['delta_pts']:+g})"


if __name__ == "__main__":
    raise SystemExit(main())
