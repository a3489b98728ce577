"""Merge time of every aggregator on one core: 8 and 64 deltas of 100,234 parameters.

Each row times one call of ``merge`` (stacking, the aggregator and the server step; the
median of several runs after a warm-up, in ms) with the fedavg server rule, plus one row for
mean + fedadam, one for clip + mean and three with nearest-neighbour mixing first. The
deltas are Laplace noise (scale 1e-3) around a shared direction, and the last ``f`` of them
are far outliers (100x the norm, random directions), so the robust rules do real work; ``f``
is the largest Bulyan allows, (n - 3) // 4. The "outlier share" column is the weight the
rule gave those outliers (clipping bounds their size, not their share, so clip + mean still
shows their sample share).
Writes ``benchmarks/results/merge.json``.

    .venv/bin/python benchmarks/bench_merge.py [--repeats 7]
"""

from __future__ import annotations

import os

# One core: set before numpy is imported, so no BLAS/OpenMP pool starts.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _machine import machine, pin_one_core  # noqa: E402

from edge_swarm.site.report import print_table, write_json  # noqa: E402
from edge_swarm.swarm.merge import (  # noqa: E402
    AGGREGATORS,
    Contribution,
    MergeResult,
    MergeRule,
    MergeState,
    merge,
)

RESULTS = Path(__file__).parent / "results"
N_PARAMS = 100_234  # the 100k-parameter model of bench_codecs.py
PEERS = (8, 64)


def deltas(n: int, f: int, seed: int = 0) -> list[Contribution]:
    """n - f honest deltas around one direction and f far outliers, nodes agent-00.."""
    rng = np.random.default_rng(seed)
    common = rng.laplace(0.0, 1e-3, N_PARAMS)
    out = []
    for i in range(n):
        if i < n - f:
            d = common + rng.laplace(0.0, 1e-3, N_PARAMS)
        else:
            d = rng.normal(0.0, 1.0, N_PARAMS)
            d *= 100 * np.sqrt(np.square(common).sum()) / np.sqrt(np.square(d).sum())
        out.append(Contribution(f"agent-{i:02d}", d.astype(np.float32), int(rng.integers(50, 500))))
    return out


def cases(f: int) -> list[tuple[str, MergeRule]]:
    rows = [(a, MergeRule("fedavg", aggregator=a, f=f)) for a in AGGREGATORS]
    rows.append(("mean + fedadam", MergeRule("fedadam", server_lr=0.01)))
    # Above the honest deltas' norm (about 0.63) and far below the outliers' (about 45): only
    # the outliers are scaled.
    rows.append(("clip + mean", MergeRule("fedavg", clip=1.0)))
    # Mixing costs the pairwise distances (as Krum) plus n means of n - f rows.
    for a in ("median", "trimmed_mean", "krum"):
        rows.append((f"nnm + {a}", MergeRule("fedavg", aggregator=a, f=f, mix="nnm")))
    return rows


def timed(fn: Any, repeats: int) -> tuple[float, float]:
    """Median and minimum wall time of ``fn()`` in ms over ``repeats`` runs, after a warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def bench(n: int, repeats: int) -> list[dict[str, Any]]:
    f = (n - 3) // 4
    contribs = deltas(n, f)
    outliers = {c.node for c in contribs[n - f :]}
    base = np.zeros(N_PARAMS, np.float32)
    rows = []
    for label, rule in cases(f):
        result: MergeResult = merge(rule, base, contribs, MergeState())
        med, best = timed(lambda rule=rule: merge(rule, base, contribs, MergeState()), repeats)
        rows.append(
            {
                "case": label,
                "rule": rule.to_dict(),
                "n_deltas": n,
                "n_params": N_PARAMS,
                "f": f,
                "median_ms": med,
                "min_ms": best,
                "outlier_share": sum(result.weights[o] for o in outliers),
                "clipped": len(result.clipped),
                "note": result.note,
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "merge.json")
    args = ap.parse_args()
    cpu = pin_one_core()
    results: dict[str, Any] = {
        "machine": machine(cpu),
        "repeats": args.repeats,
        "peers": {},
    }
    for n in PEERS:
        rows = bench(n, args.repeats)
        results["peers"][str(n)] = rows
        print_table(
            f"merge of {n} deltas x {N_PARAMS:,} params, f = {rows[0]['f']} outliers (one core)",
            ["case", "server", "median ms", "min ms", "outlier share", "clipped", "note"],
            [
                [
                    r["case"],
                    r["rule"]["name"],
                    f"{r['median_ms']:.1f}",
                    f"{r['min_ms']:.1f}",
                    f"{r['outlier_share']:.3f}",
                    r["clipped"],
                    r["note"] or "-",
                ]
                for r in rows
            ],
        )
    print(f"wrote {write_json(args.out, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
