"""What trust costs: round overhead, agent memory and bytes with sealed, signed and unsigned deltas.

Runs the real swarm (broker, gateway and eight agent processes) on the standard workload
(shared/WORKLOAD.md, int8 + error feedback, as the demo) once per security mode, the modes
interleaved over ``--repeats`` so that a noisy machine hurts them alike:

- ``none``: envelopes neither signed nor encrypted (a baseline only; the ledger still signs);
- ``signed``: Ed25519 over every envelope, verified by every receiver;
- ``sealed``: signed, and AES-256-GCM under the round's key epoch (the default).

Per mode: round overhead (round_open to model_final minus the slowest agent's training, rounds
2..N), round time, agent peak RSS, delta envelope bytes per agent per round, final accuracy,
cold start; and ratios to ``none``. Then, in this process, the cost per envelope of framing +
signing + sealing and of decoding + verifying + opening, for the standard model and a 100k one.
Writes ``benchmarks/results/security.json``.

    .venv/bin/python benchmarks/bench_security.py [--repeats 2] [--rounds 20]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import tempfile
import timeit
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.site.demo import RunConfig, run_swarm
from edge_swarm.site.report import print_table, write_json
from edge_swarm.swarm.codec import (
    FLAG_SEALED,
    EnvelopeHeader,
    decode_delta,
    decode_envelope,
    encode_envelope,
    open_envelope,
)
from edge_swarm.swarm.quantize import CodecSpec, encode
from ledger_lite import SigningKey

RESULTS = Path(__file__).parent / "results"
MODES = ("none", "signed", "sealed")


def one_run(mode: str, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"security-{mode}-") as tmp:
        res = run_swarm(RunConfig(workdir=Path(tmp), rounds=rounds, security=mode))
    later = [r for r in res.rounds if r.round > 1 and r.included]
    n = res.config.n_agents
    rss = list(res.peak_rss_kb.values())
    agents = [res.peak_rss_kb[a] for a in res.layout.agent_configs if a in res.peak_rss_kb]
    return {
        "mode": mode,
        "accuracy": res.final_accuracy,
        "overhead_s_mean": statistics.fmean(r.overhead_s for r in later),
        "overhead_s_median": statistics.median(r.overhead_s for r in later),
        "round_s_mean": statistics.fmean(r.seconds for r in later),
        "agent_peak_rss_kb_max": max(agents or rss),
        "agent_peak_rss_kb_mean": statistics.fmean(agents or rss),
        "envelope_bytes_per_agent": statistics.fmean(r.envelope_bytes / n for r in later),
        "cold_start_s": res.cold_start_s,
    }


def per_envelope(n_params: int, mode: str, number: int) -> tuple[float, float]:
    """Microseconds to make one envelope (quantize excluded) and to take one in."""
    rng = np.random.default_rng(0)
    body = encode(rng.normal(0, 0.01, n_params).astype(np.float32), CodecSpec("int8"))
    key, data_key = SigningKey.generate(), os.urandom(32)
    sealed = mode == "sealed"
    header = EnvelopeHeader(
        swarm="bench",
        round=3,
        node="agent-01",
        base_hash=hashlib.sha256(b"base").hexdigest(),
        codec=CodecSpec("int8").codec_id,
        n_params=n_params,
        n_samples=180,
        flags=FLAG_SEALED if sealed else 0,
        epoch=0 if sealed else None,
    )
    sign = None if mode == "none" else key.sign

    def make() -> bytes:
        return encode_envelope(header, body, sign, data_key=data_key if sealed else None)

    frame = make()
    public = key.public_hex

    def take() -> None:
        env = decode_envelope(frame)
        if mode != "none" and not env.verify(public):
            raise AssertionError("signature")
        plain = open_envelope(env, data_key) if sealed else None
        decode_delta(env, n_params, plain)

    return (
        1e6 * min(timeit.repeat(make, number=number, repeat=5)) / number,
        1e6 * min(timeit.repeat(take, number=number, repeat=5)) / number,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "security.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for i in range(args.repeats):
        order = MODES[i % len(MODES) :] + MODES[: i % len(MODES)]  # rotate who goes first
        for mode in order:
            runs[mode].append(one_run(mode, args.rounds))
            r = runs[mode][-1]
            print(
                f"  {mode:6s} run {i + 1}: accuracy {r['accuracy']:.3f}, overhead "
                f"{r['overhead_s_mean']:.3f} s, "
                f"agent RSS {r['agent_peak_rss_kb_max'] / 1024:.1f} MiB",
                flush=True,
            )
    keys = [k for k in runs["none"][0] if k != "mode"]
    summary = {m: {k: statistics.fmean(r[k] for r in runs[m]) for k in keys} for m in MODES}
    base = summary["none"]
    print_table(
        f"security modes, standard workload, {args.rounds} rounds, mean of {args.repeats} runs",
        [
            "mode",
            "overhead s (mean)",
            "× none",
            "round s",
            "agent RSS MiB",
            "× none",
            "envelope B/agent",
            "accuracy",
            "cold start s",
        ],
        [
            [
                m,
                s["overhead_s_mean"],
                s["overhead_s_mean"] / base["overhead_s_mean"],
                s["round_s_mean"],
                s["agent_peak_rss_kb_max"] / 1024,
                s["agent_peak_rss_kb_max"] / base["agent_peak_rss_kb_max"],
                round(s["envelope_bytes_per_agent"]),
                s["accuracy"],
                s["cold_start_s"],
            ]
            for m, s in summary.items()
        ],
    )
    micro = []
    for n_params in (2410, 100_234):
        number = 200 if n_params < 10_000 else 20
        for mode in MODES:
            make_us, take_us = per_envelope(n_params, mode, number)
            micro.append(
                {"n_params": n_params, "mode": mode, "make_us": make_us, "take_us": take_us}
            )
    print_table(
        "per envelope, int8 body (µs; make = frame + sign + seal, take = decode + verify + open)",
        ["params", "mode", "make µs", "take µs"],
        [[r["n_params"], r["mode"], r["make_us"], r["take_us"]] for r in micro],
    )
    path = write_json(
        args.out,
        {
            "rounds": args.rounds,
            "repeats": args.repeats,
            "runs": runs,
            "summary": summary,
            "per_envelope": micro,
        },
    )
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
