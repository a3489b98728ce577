"""What one device pays per round as the fleet grows (issue 16, must-show 1), mode by mode.

Runs the real swarm — Mosquitto, a gateway process and the agents, K to a process (K = 1
at N = 8, about N/10 above) — on the standard workload (shared/WORKLOAD.md; digits,
Dirichlet 0.5, RunConfig's training and merge, int8 deltas as `edge-swarm demo`; agents short of
``min_samples`` topped up) for a few rounds at each fleet size, once per merge mode, side by
side in one invocation. Two modes: ``all``, every agent receives, opens and
merges every peer's delta; ``committee``, the gateway and 2 agents drawn per round merge
and the others adopt the final model (docs/COMMITTEE.md). ``all`` runs up to 100 agents.

Per run, what one device pays (median over agents): bytes out and in on MQTT per round
(from each agent's telemetry, rounds 2..R), peak RSS (telemetry; with K > 1 it is the shared
process's); and what the site pays: round time (round_open to model_final) and its overhead
(minus the slowest agent's training, as bench_swarm.py), gateway and broker CPU seconds per
round (/proc/<pid>/stat, sampled every 50 ms), broker deliveries per round (Mosquitto's
``$SYS/broker/publish/messages/sent``); rounds completed, agents merged per round (lowest),
final test accuracy. Per mode: how per-agent bytes grow from the smallest fleet to the
largest (the committee's goal is at most 1.3×).

Counters sampled during a run (CPU; Mosquitto's ``$SYS``, which the bench lowers to a value
every 2 s) become per-round figures as ``_swarm_probe.py`` says; a deliveries figure whose
samples span under a round or reach into round 1 is marked rough. The count includes the
run's observer (one more subscriber to deltas, ledger events, checkpoints and telemetry).

Writes ``benchmarks/results/scale.json``.

    .venv/bin/python benchmarks/bench_scale.py [--agents 8 32 100 200] [--rounds 5]
        [--modes all committee] [--all-max 100]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from _machine import machine
from _swarm_probe import (
    CPU_SAMPLE_S,
    SYS_INTERVAL_S,
    SYS_PACKETS,
    SYS_RECEIVED,
    SYS_SENT,
    Probe,
    per_round,
    progress_marks,
    window,
)

from edge_swarm.io.broker import find_mosquitto
from edge_swarm.site.demo import RunConfig, RunResult, run_swarm
from edge_swarm.site.report import print_table, write_json
from edge_swarm.swarm.quantize import CodecSpec

RESULTS = Path(__file__).parent / "results"
DEFAULT_AGENTS = (8, 32, 100, 200)
DEFAULT_ROUNDS = 5
DEFAULT_TIMEOUT_S = 600.0  # per run: RunConfig.timeout_s, the wait for its last round
DEFAULT_DELTAS = CodecSpec("int8")  # `edge-swarm demo`'s default, and the issue's figures
GOAL_RATIO = 1.3  # issue 16: per-agent bytes at the largest fleet / at N = 8, committee mode

# --------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class Mode:
    """A way of merging a round: the ``RunConfig`` fields (hence genesis settings) it sets."""

    name: str
    about: str
    settings: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        known = {f.name for f in fields(RunConfig)}
        unknown = [k for k, _ in self.settings if k not in known]
        if unknown:
            raise ValueError(f"mode {self.name}: RunConfig has no {', '.join(unknown)}")

    def config(self, base: RunConfig) -> RunConfig:
        return replace(base, **dict(self.settings))


MODES = {
    m.name: m
    for m in (
        Mode("all", "merge_by = all: every agent receives, opens and merges every peer's delta"),
        Mode(
            "committee",
            "merge_by = committee, k = 2: the gateway and 2 agents drawn per round merge; the "
            "others never receive a peer's delta and adopt the final model (docs/COMMITTEE.md)",
            (("merge_by", "committee"), ("committee_k", 2)),
        ),
        Mode(
            "compact",
            "committee as above with compact codecs: int4 top-10% deltas up, int8 top-10% "
            "updates down (both with error feedback)",
            (
                ("merge_by", "committee"),
                ("committee_k", 2),
                ("codec", CodecSpec("int4", topk=0.1)),
                ("downlink", CodecSpec("int8", topk=0.1)),
            ),
        ),
        Mode(
            "gateways",
            "merge_by = committee of the site's 3 gateways, k = 0 (a majority of them must "
            "agree; the demo's default with 3 gateways): every agent is light",
            (("merge_by", "committee"), ("committee_k", 0), ("n_gateways", 3)),
        ),
        Mode(
            "gateways-compact",
            "the 3 gateways' committee as above with compact codecs: int4 top-10% deltas up, "
            "int8 top-10% updates down",
            (
                ("merge_by", "committee"),
                ("committee_k", 0),
                ("n_gateways", 3),
                ("codec", CodecSpec("int4", topk=0.1)),
                ("downlink", CodecSpec("int8", topk=0.1)),
            ),
        ),
    )
}
ALL_MAX_AGENTS = 100  # every agent merging every delta: above this, rounds take minutes


def default_per_process(n_agents: int) -> int:
    """K = 1 (a process per agent, as on a site) up to 8 agents, about N/10 above."""
    return 1 if n_agents <= 8 else max(1, round(n_agents / 10))


# --------------------------------------------------------------------------- figures


def agent_bytes(rows: list[tuple[int, int, int]], last: int) -> tuple[float, float] | None:
    """Bytes out and in per round over rounds 2..``last`` from an agent's telemetry rows
    (round, bytes since the previous report): from its last report of round 1 to its last
    of round ``last``, whatever periodic reports fell between. None without both ends."""
    start = [i for i, (r, _, _) in enumerate(rows) if r <= 1]
    end = [i for i, (r, _, _) in enumerate(rows) if r == last]
    if not start or not end or end[-1] <= start[-1]:
        return None
    span = rows[start[-1] + 1 : end[-1] + 1]
    return sum(o for _, o, _ in span) / (last - 1), sum(i for _, _, i in span) / (last - 1)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _mean(values: Iterable[float]) -> float | None:
    present = list(values)
    return statistics.fmean(present) if present else None


def device_figures(res: RunResult, probe: Probe, last: int) -> dict[str, Any]:
    """What one device pays: bytes and memory, median over agents."""
    agents = [n for proc in probe.processes for n in proc] or sorted(res.bytes_per_agent_round)
    per = {n: agent_bytes(res.bytes_per_agent_round.get(n, []), last) for n in agents}
    rss = res.peak_rss_kb
    # Committee mode: agents never drawn in the run (light throughout) and the others.
    drawn = {
        m
        for e in res.events
        if e.kind == "model_final" and e.payload["round"] <= last
        for m in e.payload.get("committee", [])
    }
    light = [per[n] for n in agents if n not in drawn and per[n]]
    members = [per[n] for n in agents if n in drawn and per[n]]
    return {
        "bytes_out_per_round": _median(b[0] if b else None for b in per.values()),
        "bytes_in_per_round": _median(b[1] if b else None for b in per.values()),
        "bytes_mean_per_round": _mean(b[0] + b[1] for b in per.values() if b),
        "light_agents": len(light) if drawn else None,
        "light_bytes_per_round": _median(b[0] + b[1] for b in light) if drawn else None,
        "member_bytes_per_round": _median(b[0] + b[1] for b in members) if drawn else None,
        "agents_with_bytes": sum(1 for b in per.values() if b),
        "peak_rss_mib": _median(rss[n] / 1024 if n in rss else None for n in agents),
        # each process once (a group's agents all report their process's peak)
        "agent_processes_rss_mib": sum(max(rss.get(n, 0) for n in proc) for proc in probe.processes)
        / 1024,
        "gateway_peak_rss_mib": probe.gateway_rss_kb / 1024 if probe.gateway_rss_kb else None,
        "per_agent": {
            n: {"bytes_out_in_per_round": b, "peak_rss_kb": rss.get(n)} for n, b in per.items()
        },
    }


def site_figures(res: RunResult, probe: Probe, last: int) -> dict[str, Any]:
    """What the site pays per round: time, CPU, broker deliveries."""
    done = [r for r in res.rounds if r.round <= last and r.model_hash]
    marks = progress_marks(res.rounds, last) if len(done) == last else []
    out: dict[str, Any] = {
        "rounds_completed": len(done),
        "round_s_p50": _median(r.seconds for r in done),
        "overhead_s_p50": _median(r.overhead_s for r in done),
        "round_marks_s": [round(m - marks[0], 3) for m in marks],
        "included_per_round": [len(r.included) for r in res.rounds if r.round <= last],
        "accuracy_per_round": [r.accuracy for r in res.rounds if r.round <= last],
        "final_accuracy": res.final_accuracy,
        "cold_start_s": res.cold_start_s,
        "wall_s": res.wall_s,
        "sys_note": probe.sys_note,
    }
    out["included_min"] = min(out["included_per_round"], default=0)
    for i, who in ((1, "gateway"), (2, "broker")):
        cpu = [(s[0], s[i]) for s in probe.cpu if s[i] is not None]
        pr = per_round(cpu, marks)
        out[f"{who}_cpu_s_per_round"], out[f"{who}_cpu_window"] = pr.value, window(pr, marks)
    out.update(broker_figures(probe, marks))
    agents = per_round(probe.agent_cpu, marks)  # summed over the processes: per agent
    n = sum(len(p) for p in probe.processes) or 1
    out["agent_cpu_s_per_round"] = None if agents.value is None else agents.value / n
    return out


def broker_figures(probe: Probe, marks: list[float]) -> dict[str, Any]:
    """Deliveries (and publishes taken in) per round from Mosquitto's $SYS counters."""
    source = SYS_SENT if probe.series(SYS_SENT) else SYS_PACKETS
    sent = per_round(probe.series(source), marks)
    own = probe.own_sys_messages(*sent.span) if sent.span is not None else 0
    received = per_round(probe.series(SYS_RECEIVED), marks).value
    ticks = sorted({round(t, 1) for t, _, _ in probe.sys})
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False) if b - a > 0.5]
    return {
        "deliveries_per_round": None if sent.value is None else sent.value - own / sent.covered,
        "deliveries_source": source,
        "deliveries_window": window(sent, marks),
        "publishes_in_per_round": received,
        "sys_period_s": _median(gaps),
    }


# --------------------------------------------------------------------------- one run


def run_one(mode: Mode, n: int, k: int, rounds: int, timeout_s: float, tmp: Path) -> dict[str, Any]:
    """One swarm run; a failure is returned with its reason, never raised."""
    workdir = tmp / f"{mode.name}-{n}"
    workdir.mkdir(mode=0o755)
    base = RunConfig(
        workdir=workdir,
        n_agents=n,
        agents_per_process=k,
        broker="mosquitto",
        rounds=rounds,
        timeout_s=timeout_s,
        codec=DEFAULT_DELTAS,
    )
    cfg = mode.config(base)
    head = {"mode": mode.name, "agents": n, "agents_per_process": k, "rounds": rounds}
    probe = Probe(rounds)
    t0 = time.monotonic()
    try:
        res = run_swarm(cfg, on_round=probe.on_round, during=probe.attach)
    except Exception as exc:  # noqa: BLE001 - reported, and the bench goes on
        text = str(exc) or type(exc).__name__
        obs = probe.observer
        return {
            **head,
            "finished": False,
            "error": text.splitlines()[0],
            "error_detail": text[:6000],  # the gateway's log tail comes first
            "rounds_completed": sum(
                1
                for r in (obs.rounds.values() if obs else [])
                if r.model_hash and r.round <= rounds
            ),
            "wall_s": time.monotonic() - t0,
        }
    finally:
        probe.close()
    return {
        **head,
        "finished": True,
        "error": None,
        **device_figures(res, probe, rounds),
        **site_figures(res, probe, rounds),
    }


# --------------------------------------------------------------------------- report


def growth(runs: list[dict[str, Any]], modes: list[str]) -> list[dict[str, Any]]:
    """Per mode: the largest fleet's figures over the smallest's."""
    out = []
    for mode in modes:
        ok = sorted(
            (r for r in runs if r["mode"] == mode and r["finished"] and r["bytes_in_per_round"]),
            key=lambda r: r["agents"],
        )
        if len(ok) < 2:
            continue
        lo, hi = ok[0], ok[-1]

        def ratio(key: str, lo: dict[str, Any] = lo, hi: dict[str, Any] = hi) -> float | None:
            a, b = lo.get(key), hi.get(key)
            return b / a if a and b is not None else None

        total = (hi["bytes_in_per_round"] + hi["bytes_out_per_round"]) / (
            lo["bytes_in_per_round"] + lo["bytes_out_per_round"]
        )
        out.append(
            {
                "mode": mode,
                "from_agents": lo["agents"],
                "to_agents": hi["agents"],
                "agent_bytes_ratio": total,
                "agent_bytes_in_ratio": ratio("bytes_in_per_round"),
                "agent_bytes_out_ratio": ratio("bytes_out_per_round"),
                "deliveries_ratio": ratio("deliveries_per_round"),
                "gateway_cpu_ratio": ratio("gateway_cpu_s_per_round"),
                "meets_goal": total <= GOAL_RATIO,
            }
        )
    return out


def _or_dash(v: Any, scale: float = 1.0) -> Any:
    return "-" if v is None else v / scale


def device_table(runs: list[dict[str, Any]]) -> None:
    def cells(r: dict[str, Any]) -> list[Any]:
        if not r["finished"]:
            return [f"failed: {r['error']}", "", "", "", "", "", "", ""]
        return [
            _or_dash(r["bytes_out_per_round"], 1024),
            _or_dash(r["bytes_in_per_round"], 1024),
            _or_dash(r.get("bytes_mean_per_round"), 1024),
            _or_dash(r.get("light_bytes_per_round"), 1024),
            _or_dash(r.get("member_bytes_per_round"), 1024),
            _or_dash(r["peak_rss_mib"]),
            r["included_min"],
            r["final_accuracy"],
        ]

    print_table(
        "what one device pays per round (bytes on MQTT, rounds 2..R: out and in, median over "
        "agents; out + in: mean over agents, median over light agents (never drawn onto a "
        "committee in the run) and over drawn ones; peak RSS: with K > 1, of the process "
        "the agent shares)",
        [
            "mode",
            "N",
            "K",
            "rounds",
            "out KiB",
            "in KiB",
            "mean KiB",
            "light KiB",
            "drawn KiB",
            "peak RSS MiB",
            "peers (min)",
            "acc.",
        ],
        [
            [
                r["mode"],
                r["agents"],
                r["agents_per_process"],
                f"{r['rounds_completed']}/{r['rounds']}",
            ]
            + cells(r)
            for r in runs
        ],
    )


def site_table(runs: list[dict[str, Any]]) -> None:
    ok = [r for r in runs if r["finished"]]
    if not ok:
        return
    print_table(
        "what the site pays per round (round time and overhead: median; CPU and deliveries: "
        "rounds 2..R)",
        ["mode", "N", "round s", "overhead s", "gateway CPU s", "broker CPU s", "deliveries"],
        [
            [
                r["mode"],
                r["agents"],
                r["round_s_p50"],
                r["overhead_s_p50"],
                _or_dash(r["gateway_cpu_s_per_round"]),
                _or_dash(r["broker_cpu_s_per_round"]),
                _deliveries(r),
            ]
            for r in ok
        ],
    )
    print(
        "deliveries: PUBLISH packets Mosquitto sent (the run's observer included); * = rough: "
        "its $SYS counter comes every 2 s, and these samples spanned under one round or "
        "reached into round 1"
    )
    slow = [f"{r['mode']}/{r['agents']}" for r in ok if (r["sys_period_s"] or 99) > 3]
    if slow:
        print(f"warning: Mosquitto kept a 10 s $SYS period in {', '.join(slow)} (see its log)")


def _deliveries(r: dict[str, Any]) -> Any:
    d = r["deliveries_per_round"]
    if d is None:
        return "-"
    w = r["deliveries_window"]
    rough = w["from_round"] == 1 or w["rounds_covered"] < 1
    return f"{d:,.0f}{' *' if rough else ''}"


def growth_table(grow: list[dict[str, Any]]) -> None:
    print_table(
        f"growth, largest fleet / smallest: per-agent bytes (in + out) per round (the "
        f"committee's goal: at most {GOAL_RATIO}×), and the site's load",
        ["mode", "fleet", "bytes", "in", "out", "deliveries", "gateway CPU", "≤ goal"],
        [
            [
                g["mode"],
                f"{g['from_agents']} → {g['to_agents']}",
                g["agent_bytes_ratio"],
                _or_dash(g["agent_bytes_in_ratio"]),
                _or_dash(g["agent_bytes_out_ratio"]),
                _or_dash(g["deliveries_ratio"]),
                _or_dash(g["gateway_cpu_ratio"]),
                "yes" if g["meets_goal"] else "no",
            ]
            for g in grow
        ],
    )
    for g in grow:
        if g["mode"] == "all":
            print(
                f"merge_by = all: per-agent bytes grow {g['agent_bytes_ratio']:.1f}× from "
                f"{g['from_agents']} to {g['to_agents']} agents, far above the {GOAL_RATIO}× "
                "goal: every agent takes in every peer's delta (bytes in ~ N, the broker's "
                "deliveries ~ N²). The goal is the committee's to meet."
            )


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=list(DEFAULT_AGENTS))
    ap.add_argument("--modes", nargs="+", default=["all", "committee"], choices=sorted(MODES))
    ap.add_argument(
        "--all-max",
        type=int,
        default=ALL_MAX_AGENTS,
        help=f"run merge_by = all only up to this many agents (default {ALL_MAX_AGENTS})",
    )
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    ap.add_argument(
        "--agents-per-process",
        type=int,
        nargs="+",
        help="K for every N, or one K per --agents value (default: 1 up to 8, about N/10 above)",
    )
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per run, seconds")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (per-round figures are over rounds 2..R)")
    ks = args.agents_per_process or [default_per_process(n) for n in args.agents]
    if len(ks) == 1:
        ks = ks * len(args.agents)
    if len(ks) != len(args.agents) or min(ks) < 1:
        ap.error("--agents-per-process: one K >= 1, or one per --agents value")
    logging.basicConfig(level=logging.WARNING)
    if find_mosquitto() is None:
        print("bench_scale: skipped, mosquitto is not installed (apt-get install mosquitto)")
        return 0

    load = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        Path(tmp).chmod(0o755)  # Mosquitto, dropped to its own user, reads its config in here
        for n, k in zip(args.agents, ks, strict=True):
            for name in args.modes:
                if name == "all" and n > args.all_max:
                    continue
                print(f"mode {name}, {n} agents, {k} per process...", flush=True)
                t0 = time.monotonic()
                runs.append(run_one(MODES[name], n, k, args.rounds, args.timeout, Path(tmp)))
                state = "done" if runs[-1]["finished"] else f"FAILED ({runs[-1]['error']})"
                print(f"  {state} in {time.monotonic() - t0:.1f} s", flush=True)
    grow = growth(runs, args.modes)
    device_table(runs)
    site_table(runs)
    if grow:
        growth_table(grow)
    write_results(args, ks, runs, grow, load)
    return 0


def write_results(
    args: argparse.Namespace,
    ks: list[int],
    runs: list[dict[str, Any]],
    grow: list[dict[str, Any]],
    load: tuple[float, float, float],
) -> None:
    base = RunConfig(workdir=Path("."))
    settings = {
        "agents": args.agents,
        "agents_per_process": ks,
        "rounds": args.rounds,
        "timeout_s": args.timeout,
        "workload": base.workload,
        "alpha": base.alpha,
        "min_samples": base.min_samples,
        "local_training": base.local.to_dict(),
        "merge_rule": base.merge.to_dict(),
        "codec": DEFAULT_DELTAS.to_dict(),
        "downlink": base.downlink.to_dict(),
        "security": base.security,
        "broker": "mosquitto",
        "sys_interval_s": SYS_INTERVAL_S,
        "cpu_sample_s": CPU_SAMPLE_S,
        "goal_ratio": GOAL_RATIO,
    }
    modes = {
        m: {
            "about": MODES[m].about,
            "settings": {
                k: v.to_dict() if isinstance(v, CodecSpec) else v for k, v in MODES[m].settings
            },
        }
        for m in args.modes
    }
    info = {**machine(None), "cpus": os.cpu_count(), "loadavg_at_start": load}
    out = {"machine": info, "settings": settings, "modes": modes, "runs": runs, "growth": grow}
    print(f"\nJSON: {write_json(args.out, out)}")


if __name__ == "__main__":
    raise SystemExit(main())
