"""``edge-swarm demo``: a whole swarm on this machine, printed round by round, then compared
with training alone and with pooling all the data, with a plot and a JSON summary."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.cli.audit import print_merge_summary, read_rounds
from edge_swarm.cli.main import CONTINUOUS_MAX_ROUNDS
from edge_swarm.cli.privacy_options import describe, privacy_policy
from edge_swarm.node.observer import RoundRecord, site_scores
from edge_swarm.site.demo import (
    DEFAULT_MERGE,
    RunConfig,
    RunResult,
    campaign_end,
    model_spec,
    run_swarm,
)
from edge_swarm.site.report import (
    Baselines,
    baselines,
    plot_accuracy,
    print_table,
    write_json,
)
from edge_swarm.swarm.merge import parse_merge
from edge_swarm.swarm.privacy import check_merge
from edge_swarm.swarm.quantize import CodecSpec

_SECURITY = {
    "sealed": "signed by each device's key and encrypted (AES-256-GCM, per-device wrapped keys)",
    "signed": "signed by each device's key, not encrypted",
    "none": "neither signed nor encrypted (a baseline for comparison; never on a real site)",
}


def parse_codec(text: str) -> CodecSpec:
    """``int8``, ``sign1``, ``int4+top10`` (top 10% of the entries) → a CodecSpec."""
    name, _, top = text.partition("+")
    if not top:
        return CodecSpec(name)
    if not top.startswith("top"):
        raise ValueError("the part after '+' must be topN, e.g. top10")
    try:
        percent = float(top[3:])
    except ValueError:
        raise ValueError(f"{top!r}: N in topN must be a number of percent") from None
    return CodecSpec(name, topk=percent / 100)


def _attacks(args: argparse.Namespace) -> tuple[tuple[str, dict[str, Any]], ...] | None:
    """``--attack`` on the last ``--attackers`` agents; None (after saying why) if invalid."""
    if args.attack is None:
        return ()
    if not 1 <= args.attackers < args.agents:
        print(
            f"edge-swarm demo: --attackers must be between 1 and {args.agents - 1} "
            f"(--agents {args.agents}), got {args.attackers}",
            file=sys.stderr,
        )
        return None
    first = args.agents - args.attackers + 1
    return tuple((f"agent-{i:02d}", {"name": args.attack}) for i in range(first, args.agents + 1))


def _backbone(args: argparse.Namespace, workdir: Path) -> Path | None:
    """``--backbone DIR`` as given, or ``auto``: pretrain one on the public data now."""
    if args.backbone is None:
        return None
    if str(args.backbone) != "auto":
        return Path(args.backbone).resolve()
    from edge_swarm.learn.backbone import pretrain, write_backbone
    from edge_swarm.learn.data import PUBLIC_FRACTION, WORKLOADS, public_private

    public, _ = public_private(WORKLOADS[args.workload](), PUBLIC_FRACTION, 0)
    layers, accuracy = pretrain(public)
    out = workdir / "backbone"
    ref = write_backbone(layers, out)
    print(
        f"backbone {'-'.join(map(str, ref.sizes))} pretrained on {len(public.y_train)} public "
        f"samples (its own classifier: {accuracy:.3f} on the test set); files in {out}"
    )
    return out


def run_demo(args: argparse.Namespace) -> int:
    if args.agents_per_process < 1:
        print(
            "edge-swarm demo: --agents-per-process must be at least 1 (1: a process per "
            f"agent; K: K agents in each process), got {args.agents_per_process}",
            file=sys.stderr,
        )
        return 2
    if args.committee_k is None:
        args.committee_k = default_committee_k(args.gateways)
    if args.committee_k < 0:
        print(
            f"edge-swarm demo: --committee-k must be 0 or more, got {args.committee_k}",
            file=sys.stderr,
        )
        return 2
    workdir: Path = args.workdir.resolve()
    if workdir.exists() and not args.keep:
        shutil.rmtree(workdir)
    try:
        codec = parse_codec(args.codec)
    except ValueError as exc:
        print(f"edge-swarm demo: --codec {args.codec}: {exc}", file=sys.stderr)
        return 2
    try:
        downlink = parse_codec(args.downlink)
    except ValueError as exc:
        print(f"edge-swarm demo: --downlink {args.downlink}: {exc}", file=sys.stderr)
        return 2
    try:
        rule = parse_merge(args.merge, DEFAULT_MERGE)
    except ValueError as exc:
        print(f"edge-swarm demo: --merge {args.merge}: {exc}", file=sys.stderr)
        return 2
    attacks = _attacks(args)
    if attacks is None:
        return 2
    if rule.min_deltas() > args.agents:
        print(
            f"edge-swarm demo: --merge {args.merge} needs at least {rule.min_deltas()} "
            f"agents per round, got --agents {args.agents}: every round would fall back to "
            "the median",
            file=sys.stderr,
        )
        return 2
    rounds = args.rounds or (CONTINUOUS_MAX_ROUNDS if args.continuous else 20)
    try:
        privacy = privacy_policy(args, rounds)
        if privacy is not None:
            check_merge(privacy, rule.aggregation, rule.clip, args.merge_by)
    except ValueError as exc:
        print(f"edge-swarm demo: {exc}", file=sys.stderr)
        return 2
    backbone = _backbone(args, workdir)
    broker = args.broker or _default_broker(args.agents)
    cfg = RunConfig(
        workdir=workdir,
        backbone=backbone,
        engine=args.engine,
        workload=args.workload,
        n_agents=args.agents,
        agents_per_process=args.agents_per_process,
        merge_by=args.merge_by,
        committee_k=args.committee_k,
        downlink=downlink,
        n_gateways=args.gateways,
        rounds=rounds,
        broker=broker,
        codec=codec,
        error_feedback=not args.no_error_feedback,
        security=args.security,
        merge=rule,
        privacy=privacy,
        attacks=attacks,
        **(CONTINUOUS if args.continuous else {}),
    )
    print(
        f"edge-swarm demo: {_agent_processes(cfg)}, "
        f"{cfg.n_gateways} gateway{'s' if cfg.n_gateways > 1 else ''}, "
        f"{cfg.broker} MQTT broker; "
        f"workload {cfg.workload}, Dirichlet({cfg.alpha}) label split, {_rounds(cfg)}\n"
        f"  local training: {cfg.local}\n  merge rule: {cfg.merge}, by {_merged_by(cfg)}\n"
        f"  delta codec: {args.codec}, error feedback {'on' if cfg.error_feedback else 'off'}\n"
        f"  deltas: {_SECURITY[cfg.security]}\n  {describe(privacy, cfg.rounds)}\n"
        + (
            f"  model: a head over the frozen backbone in {backbone} (run by {cfg.engine})\n"
            if backbone is not None
            else ""
        )
        + (
            f"  POISONING (a test of the merge rule): {', '.join(n for n, _ in attacks)} "
            f"run {args.attack}\n"
            if attacks
            else ""
        )
        + f"  files and logs: {workdir}\n",
        flush=True,
    )

    def on_round(rec: RoundRecord) -> None:
        acc = "  -  " if rec.accuracy is None else f"{rec.accuracy:.3f}"
        kib = rec.envelope_bytes / 1024
        print(
            f"round {rec.round:>3}  peers {len(rec.included):>2}  test acc {acc}  "
            f"deltas on the wire {kib:7.1f} KiB  round time {rec.seconds:5.2f} s "
            f"(overhead {rec.overhead_s:4.2f} s)" + (_growth(rec) if args.continuous else ""),
            flush=True,
        )

    try:
        result = run_swarm(cfg, on_round=on_round)
    except RuntimeError as exc:
        print(f"\nedge-swarm demo failed: {exc}", file=sys.stderr)
        return 1
    print("\ncomputing the reference points (pooled data, each agent alone)...", flush=True)
    n_classes = int(result.workload.y_train.max()) + 1
    transform = None
    n_inputs = result.workload.X_train.shape[1]
    if backbone is not None:
        from edge_swarm.learn.backbone import features, load_backbone, read_ref

        ref = read_ref(backbone)
        model = load_backbone(backbone, ref, "numpy")
        n_inputs = ref.n_features

        def transform(X: np.ndarray) -> np.ndarray:
            return features(model, X)

    spec = model_spec(n_inputs, n_classes, cfg.hidden)
    base = baselines(spec, result.workload, result.parts, cfg.seed, transform)
    summary = summarise(result, base)
    _print_bytes(result)
    _print_comparison(result, base)
    scores = site_scores(result.rounds)
    png = plot_accuracy(
        workdir / "accuracy.png",
        f"edge-swarm on {cfg.workload}",
        result.rounds,
        base,
        {r: statistics.fmean(v.values()) for r, v in scores.items() if v}
        if args.continuous
        else None,
    )
    rounds = read_rounds(result.layout.ledger_path)
    spent = [a.privacy for _, a in sorted(rounds.items()) if a.privacy]
    if spent:  # DP: what the model that leaves the swarm carries (docs/SECURITY.md)
        last = spent[-1]
        summary["privacy"] = last
        print(
            f"\nprivacy spent: epsilon {last['epsilon']:.3f} at delta {last['delta']:g} after"
            f" {len(spent)} rounds (noise multiplier {last['z']:g}; the ledger holds each round's)"
        )
    js = write_json(workdir / "summary.json", summary)
    ledger = result.layout.ledger_path
    print_merge_summary(rounds)
    print(
        f"\nplot: {png}\nsummary: {js}\n"
        f"check the ledger:  ledger-lite verify {ledger}\n"
        f"who contributed:   edge-swarm audit {ledger}"
    )
    return 0


# `demo --continuous`: a quarter of each agent's data at first, the rest in three steps
# every three rounds; each site holds a fifth of its data out, and the campaign ends once the
# sites' mean validation accuracy has not gained 0.002 on its best for 4 rounds.
CONTINUOUS: dict[str, Any] = {
    "data_steps": 3,
    "data_first": 0.25,
    "data_every": 3,
    "stop": {"patience": 4, "min_delta": 0.002},
    "val_fraction": 0.2,  # the sites' held-out slices, whose scores the stop rule reads
}


def _rounds(cfg: RunConfig) -> str:
    if cfg.stop is None:
        return f"{cfg.rounds} rounds"
    return f"until the sites' validation stops improving (at most {cfg.rounds} rounds)"


def _growth(rec: RoundRecord) -> str:
    """The samples a round trained on and the sites' scores of the previous round's model
    (an agent signs its score of round r's model into its commit of round r + 1)."""
    scores = site_scores([rec]).get(rec.round - 1, {})
    val = f"{statistics.fmean(scores.values()):.3f} over {len(scores)}" if scores else "  -  "
    return f"  samples {rec.samples:>5}  sites' validation of round {rec.round - 1}: {val}"


def default_committee_k(gateways: int) -> int:
    """Agents drawn per round when not told: enough that no single machine decides the model.

    Three gateways or more are a committee on their own (a lying one is outvoted); with fewer,
    two drawn agents make a majority of three or four that one machine cannot carry alone.
    """
    return 0 if gateways >= 3 else 2


def _merged_by(cfg: RunConfig) -> str:
    if cfg.merge_by == "all":
        return "every agent"
    if cfg.committee_k == 0:
        return "a committee per round: the gateways, a majority of them agreeing"
    return f"a committee per round (the gateways + {cfg.committee_k} drawn agents)"


def _default_broker(agents: int) -> str:
    """The embedded broker up to the fleet size it carries, Mosquitto above where it is
    installed (said once, with what to do when it is not)."""
    from edge_swarm.cli.main import EMBEDDED_BROKER_MAX_AGENTS
    from edge_swarm.io.broker import find_mosquitto

    if agents <= EMBEDDED_BROKER_MAX_AGENTS:
        return "embedded"
    if find_mosquitto() is not None:
        print(
            f"edge-swarm demo: {agents} agents are more than the embedded broker carries "
            f"({EMBEDDED_BROKER_MAX_AGENTS}); using Mosquitto (--broker embedded to insist)"
        )
        return "mosquitto"
    print(
        f"edge-swarm demo: warning: {agents} agents are more than the embedded broker "
        f"carries ({EMBEDDED_BROKER_MAX_AGENTS}) and Mosquitto is not installed "
        "(apt-get install mosquitto); expect timeouts",
        file=sys.stderr,
    )
    return "embedded"


def _agent_processes(cfg: RunConfig) -> str:
    k = cfg.agents_per_process
    if k == 1:
        return f"{cfg.n_agents} agent processes"
    n = -(-cfg.n_agents // k)
    return f"{cfg.n_agents} agents in {n} process{'es' if n > 1 else ''} (up to {k} in each)"


def _print_bytes(result: RunResult) -> None:
    rows = []
    for node in sorted(result.bytes_per_agent_round):
        per = [(o, i) for r, o, i in result.bytes_per_agent_round[node] if r > 1]
        if not per:
            continue
        rows.append(
            [
                node,
                statistics.fmean(o for o, _ in per) / 1024,
                statistics.fmean(i for _, i in per) / 1024,
                result.peak_rss_kb.get(node, 0) / 1024,
            ]
        )
    shared = result.config.agents_per_process > 1
    print_table(
        "bytes on MQTT per agent per round (mean of rounds 2..), and peak memory"
        + (" of its process (shared)" if shared else ""),
        ["agent", "out KiB", "in KiB", "peak RSS MiB"],
        rows,
    )


def _print_comparison(result: RunResult, base: Baselines) -> None:
    rows: list[list[Any]] = [
        ["swarm (this run)", result.final_accuracy, f"{len(result.rounds)} rounds"],
        ["pooled data", base.pooled, "20 epochs, all data in one place"],
        ["alone, mean", base.alone_mean, "20 epochs on own data"],
        ["alone, worst", base.alone_worst, ""],
    ]
    for name, acc in sorted(base.alone.items()):
        rows.append([f"  {name} alone", acc, ""])
    print_table("test accuracy", ["model", "accuracy", "note"], rows)


def summarise(result: RunResult, base: Baselines) -> dict[str, Any]:
    cfg = result.config
    scores = site_scores(result.rounds)
    return {
        "workload": cfg.workload,
        "agents": cfg.n_agents,
        "rounds": cfg.rounds,
        "local_training": cfg.local.to_dict(),
        "merge_rule": cfg.merge.to_dict(),
        "attacks": dict(cfg.attacks),
        "codec": cfg.codec.to_dict(),
        "error_feedback": cfg.error_feedback,
        "security": cfg.security,
        "broker": cfg.broker,
        "final_accuracy": result.final_accuracy,
        "stop_reason": campaign_end(result.events) or f"budget of {cfg.rounds} rounds spent",
        "per_round": [
            {
                "round": r.round,
                "participants": r.included,
                "accuracy": r.accuracy,
                "round_s": r.seconds,
                "slowest_train_s": r.slowest_train_s,
                "overhead_s": r.overhead_s,
                "model_hash": r.model_hash,
                "samples": r.samples,
                "site_validation": scores.get(r.round, {}),
            }
            for r in result.rounds
        ],
        "pooled_accuracy": base.pooled,
        "alone_accuracy": base.alone,
        "alone_mean": base.alone_mean,
        "alone_worst": base.alone_worst,
        "bytes_per_agent_round": result.bytes_per_agent_round,
        "peak_rss_kb": result.peak_rss_kb,
        "cold_start_s": result.cold_start_s,
        "wall_s": result.wall_s,
    }
