"""Codec speed, size, memory and error on one core, every codec side by side in one run.

For a 1M-parameter float32 vector (the issue's speed target) and a 2,410-parameter one (the
standard workload's model), each codec row reports: encoded bytes, ratio to float32, encode,
decode and encode+decode throughput in MB/s of float32 input (MB = 10**6 bytes; the median of
several runs), the peak extra memory of one round trip measured with tracemalloc (numpy's
allocations are traced) as a multiple of the vector's size, and the RMSE of the decoded vector.
Targets (issue 3): int8 encode+decode >= 200 MB/s at 1M, round-trip peak <= 3x the vector.
Writes ``benchmarks/results/codec.json``.

    .venv/bin/python benchmarks/bench_codec.py [--repeats 9]
"""

from __future__ import annotations

import os

# One core: set before numpy is imported, so no BLAS/OpenMP pool starts.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _machine import machine, pin_one_core  # noqa: E402

from edge_swarm.site.report import print_table, write_json  # noqa: E402
from edge_swarm.swarm.quantize import CodecSpec, decode, encode  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SIZES = (1_000_000, 2_410)
TARGET_MBPS = 200.0  # int8 encode+decode at 1M params, MB/s of float32 input
TARGET_PEAK = 3.0  # round-trip peak extra memory, multiples of the vector's size

CASES: list[tuple[str, CodecSpec]] = [
    ("float32", CodecSpec("float32")),
    ("float16", CodecSpec("float16")),
    ("int8", CodecSpec("int8")),
    ("int8 stochastic", CodecSpec("int8", rounding="stochastic")),
    ("int4", CodecSpec("int4")),
    ("int4 stochastic", CodecSpec("int4", rounding="stochastic")),
    ("sign1", CodecSpec("sign1")),
    ("top10% + float16", CodecSpec("float16", topk=0.1)),
    ("top10% + int8", CodecSpec("int8", topk=0.1)),
    ("top10% + int4", CodecSpec("int4", topk=0.1)),
    ("top1% + int8", CodecSpec("int8", topk=0.01)),
    ("top1% + sign1", CodecSpec("sign1", topk=0.01)),
]


def delta_vector(n: int, seed: int = 0) -> np.ndarray:
    """A delta-like vector: Laplace-distributed (heavier tails than a Gaussian), scale 1e-3."""
    return np.random.default_rng(seed).laplace(0.0, 1e-3, n).astype(np.float32)


def timed(fn: Any, repeats: int) -> float:
    """The median wall time of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_round_trip(x: np.ndarray, spec: CodecSpec) -> float:
    """Peak memory allocated during encode + decode, beyond what existed before, in bytes."""
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        body = encode(x, spec, rng)
        out = decode(body, spec.codec_id, spec.flags, x.size)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del body, out
    return float(peak)


def bench_case(x: np.ndarray, label: str, spec: CodecSpec, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    body = encode(x, spec, rng)
    out = decode(body, spec.codec_id, spec.flags, x.size)
    t_enc = timed(lambda: encode(x, spec, rng), repeats)
    t_dec = timed(lambda: decode(body, spec.codec_id, spec.flags, x.size), repeats)
    mb = x.nbytes / 1e6
    return {
        "codec": label,
        "spec": spec.to_dict(),
        "n_params": x.size,
        "bytes": len(body),
        "ratio": x.nbytes / len(body),
        "encode_mbps": mb / t_enc,
        "decode_mbps": mb / t_dec,
        "round_trip_mbps": mb / (t_enc + t_dec),
        "peak_x": peak_round_trip(x, spec) / x.nbytes,
        "rmse": float(np.sqrt(np.mean((x.astype(np.float64) - out) ** 2))),
        "rel_rmse": float(np.linalg.norm(x.astype(np.float64) - out) / np.linalg.norm(x)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=RESULTS / "codec.json")
    args = ap.parse_args()
    cpu = pin_one_core()
    results: dict[str, Any] = {
        "machine": machine(cpu),
        "targets": {"int8_round_trip_mbps_min": TARGET_MBPS, "peak_x_max": TARGET_PEAK},
        "sizes": {},
    }
    for n in SIZES:
        x = delta_vector(n)
        # Small vectors are dominated by per-call overhead: more repeats for a stable median.
        repeats = args.repeats if n >= 100_000 else args.repeats * 50
        rows = [bench_case(x, label, spec, repeats) for label, spec in CASES]
        results["sizes"][str(n)] = rows
        print_table(
            f"codecs on {n:,} float32 params (one core; MB/s of float32 input)",
            ["codec", "bytes", "ratio", "enc MB/s", "dec MB/s", "enc+dec MB/s", "peak xN", "RMSE"],
            [
                [
                    r["codec"],
                    r["bytes"],
                    f"{r['ratio']:.2f}",
                    f"{r['encode_mbps']:.0f}",
                    f"{r['decode_mbps']:.0f}",
                    f"{r['round_trip_mbps']:.0f}",
                    f"{r['peak_x']:.2f}",
                    f"{r['rmse']:.2e}",
                ]
                for r in rows
            ],
        )
    big = {r["codec"]: r for r in results["sizes"][str(SIZES[0])]}
    checks = {
        "int8_round_trip_mbps": big["int8"]["round_trip_mbps"],
        "int8_meets_speed": big["int8"]["round_trip_mbps"] >= TARGET_MBPS,
        "worst_peak_x": max(r["peak_x"] for r in big.values()),
        "all_meet_memory": all(r["peak_x"] <= TARGET_PEAK for r in big.values()),
    }
    results["checks"] = checks
    print(
        f"int8 encode+decode at {SIZES[0]:,}: {checks['int8_round_trip_mbps']:.0f} MB/s "
        f"(target >= {TARGET_MBPS:.0f}); worst round-trip peak {checks['worst_peak_x']:.2f}x "
        f"(target <= {TARGET_PEAK:.0f}x)"
    )
    print(f"wrote {write_json(args.out, results)}")
    return 0 if checks["int8_meets_speed"] and checks["all_meet_memory"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
