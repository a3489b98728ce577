"""Merkle proof speed and size over a 100k-entry ledger tree, on one core.

Builds a `ledger_lite.MerkleTree` over 100,000 synthetic entry hashes (32 random-looking
bytes each, as ``Entry.hash`` is) and reports: build time and per-append cost, the tree's
memory, and for ~2,000 random queries of each kind the time to generate a proof and to
verify it (median and p99, one call timed at a time), the proof's length in hashes and
bytes, and the size of the signed `ProofBundle` JSON a gateway would send. The query kinds:
inclusion against the whole tree, inclusion against a random earlier tree size,
consistency from a random old size to the whole tree, and between two random sizes. Ed25519
signing and checking of tree heads are timed apart (an agent checks one head per bundle).
Target (issue 4, must-show 4): generation and verification each under 1 ms; the check
uses p99. Writes ``benchmarks/results/ledger_proofs.json``.

    .venv/bin/python benchmarks/bench_ledger_proofs.py [--leaves 100000] [--queries 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import machine, pin_one_core

from ledger_lite import (
    MerkleTree,
    ProofBundle,
    SigningKey,
    check_inclusion,
    leaf_hash,
    sign_tree_head,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)

RESULTS = Path(__file__).parent / "results"
TARGET_US = 1000.0  # generation and verification, per proof, microseconds (p99)
SWARM, GATEWAY = "bench-swarm", "gw1"


def entry_hash(i: int) -> bytes:
    """A stand-in for the raw 32-byte hash of the entry at height i."""
    return hashlib.sha256(b"entry-%d" % i).digest()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def timed_us(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call in microseconds, and its result."""
    t0 = time.perf_counter_ns()
    out = fn()
    return (time.perf_counter_ns() - t0) / 1000, out


def bench_build(n: int, repeats: int) -> dict[str, Any]:
    leaves = [entry_hash(i) for i in range(n)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tree = MerkleTree(leaves)
        times.append(time.perf_counter() - t0)
    build_s = statistics.median(times)
    return {
        "leaves": n,
        "build_s": build_s,
        "append_us": build_s / n * 1e6,
        "tree_bytes": tree.nbytes,
        "tree": tree,
    }


def summarise(
    kind: str, gen: list[float], ver: list[float], lengths: list[int], bundle: list[int]
) -> dict[str, Any]:
    return {
        "kind": kind,
        "queries": len(gen),
        "gen_median_us": statistics.median(gen),
        "gen_p99_us": percentile(gen, 0.99),
        "gen_max_us": max(gen),
        "verify_median_us": statistics.median(ver),
        "verify_p99_us": percentile(ver, 0.99),
        "verify_max_us": max(ver),
        "hashes_mean": statistics.fmean(lengths),
        "hashes_max": max(lengths),
        "proof_bytes_max": 32 * max(lengths),
        "bundle_bytes_mean": statistics.fmean(bundle),
        "bundle_bytes_max": max(bundle),
    }


def bench_inclusion(
    tree: MerkleTree, key: SigningKey, rng: random.Random, q: int, whole: bool
) -> dict[str, Any]:
    gen, ver, lengths, bundle = [], [], [], []
    roots: dict[int, bytes] = {}
    for _ in range(q):
        n = tree.size if whole else rng.randint(1, tree.size)
        i = rng.randrange(n)
        r = roots.setdefault(n, tree.root(n))  # the verifier has it from a signed head
        t_gen, proof = timed_us(lambda i=i, n=n: tree.inclusion_proof(i, n))
        leaf = leaf_hash(entry_hash(i))
        t_ver, ok = timed_us(lambda: verify_inclusion(leaf, i, n, proof, r))  # noqa: B023
        if not ok:
            raise SystemExit(f"inclusion proof ({i}, {n}) does not verify")
        gen.append(t_gen)
        ver.append(t_ver)
        lengths.append(len(proof))
        if len(bundle) < 200:  # bundle size depends only on the proof length and ids
            head = sign_tree_head(key, SWARM, GATEWAY, n, r, 1_700_000_000_000)
            bundle.append(len(ProofBundle.for_inclusion(head, i, proof).encode()))
    kind = "inclusion, whole tree" if whole else "inclusion, random size"
    return summarise(kind, gen, ver, lengths, bundle)


def bench_consistency(
    tree: MerkleTree, key: SigningKey, rng: random.Random, q: int, whole: bool
) -> dict[str, Any]:
    gen, ver, lengths, bundle = [], [], [], []
    for _ in range(q):
        n = tree.size if whole else rng.randint(2, tree.size)
        m = rng.randint(1, n - 1)
        old, new = tree.root(m), tree.root(n)
        t_gen, proof = timed_us(lambda m=m, n=n: tree.consistency_proof(m, n))
        t_ver, ok = timed_us(lambda: verify_consistency(m, n, old, new, proof))  # noqa: B023
        if not ok:
            raise SystemExit(f"consistency proof ({m}, {n}) does not verify")
        gen.append(t_gen)
        ver.append(t_ver)
        lengths.append(len(proof))
        if len(bundle) < 200:
            head = sign_tree_head(key, SWARM, GATEWAY, n, new, 1_700_000_000_000)
            bundle.append(len(ProofBundle.for_consistency(head, m, proof).encode()))
    kind = "consistency, old -> whole" if whole else "consistency, random pair"
    return summarise(kind, gen, ver, lengths, bundle)


def bench_heads(tree: MerkleTree, key: SigningKey, rounds: int) -> dict[str, Any]:
    """Ed25519 cost around a proof: signing a head (gateway) and a full agent check."""
    sign, check, whole = [], [], []
    n = tree.size
    r = tree.root()
    for k in range(rounds):
        t, head = timed_us(lambda k=k: sign_tree_head(key, SWARM, GATEWAY, n, r, k))
        sign.append(t)
        t, _ = timed_us(lambda head=head: verify_tree_head(head, key.public_hex))
        check.append(t)
        i = (k * 7919) % n
        bundle = ProofBundle.for_inclusion(head, i, tree.inclusion_proof(i, n))
        wire = bundle.encode()
        t, ok = timed_us(
            lambda wire=wire, i=i: check_inclusion(
                ProofBundle.decode(wire), entry_hash(i), key.public_hex
            )
        )
        if not ok:
            raise SystemExit("check_inclusion failed")
        whole.append(t)
    return {
        "sign_head_median_us": statistics.median(sign),
        "verify_head_median_us": statistics.median(check),
        "decode_and_check_inclusion_median_us": statistics.median(whole),
    }


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A table on stdout: rich if installed, aligned plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(columns)]
        print(title)
        for r in [columns, *rows]:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for i, h in enumerate(columns):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 140).print(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leaves", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "ledger_proofs.json")
    args = ap.parse_args()
    cpu = pin_one_core()
    rng = random.Random(args.seed)
    key = SigningKey.from_seed(hashlib.sha256(b"bench gateway").digest())

    build = bench_build(args.leaves, repeats=3)
    tree: MerkleTree = build.pop("tree")
    rows = [
        bench_inclusion(tree, key, rng, args.queries, whole=True),
        bench_inclusion(tree, key, rng, args.queries, whole=False),
        bench_consistency(tree, key, rng, args.queries, whole=True),
        bench_consistency(tree, key, rng, args.queries, whole=False),
    ]
    heads = bench_heads(tree, key, rounds=200)

    print(
        f"tree of {build['leaves']:,} entry hashes: built in {build['build_s']:.3f} s "
        f"({build['append_us']:.2f} µs per append), {build['tree_bytes'] / 2**20:.1f} MiB "
        f"of hashes"
    )
    print_table(
        f"Merkle proofs, {args.queries:,} random queries each (one core; µs per proof)",
        ["query", "gen p50", "gen p99", "verify p50", "verify p99", "hashes", "bundle B"],
        [
            [
                r["kind"],
                f"{r['gen_median_us']:.1f}",
                f"{r['gen_p99_us']:.1f}",
                f"{r['verify_median_us']:.1f}",
                f"{r['verify_p99_us']:.1f}",
                f"{r['hashes_mean']:.1f} (max {r['hashes_max']})",
                f"{r['bundle_bytes_mean']:.0f} (max {r['bundle_bytes_max']})",
            ]
            for r in rows
        ],
    )
    print(
        f"tree head: sign {heads['sign_head_median_us']:.0f} µs, verify "
        f"{heads['verify_head_median_us']:.0f} µs; an agent's decode + check_inclusion "
        f"(signature and proof) {heads['decode_and_check_inclusion_median_us']:.0f} µs"
    )
    worst_gen = max(r["gen_p99_us"] for r in rows)
    worst_ver = max(r["verify_p99_us"] for r in rows)
    checks = {
        "worst_gen_p99_us": worst_gen,
        "worst_verify_p99_us": worst_ver,
        "gen_under_1ms": worst_gen < TARGET_US,
        "verify_under_1ms": worst_ver < TARGET_US,
    }
    print(
        f"worst p99: generation {worst_gen:.1f} µs, verification {worst_ver:.1f} µs "
        f"(target < {TARGET_US:.0f} µs each): "
        + ("met" if checks["gen_under_1ms"] and checks["verify_under_1ms"] else "NOT met")
    )
    results = {
        "machine": machine(cpu),
        "params": {"leaves": args.leaves, "queries": args.queries, "seed": args.seed},
        "targets": {"gen_p99_us_max": TARGET_US, "verify_p99_us_max": TARGET_US},
        "build": build,
        "proofs": rows,
        "tree_heads": heads,
        "checks": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0 if checks["gen_under_1ms"] and checks["verify_under_1ms"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
