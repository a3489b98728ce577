"""The lean agent (issue 20): memory, start-up and the phases of a round, in one run.

Runs the standard workload as ``edge-swarm demo`` does (8 agents, committee with an int8
downlink, int8 deltas, sealed, embedded amqtt broker, 20 rounds) ``--runs`` times, and with
``--baseline REF`` the same number of times on another commit of this repository (its tree,
from ``git archive``, is what the gateway and agent processes import; broker, observer and
provisioning are this tree's), interleaved run by run so that both see the same load. For
each tree:

- agent peak RSS: each agent's VmHWM as its telemetry reports it (median and max);
- import of an agent (``edge-swarm agent``'s modules) in a fresh interpreter: RSS and seconds;
- site launch -> round 1: from starting the gateway and agent processes (the broker is
  already up, as on a site) to ``round_open`` of round 1 reaching a subscriber;
- launch -> first delta_commit: from the same start to each agent's first commit arriving on
  ``ledger/submit`` (median over agents);
- round overhead (``round_open`` -> ``model_final`` on the ledger's stamps minus the slowest
  agent's training, as the demo prints it) and its phases as a subscriber sees them: open ->
  last commit, last commit -> close, close -> final, final -> next open.

Figures are medians over runs (and rounds 2-20: round 1 includes the first key epoch and
the fleet's first contact). The issue's figures and targets are printed beside, and Flower
1.42 on the same workload: re-measured in this run with ``--flower BIN`` (a venv's bin with
flwr 1.42; ``_flower_run.py``: one run of ``--flower-rounds`` rounds, each a few seconds),
else the figures of an earlier session on this machine, marked so.

    .venv/bin/python benchmarks/bench_lean.py [--runs 5] [--baseline dbcfb55] \
        [--flower /tmp/flwr-venv/bin]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # _flower_run, whatever the working directory

from edge_swarm.cli.demo import parse_codec  # noqa: E402
from edge_swarm.io.mqtt import Message, MqttClient  # noqa: E402
from edge_swarm.site import demo as site_demo  # noqa: E402
from edge_swarm.site.launch import SwarmProcesses, Wrapper  # noqa: E402
from edge_swarm.site.report import print_table, write_json  # noqa: E402
from edge_swarm.swarm.messages import Submission  # noqa: E402
from edge_swarm.swarm.mirror import event_entry  # noqa: E402
from edge_swarm.swarm.topics import TopicError, Topics  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
N_AGENTS = 8
# The issue's figures (before) and targets; Flower 1.42 side by side, same workload, this
# machine, measured in an earlier session (used when --flower is not given).
ISSUE = {"agent_rss_mib": 67.6, "site_to_round1_s": (1.9, 2.1), "round_s": 0.25}
TARGET = {"agent_rss_mib": 45.0, "site_to_round1_s": 1.4, "round_overhead_s": 0.1}
FLOWER = {"supernode_rss_mib": 148.0, "site_to_round1_s": 14.2, "round_s": 10.5}
IMPORT_PROBE = """
import sys, time
t = time.perf_counter()
from edge_swarm.cli.main import build_parser
from edge_swarm.node.config import load_config
from edge_swarm.node.agent import Agent
dt = time.perf_counter() - t
rss = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')][0]
print(rss, dt, len(sys.modules))
"""


@dataclass
class Recorder:
    """Every message of interest with the monotonic time it reached us (paho's thread)."""

    topics: Topics
    seen: list[tuple[float, str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, msg: Message) -> None:
        now = time.monotonic()
        with self.lock:
            self.seen.append((now, msg.topic, msg.payload))

    def timeline(self) -> tuple[dict[tuple[str, int], list[float]], dict[str, float]]:
        """(kind, round) -> arrival times; agent -> its first commit's arrival."""
        times: dict[tuple[str, int], list[float]] = defaultdict(list)
        first_commit: dict[str, float] = {}
        for t, topic, payload in self.seen:
            try:
                kind = self.topics.parse(topic).kind
            except TopicError:
                continue
            if kind == "ledger_events":
                e = event_entry(payload)
                p = e.get("payload") if e else None
                if isinstance(p, dict) and isinstance(p.get("round"), int):
                    times[(str(e["kind"]), p["round"])].append(t)  # type: ignore[index]
            elif kind == "ledger_submit":
                try:
                    tx = Submission.decode(payload).tx
                except ValueError:
                    continue
                p = tx.get("payload", {})
                if tx.get("kind") == "delta_commit" and isinstance(p, dict):
                    times[("commit", int(p.get("round", 0)))].append(t)
                    first_commit.setdefault(str(tx.get("author")), t)
        return times, first_commit


def import_cost(pythonpath: str | None) -> tuple[float, float]:
    """(RSS MiB, seconds) of importing what ``edge-swarm agent`` imports, fresh interpreter."""
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    out = subprocess.run(
        [sys.executable, *(() if pythonpath else ("-OO",)), "-c", IMPORT_PROBE],  # as it runs
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]) / 1024, float(out[1])


def one_run(workdir: Path, pythonpath: str | None, rounds: int) -> dict[str, Any]:
    """One demo swarm; the processes import from ``pythonpath`` when given."""
    cfg = site_demo.RunConfig(
        workdir=workdir,
        merge_by="committee",
        committee_k=2,
        downlink=parse_codec("int8"),
        codec=parse_codec("int8"),
        rounds=rounds,
    )
    if pythonpath:
        nodes = ["gateway-1", *(f"agent-{i:02d}" for i in range(1, N_AGENTS + 1))]
        # The baseline's agents run as they did then: without -OO (site/runtime_env.py).
        env = (("PYTHONPATH", pythonpath), ("PYTHONOPTIMIZE", "0"))
        cfg = replace(cfg, wrappers=tuple((n, Wrapper(env=env)) for n in nodes))
    started: list[float] = []
    recorder: dict[str, Any] = {}
    original_start = SwarmProcesses.start

    def start(self: SwarmProcesses, *a: Any, **kw: Any) -> None:
        started.append(time.monotonic())  # the site's processes are launched from here
        original_start(self, *a, **kw)

    real_prepare = site_demo.prepare

    def prepare(c: Any, site: Any) -> Any:  # the broker is up: subscribe before any process
        rec = Recorder(Topics(c.swarm))
        client = MqttClient(
            client_id="bench-lean-recorder",
            host=site.config.host,
            port=site.config.port,
            on_message=rec.on_message,
        )
        client.start()
        if not client.wait_connected(15):
            raise RuntimeError("the recorder could not reach the broker")
        for topic in (rec.topics.ledger_events(), rec.topics.ledger_submit()):
            client.subscribe(topic, qos=1)
        recorder.update(rec=rec, client=client)
        return real_prepare(c, site)

    SwarmProcesses.start = start  # type: ignore[method-assign]
    site_demo.prepare = prepare  # type: ignore[assignment]
    try:
        res = site_demo.run_swarm(cfg)
    finally:
        SwarmProcesses.start = original_start  # type: ignore[method-assign]
        site_demo.prepare = real_prepare  # type: ignore[assignment]
        if "client" in recorder:
            recorder["client"].stop()
    return summarise(res, recorder["rec"], started[0])


def summarise(res: Any, rec: Recorder, t0: float) -> dict[str, Any]:
    times, first_commit = rec.timeline()
    phases: dict[str, list[float]] = defaultdict(list)
    for r in range(2, len(res.rounds) + 1):
        opened, closed = times.get(("round_open", r)), times.get(("round_close", r))
        final, commits = times.get(("model_final", r)), times.get(("commit", r))
        if not (opened and closed and final and commits):
            continue
        last_commit = max(c for c in commits if c <= closed[0]) if commits else opened[0]
        phases["open_to_last_commit"].append(last_commit - opened[0])
        phases["last_commit_to_close"].append(closed[0] - last_commit)
        phases["close_to_final"].append(final[0] - closed[0])
        nxt = times.get(("round_open", r + 1))
        if nxt:
            phases["final_to_next_open"].append(nxt[0] - final[0])
    later = [x for x in res.rounds if x.round >= 2]
    rss = [kb / 1024 for n, kb in res.peak_rss_kb.items() if n.startswith("agent-")]
    opened1 = times.get(("round_open", 1), [float("nan")])[0]
    return {
        "final_accuracy": res.final_accuracy,
        "final_model_hash": res.rounds[-1].model_hash,
        "agent_peak_rss_mib": {"median": statistics.median(rss), "max": max(rss)},
        "site_to_round1_s": opened1 - t0,
        "launch_to_first_commit_s": statistics.median(v - t0 for v in first_commit.values()),
        "round_overhead_s": statistics.median(x.overhead_s for x in later),
        "round_s": statistics.median(x.seconds for x in later),
        "slowest_train_s": statistics.median(x.slowest_train_s for x in later),
        "phases_s": {k: statistics.median(v) for k, v in phases.items()},
    }


def byte_compile(*trees: Path) -> None:
    """Compile both trees' modules, as a wheel install on a device does: a machine that sets
    PYTHONDONTWRITEBYTECODE would otherwise have every process compile them at each start."""
    dirs = [str(t / pkg) for t in trees for pkg in ("edge_swarm", "ledger_lite")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True)
    # and this tree's for -OO, as its agents run (site/runtime_env.py; `make` did the libraries)
    ours = [str(trees[0] / pkg) for pkg in ("edge_swarm", "ledger_lite")]
    subprocess.run([sys.executable, "-OO", "-m", "compileall", "-q", *ours], check=True)


def baseline_tree(ref: str, into: Path) -> Path:
    """The tree of commit ``ref`` of this repository, unpacked into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "edge_swarm", "ledger_lite"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def median_of(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in runs:
        v: Any = r
        for key in path:
            v = v[key]
        values.append(v)
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="swarms per tree (default 5)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--baseline", help="a commit to run side by side, e.g. dbcfb55")
    ap.add_argument("--out", type=Path, default=RESULTS / "lean.json")
    ap.add_argument("--flower", type=Path, help="bin directory of a venv with flwr 1.42")
    ap.add_argument("--flower-rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.load_before = os.getloadavg()  # other work on the machine: absolute times follow it
    trees: dict[str, str | None] = {"this tree": None}
    with tempfile.TemporaryDirectory(prefix="bench-lean-") as tmp:
        # `python -m` puts the working directory first on sys.path: from the repository it
        # would shadow a baseline tree given by PYTHONPATH.
        os.chdir(tmp)
        if args.baseline:
            trees = {f"baseline {args.baseline}": None, "this tree": None}
            trees[f"baseline {args.baseline}"] = str(baseline_tree(args.baseline, Path(tmp) / "b"))
        byte_compile(ROOT, *(Path(p) for p in trees.values() if p))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        imports: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for i in range(args.runs):
            for name, path in trees.items():
                imports[name].append(import_cost(path))
                r = one_run(Path(tmp) / f"run-{i}-{len(runs[name])}-{id(name)}", path, args.rounds)
                runs[name].append(r)
                print(f"run {i + 1} ({name}): {r}", flush=True)
        flower = None
        if args.flower is not None:
            from _flower_run import run_flower

            from edge_swarm.learn.data import WORKLOADS, write_partitions

            data = Path(tmp) / "flower-data"
            parts = write_partitions(WORKLOADS["digits"](), N_AGENTS, 0.5, 0, data, 5)
            flower = run_flower(args.flower, [p for p in parts if p.name.startswith("agent-")],
                                args.flower_rounds)  # fmt: skip
            print(f"Flower: {flower}", flush=True)
    report = report_of(runs, imports, args, flower)
    write_json(args.out, report)
    print(f"\nJSON: {args.out}")
    return 0


def report_of(
    runs: dict[str, list[dict[str, Any]]],
    imports: dict[str, list[tuple[float, float]]],
    args: argparse.Namespace,
    flower: dict[str, Any] | None,
) -> dict[str, Any]:
    fl: dict[str, Any] = {
        "rss": FLOWER["supernode_rss_mib"],
        "start": FLOWER["site_to_round1_s"],
        "round": FLOWER["round_s"],
        "label": "Flower 1.42 (earlier session)",
    }
    if flower is not None:
        fl = {
            "rss": f"{flower['supernode_peak_rss_mib']:.1f} / {flower['device_peak_rss_mib']:.1f}",
            "start": flower["site_to_round1_s"],
            "round": flower["round_s"],
            "label": "Flower 1.42, this run: SuperNode / device",
        }
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        summary[name] = {
            "agent_peak_rss_mib": median_of(rs, "agent_peak_rss_mib", "median"),
            "agent_peak_rss_mib_max": max(r["agent_peak_rss_mib"]["max"] for r in rs),
            "agent_import_rss_mib": statistics.median(m for m, _ in imports[name]),
            "agent_import_s": statistics.median(s for _, s in imports[name]),
            "site_to_round1_s": median_of(rs, "site_to_round1_s"),
            "launch_to_first_commit_s": median_of(rs, "launch_to_first_commit_s"),
            "round_overhead_s": median_of(rs, "round_overhead_s"),
            "round_s": median_of(rs, "round_s"),
            "slowest_train_s": median_of(rs, "slowest_train_s"),
            "final_accuracy": [r["final_accuracy"] for r in rs],
            "final_model_hash": sorted({r["final_model_hash"] for r in rs}),
            "phases_s": {k: median_of(rs, "phases_s", k) for k in rs[0]["phases_s"]},
        }
    cols = ["", *summary, "issue (before)", "target", fl["label"]]
    rows = [
        ["agent peak RSS, MiB (median of agents)"]
        + [s["agent_peak_rss_mib"] for s in summary.values()]
        + [ISSUE["agent_rss_mib"], TARGET["agent_rss_mib"], fl["rss"]],
        ["agent import: RSS MiB"]
        + [s["agent_import_rss_mib"] for s in summary.values()]
        + [54.0, "", ""],
        ["agent import: s"] + [s["agent_import_s"] for s in summary.values()] + [0.31, "", ""],
        ["site launch -> round 1 open, s"]
        + [s["site_to_round1_s"] for s in summary.values()]
        + ["1.9-2.1", TARGET["site_to_round1_s"], fl["start"]],
        ["launch -> first delta_commit, s"]
        + [s["launch_to_first_commit_s"] for s in summary.values()]
        + ["", "", ""],
        ["round time, s"]
        + [s["round_s"] for s in summary.values()]
        + [ISSUE["round_s"], "", fl["round"]],
        ["round overhead, s"]
        + [s["round_overhead_s"] for s in summary.values()]
        + ["", TARGET["round_overhead_s"], ""],
        ["slowest training, s"] + [s["slowest_train_s"] for s in summary.values()] + ["", "", ""],
    ]
    for phase in next(iter(summary.values()))["phases_s"]:
        rows.append(
            [f"  phase {phase.replace('_', ' ')}, s"]
            + [s["phases_s"].get(phase, float("nan")) for s in summary.values()]
            + ["", "", ""]
        )
    rows.append(["final accuracy"] + [s["final_accuracy"][0] for s in summary.values()] + [""] * 3)
    load = f"load average {args.load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    print_table(f"the lean agent: medians of {args.runs} runs per tree ({load})", cols, rows)
    return {
        "settings": {
            "workload": "digits, 8 agents, Dirichlet 0.5, MLP 64-32-10",
            "rounds": args.rounds,
            "runs": args.runs,
            "merge_by": "committee (k=2, 1 gateway), downlink int8",
            "codec": "int8",
            "security": "sealed",
            "broker": "embedded (amqtt)",
            "baseline": args.baseline,
            "load_average_before_after": [args.load_before[0], os.getloadavg()[0]],
        },
        "summary": summary,
        "runs": runs,
        "issue_figures": ISSUE,
        "targets": TARGET,
        "flower_1_42_earlier_session": FLOWER,
        "flower_1_42_this_run": flower,
    }


if __name__ == "__main__":
    sys.exit(main())
