"""Time from an agent's start to joining the swarm: found by zeroconf against a static address.

On loopback, a broker (``edge-swarm broker``, advertising itself) and a gateway run a long
swarm with two agents. Late agents, enrolled at set-up but not started, are then started one
at a time, alternately with a config that names the broker (static) and with one that names
only the swarm id and genesis hash (discovery), and each is stopped once it has joined. For
each: seconds from process start to its first ``delta_commit`` on the ledger (it started,
found the broker, synced the ledger, adopted the current model and trained one round), and,
with discovery, to the moment its log says it found the broker. Medians side by side;
writes ``benchmarks/results/discovery.json``.

    .venv/bin/python benchmarks/bench_discovery.py [--runs 5]
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_swarm.io.broker import free_ports  # noqa: E402
from edge_swarm.node.config import BrokerConfig, DiscoveryConfig, dump_config, load_config  # noqa: E402
from edge_swarm.node.observer import SwarmObserver  # noqa: E402
from edge_swarm.site.launch import NodeProcess  # noqa: E402
from edge_swarm.site.report import print_table, write_json  # noqa: E402
from tests.lan_site import BrokerProcess, make_site  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FOUND_RE = re.compile(r"^(\d\d:\d\d:\d\d) INFO .*found the broker of swarm .* in ([0-9.]+) s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="late agents per mode (default 5)")
    ap.add_argument("--out", type=Path, default=RESULTS / "discovery.json")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (logs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        rows = run(Path(args.keep) if args.keep else Path(tmp), args.runs)
    summary = {}
    for mode in ("static", "discovery"):
        joins = [r["join_s"] for r in rows if r["mode"] == mode]
        summary[mode] = {
            "join_s_median": statistics.median(joins),
            "join_s_min": min(joins),
            "join_s_max": max(joins),
            "runs": len(joins),
        }
    found = [r["found_s"] for r in rows if r.get("found_s") is not None]
    if found:
        summary["discovery"]["found_broker_s_median"] = statistics.median(found)
    base = summary["static"]["join_s_median"]
    print_table(
        "agent start → first delta_commit on the ledger (loopback, median of runs)",
        ["config", "median s", "× static", "min s", "max s", "broker found after s (median)"],
        [
            [
                mode,
                s["join_s_median"],
                s["join_s_median"] / base,
                s["join_s_min"],
                s["join_s_max"],
                s.get("found_broker_s_median", ""),
            ]
            for mode, s in summary.items()
        ],
    )
    path = write_json(args.out, {"runs": rows, "summary": summary})
    print(f"\nJSON: {path}")
    return 0


def run(root: Path, runs: int) -> list[dict[str, Any]]:
    (port,) = free_ports(1)
    n_late = 2 * runs
    # The swarm runs with two agents; min_peers 2 lets rounds go on without the late ones.
    site = make_site(
        root,
        "bench",
        n_agents=2 + n_late,
        rounds=100_000,
        broker=BrokerConfig("127.0.0.1", port),
        min_peers=2,
        start_grace_s=2.0,
    )
    agents = sorted(site.layout.agent_configs)
    first, late = agents[:2], agents[2:]
    static_dir = root / "config-static"
    static_dir.mkdir()
    broker = BrokerProcess(
        "127.0.0.1", port, site.swarm, site.genesis, log_path=root / "broker.log"
    )
    procs: list[NodeProcess] = []
    obs = SwarmObserver(site.swarm, "127.0.0.1", port)
    rows: list[dict[str, Any]] = []
    try:
        broker.wait_ready()
        obs.start()
        gw = NodeProcess("gateway-1", site.layout.gateway_config, root / "logs" / "gateway-1.log")
        gw.start("gateway")
        procs.append(gw)
        for node in first:
            p = NodeProcess(node, site.layout.agent_configs[node], root / "logs" / f"{node}.log")
            p.start("agent")
            procs.append(p)
        if not obs.wait_for(lambda: obs.final_round() >= 3, timeout=120):
            raise RuntimeError("the swarm did not get going")
        for i, node in enumerate(late):
            mode = "static" if i % 2 == 0 else "discovery"
            config = site.layout.agent_configs[node]
            if mode == "static":
                cfg = load_config(config)
                cfg = replace(
                    cfg, broker=BrokerConfig("127.0.0.1", port), discovery=DiscoveryConfig()
                )
                config = static_dir / f"{node}.toml"
                config.write_text(dump_config(cfg))
            log_path = root / "logs" / f"{node}.log"
            p = NodeProcess(node, config, log_path)
            t0 = time.time()
            p.start("agent")
            joined = obs.wait_for(lambda node=node: _committed(obs, node), timeout=90)
            p.stop()
            if not joined:
                raise RuntimeError(f"{node} ({mode}) did not join within 90 s:\n{p.tail(20)}")
            ts = min(e.ts for e in obs.entries if e.kind == "delta_commit" and e.author == node)
            row: dict[str, Any] = {"node": node, "mode": mode, "join_s": ts / 1000 - t0}
            if mode == "discovery":
                row["found_s"] = _found_after(log_path)
            rows.append(row)
            print(f"  {node} ({mode}): joined after {row['join_s']:.2f} s", flush=True)
    finally:
        for p in procs:
            p.stop()
        obs.stop()
        broker.stop()
    return rows


def _committed(obs: SwarmObserver, node: str) -> bool:
    return any(e.kind == "delta_commit" and e.author == node for e in obs.entries)


def _found_after(log_path: Path) -> float | None:
    """Seconds the agent's presence spent looking for the broker, from its own log line."""
    for line in log_path.read_text().splitlines():
        m = FOUND_RE.match(line)
        if m:
            return float(m.group(2))
    return None


if __name__ == "__main__":
    raise SystemExit(main())
