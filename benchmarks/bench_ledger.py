"""Replicated ledger: throughput, commit latency, verification rate and memory in one run.

Three replica processes on loopback (``tests/replica_proc.py``, the same the tests kill),
each validating every entry in full (signature, enrolment, role, schema, linkage, replay)
and writing it to SQLite (WAL, synchronous=FULL) before acknowledging it.

1. saturation: N transactions, signed before timing, are written into the three replicas
   round robin all at once; appends/s = N / (first write -> last acknowledgement). Goal
   (issue 4): >= 2,000/s. The replicas' CPU time gives the cost per entry per replica.
2. latency: an open-loop stream at a fixed rate (below saturation) through all three;
   commit latency = submit -> durable acknowledgement, measured inside the replica that
   took the submission (p50/p99).
3. verification: `verify_file` of the resulting chain from genesis; goal >= 3,000 entries/s.
4. memory: each replica's RSS and peak RSS after the run.

Also measured, to explain the numbers: one core's Ed25519 verifications per second, which
bound what 3 replicas can validate on this machine's cores.

    .venv/bin/python benchmarks/bench_ledger.py [--n 10000] [--rate 400] [--seconds 10]

Writes ``benchmarks/results/ledger.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_swarm.site.report import print_table, write_json  # noqa: E402
from ledger_lite import SigningKey, Tx, make_genesis, make_tx  # noqa: E402
from ledger_lite.keys import verify  # noqa: E402
from ledger_lite.verify import verify_file  # noqa: E402
from tests.replica_proc import ReplicaProcess, free_ports, wait_until  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GOAL_APPENDS_PER_S = 2000.0
GOAL_VERIFY_PER_S = 3000.0
SWARM = "bench"
N_AGENTS = 16
T0 = 1_700_000_000_000


class Workload:
    """A genesis, N_AGENTS enrolled agents, and delta commits signed in advance."""

    def __init__(self) -> None:
        self.admin = SigningKey.from_seed(b"\x01" * 32)
        self.genesis = make_genesis(self.admin, "admin", SWARM, params={}, ts=T0)
        self.keys = {
            f"a{i:02d}": SigningKey.from_seed(bytes([100 + i]) * 32) for i in range(N_AGENTS)
        }
        self.ts = T0

    def _ts(self) -> int:
        self.ts += 1
        return self.ts

    def enrolls(self) -> list[Tx]:
        return [
            make_tx(
                self.admin,
                SWARM,
                "enroll",
                "admin",
                {"node": node, "role": "agent", "pubkey": key.public_hex, "expires_ms": None},
                self._ts(),
            )
            for node, key in self.keys.items()
        ]

    def commits(self, n: int) -> list[Tx]:
        out = []
        for i in range(n):
            node = f"a{i % N_AGENTS:02d}"
            payload = {
                "round": 1 + i // N_AGENTS,
                "node": node,
                "envelope_sha256": f"{i:064x}",
                "n_samples": 120,
                "metrics": {"accuracy": 0.91, "loss": 0.3},
            }
            out.append(make_tx(self.keys[node], SWARM, "delta_commit", node, payload, self._ts()))
        return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ed25519_verify_rate(seconds: float = 1.0) -> float:
    key = SigningKey.from_seed(b"\x07" * 32)
    msg = b"x" * 300
    sig = key.sign(msg)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        verify(key.public_hex, msg, sig)
        n += 1
    return n / (time.perf_counter() - t0)


def saturation(procs: list[ReplicaProcess], txs: list[Tx]) -> dict[str, Any]:
    cpu0 = [cpu_seconds(p.pid) for p in procs]
    t0 = time.perf_counter()
    ids = [p.submit(txs[k :: len(procs)], timeout=120) for k, p in enumerate(procs)]
    answers = [a for p, i in zip(procs, ids, strict=True) for a in p.wait(i, 300)]
    elapsed = time.perf_counter() - t0
    cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
    bad = [a for a in answers if not a["ok"]]
    assert not bad, bad[:3]
    ms = [a["ms"] for a in answers]
    return {
        "n": len(txs),
        "seconds": elapsed,
        "appends_per_s": len(txs) / elapsed,
        "queueing_latency_ms_p50": pct(ms, 0.5),
        "queueing_latency_ms_p99": pct(ms, 0.99),
        "cpu_s_per_replica": cpu,
        "cpu_ms_per_entry_per_replica": [1000 * c / len(txs) for c in cpu],
        "cores_busy": sum(cpu) / elapsed,
    }


def paced(procs: list[ReplicaProcess], txs: list[Tx], rate: float) -> dict[str, Any]:
    """Open loop: chunks of 5 at `rate` per second, round robin over the replicas."""
    chunk, sent = 5, []
    period = chunk / rate
    t0 = time.perf_counter()
    for k in range(0, len(txs), chunk):
        p = procs[(k // chunk) % len(procs)]
        sent.append((p, p.submit(txs[k : k + chunk], timeout=60)))
        pause = t0 + (k // chunk + 1) * period - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing the open-loop load, not waiting for a result
    answers = [a for p, ids in sent for a in p.wait(ids, 120)]
    assert all(a["ok"] for a in answers), [a for a in answers if not a["ok"]][:3]
    ms = [a["ms"] for a in answers]
    return {
        "rate_per_s": rate,
        "n": len(txs),
        "commit_latency_ms_p50": pct(ms, 0.5),
        "commit_latency_ms_p99": pct(ms, 0.99),
        "commit_latency_ms_mean": statistics.fmean(ms),
        "commit_latency_ms_max": max(ms),
    }


def at_tip(procs: list[ReplicaProcess], height: int) -> None:
    """Wait until every replica has applied up to `height`."""
    for p in procs:
        wait_until(lambda p=p: p.status()["height"] >= height, 60, "every replica at the tip")


def start_cluster(work: Workload, tmp: Path) -> list[ReplicaProcess]:
    gfile = tmp / "genesis.json"
    gfile.write_bytes(work.genesis.canonical())
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    procs = [
        ReplicaProcess(a, [b for b in addrs if b != a], tmp / f"r{i}.db", gfile)
        for i, a in enumerate(addrs)
    ]
    for p in procs:
        assert p.start().get("ready"), p.ready

    def leader_agreed() -> bool:
        leaders = {p.status()["leader"] for p in procs}
        return len(leaders) == 1 and None not in leaders

    wait_until(leader_agreed, 30, "a leader")
    return procs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="transactions in the saturation run")
    ap.add_argument("--rate", type=float, default=400.0, help="paced run, transactions/s")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the paced run")
    args = ap.parse_args()

    verify_rate = ed25519_verify_rate()
    work = Workload()
    t = time.perf_counter()
    sat_txs = work.commits(args.n)
    paced_txs = work.commits(int(args.rate * args.seconds))
    sign_rate = (len(sat_txs) + len(paced_txs)) / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as d:
        tmp = Path(d)
        procs = start_cluster(work, tmp)
        try:
            ids = procs[0].submit(work.enrolls())
            assert all(a["ok"] for a in procs[0].wait(ids, 60))
            sat = saturation(procs, sat_txs)
            at_tip(procs, N_AGENTS + len(sat_txs))  # the paced run starts on a settled cluster
            lat = paced(procs, paced_txs, args.rate)
            at_tip(procs, N_AGENTS + len(sat_txs) + len(paced_txs))
            tips = {p.status()["tip"] for p in procs}
            assert len(tips) == 1, tips
            memory = [{"replica": p.addr, **p.rss_kib()} for p in procs]
        finally:
            for p in procs:
                p.stop()
        t = time.perf_counter()
        report = verify_file(procs[0].path)
        verify_s = time.perf_counter() - t
        assert report.ok, report
    verification = {
        "entries": report.n_entries,
        "seconds": verify_s,
        "entries_per_s": report.n_entries / verify_s,
    }
    cores = os.cpu_count() or 1
    results = {
        "machine": {"cpus": cores, "python": platform.python_version(), "node": platform.node()},
        "ed25519_verify_per_s_one_core": verify_rate,
        "ed25519_sign_per_s_one_core": sign_rate,
        "bound_appends_per_s_signature_checks_only": cores * verify_rate / 3,
        "saturation": sat,
        "paced": lat,
        "verification": verification,
        "memory_kib": memory,
        "goals": {
            "appends_per_s": GOAL_APPENDS_PER_S,
            "appends_met": sat["appends_per_s"] >= GOAL_APPENDS_PER_S,
            "verify_entries_per_s": GOAL_VERIFY_PER_S,
            "verify_met": verification["entries_per_s"] >= GOAL_VERIFY_PER_S,
        },
    }
    print_table(
        "Replicated ledger, 3 replica processes on loopback, full validation on each",
        ["measure", "value", "goal"],
        [
            [
                "appends/s (saturation)",
                f"{sat['appends_per_s']:.0f}",
                f">= {GOAL_APPENDS_PER_S:.0f}",
            ],
            [
                "commit latency p50 / p99 (ms)",
                f"{lat['commit_latency_ms_p50']:.1f} / {lat['commit_latency_ms_p99']:.1f}"
                f" at {args.rate:.0f}/s",
                "",
            ],
            [
                "full-chain verification (entries/s)",
                f"{verification['entries_per_s']:.0f} ({verification['entries']} entries)",
                f">= {GOAL_VERIFY_PER_S:.0f}",
            ],
            [
                "CPU ms per entry per replica",
                " / ".join(f"{c:.2f}" for c in sat["cpu_ms_per_entry_per_replica"]),
                "",
            ],
            ["cores busy (saturation)", f"{sat['cores_busy']:.2f} of {cores}", ""],
            ["Ed25519 verify/s, one core", f"{verify_rate:.0f}", ""],
            [
                "bound from signature checks alone",
                f"{results['bound_appends_per_s_signature_checks_only']:.0f} appends/s",
                "",
            ],
            [
                "replica RSS / peak (MiB)",
                ", ".join(f"{m['VmRSS'] / 1024:.0f}/{m['VmHWM'] / 1024:.0f}" for m in memory),
                "",
            ],
        ],
    )
    print(f"wrote {write_json(RESULTS / 'ledger.json', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
