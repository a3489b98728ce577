"""What privacy against fellow members costs (issue 18, must-show 3), mode by mode, in one run.

The standard workload (shared/WORKLOAD.md: digits, Dirichlet 0.5, `edge-swarm demo`'s
training and merge rule, int8 deltas up and int8 updates down) run by the real swarm —
Mosquitto, the site's 3 gateways as the merge committee (k = 0, so every agent is light:
the scale issue's ``gateways`` mode, bench_scale.py), agent processes — at 8 agents and at
100, once per privacy mode:

- ``plain``: no privacy (deltas sealed against outsiders only);
- ``secagg``: secure aggregation, updates clipped to L2 norm 1 (swarm/secagg.py), in the
  ring of 2^32 (4 bytes a parameter on the wire); ``secagg-24``: the same in a 24-bit ring
  (3 bytes), with a genesis sized for at most 128 agents;
- ``dp-eps{1,3,8}``: DP alone, with the noise multiplier that gives ε ≈ 1, 3 or 8 after
  20 rounds at δ = 1e-5 (every agent every round; dp-accounting's RDP accountant);
- ``secagg+dp-eps{1,3,8}``: both, each agent adding its share of the noise in the ring.

Per run: final and per-round test accuracy, median round time, what one agent pays per
round (bytes out + in on MQTT from its telemetry, rounds 2..R, median over agents; CPU
seconds of the agent processes per round, per agent), and ε after the last round as the
ledger records it. The ratio columns compare with ``plain`` of the same fleet size in the
same run (goal: secagg within 0.5 points and at most 2x the bytes).

Writes ``benchmarks/results/privacy.json``.

    .venv/bin/python benchmarks/bench_privacy.py [--agents 8 100] [--rounds 20]
        [--modes plain secagg dp-eps3 ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from _machine import machine
from bench_scale import Mode, default_per_process, run_one

from edge_swarm.io.broker import find_mosquitto
from edge_swarm.site.report import print_table, write_json
from edge_swarm.swarm import dp
from edge_swarm.swarm.privacy import PrivacyPolicy

RESULTS = Path(__file__).parent / "results"
DELTA = 1e-5
TARGETS = (1.0, 3.0, 8.0)  # ε after 20 rounds
GATEWAYS = (("merge_by", "committee"), ("committee_k", 0), ("n_gateways", 3))
RING24 = PrivacyPolicy("secagg", bits=24, max_agents=128, max_samples=1000)


def modes(rounds_for_eps: int = 20) -> dict[str, tuple[Mode, float | None]]:
    """name -> (the bench_scale Mode, its noise multiplier or None)."""
    out: dict[str, tuple[Mode, float | None]] = {
        "plain": (Mode("plain", "no privacy", GATEWAYS), None),
        "secagg": (
            Mode("secagg", "secure aggregation", (*GATEWAYS, ("privacy", PrivacyPolicy("secagg")))),
            None,
        ),
        "secagg-24": (
            Mode(
                "secagg-24",
                "secure aggregation in a 24-bit ring (3 bytes a parameter), for up to 128 "
                "agents, sample counts weighing up to 1,000",
                (*GATEWAYS, ("privacy", RING24)),
            ),
            None,
        ),
    }
    for eps in TARGETS:
        z = round(dp.noise_for_epsilon(eps, rounds_for_eps, DELTA), 4)
        for kind in ("dp", "secagg+dp"):
            name = f"{kind}-eps{eps:g}"
            pol = PrivacyPolicy(kind, noise_multiplier=z, delta=DELTA)
            out[name] = (Mode(name, f"{kind}, z = {z}", (*GATEWAYS, ("privacy", pol))), z)
    return out


def _row(run: dict[str, Any], plain: dict[str, Any] | None) -> list[Any]:
    out, inn = run.get("bytes_out_per_round"), run.get("bytes_in_per_round")
    kib = None if out is None or inn is None else (out + inn) / 1024
    pk = None
    if plain and plain.get("bytes_out_per_round") is not None:
        pk = (plain["bytes_out_per_round"] + plain["bytes_in_per_round"]) / 1024
    acc, pacc = run.get("final_accuracy"), (plain or {}).get("final_accuracy")
    cpu = run.get("agent_cpu_s_per_round")
    return [
        run["agents"],
        run["mode"],
        "-" if run.get("z") is None else run["z"],
        "-" if run.get("epsilon") is None else f"{run['epsilon']:.2f}",
        "failed" if not run["finished"] else f"{acc:.3f}" if acc is not None else "-",
        "-" if acc is None or pacc is None else f"{(acc - pacc) * 100:+.1f}",
        "-" if run.get("round_s_p50") is None else f"{run['round_s_p50']:.2f}",
        "-" if kib is None else f"{kib:.1f}",
        "-" if kib is None or not pk else f"{kib / pk:.2f}x",
        "-" if cpu is None else f"{cpu * 1000:.0f}",
    ]


def _epsilon(run: dict[str, Any], z: float | None, rounds: int) -> float | None:
    if z is None:
        return None
    n = run.get("included_per_round") or [run["agents"]] * rounds
    zs = [dp.effective_multiplier(z, run["agents"], k) for k in n if k]
    return dp.epsilon(zs, DELTA)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--agents", type=int, nargs="+", default=[8, 100])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--modes", nargs="+", default=None, help="default: all of them")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if find_mosquitto() is None:
        print("bench_privacy: needs Mosquitto (apt-get install mosquitto)")
        return 2
    table = modes()
    chosen = args.modes or list(table)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-privacy-") as tmp:
        for n in args.agents:
            for name in chosen:
                mode, z = table[name]
                print(f"-- {n} agents, {name} ({mode.about}) ...", flush=True)
                run = run_one(mode, n, default_per_process(n), args.rounds, args.timeout, Path(tmp))
                run["z"], run["epsilon"] = z, _epsilon(run, z, args.rounds)
                run.pop("per_agent", None)
                runs.append(run)
                print(f"   {_row(run, None)}", flush=True)
    cols = ["agents", "mode", "z", "ε (δ 1e-5)", "accuracy", "vs plain (points)",
            "round s", "KiB/agent/round", "vs plain", "agent CPU ms/round"]  # fmt: skip
    rows = []
    for r in runs:
        plain = next((p for p in runs if p["agents"] == r["agents"] and p["mode"] == "plain"), None)
        rows.append(_row(r, plain))
    print_table(f"privacy against fellow members, {args.rounds} rounds, 3 gateways", cols, rows)
    write_json(
        RESULTS / "privacy.json",
        {
            "machine": {**machine(None), "loadavg_at_start": os.getloadavg()},
            "rounds": args.rounds,
            "delta": DELTA,
            "runs": runs,
        },
    )
    print(f"wrote {RESULTS / 'privacy.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
