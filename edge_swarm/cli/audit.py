"""``edge-swarm audit``: per round, who contributed, with how many samples, which model came
out and how it scored on each site's held-out slice — read from a ledger file, after the
chain has been verified from genesis."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_swarm.site.report import print_table
from edge_swarm.swarm.audit import RoundAudit, audit_rounds, merge_summary
from ledger_lite import SqliteStore
from ledger_lite.verify import verify_file


def read_rounds(ledger: Path) -> dict[int, RoundAudit]:
    """`audit_rounds` of a ledger file, opened read-only and closed again (verify it first:
    this trusts what it reads)."""
    with SqliteStore(ledger, verify_only=True) as store:
        return audit_rounds(store.load())


def run_audit(args: argparse.Namespace) -> int:
    if not args.ledger.is_file():
        print(f"edge-swarm audit: no ledger at {args.ledger}", file=sys.stderr)
        return 2
    report = verify_file(args.ledger)
    if not report.ok:
        print(
            f"edge-swarm audit: the ledger does not verify (height {report.first_bad_height}: "
            f"{report.reason}); nothing in it can be trusted",
            file=sys.stderr,
        )
        return 1
    rounds = read_rounds(args.ledger)
    if args.round is not None:
        rounds = {k: v for k, v in rounds.items() if k == args.round}
    if args.json:  # one line per round the ledger opened (round 0's scores: the table)
        for r in sorted(rounds):
            if rounds[r].opened_height >= 0:
                print(json.dumps(rounds[r].to_dict(), sort_keys=True))
        return 0
    rows = []
    for r in sorted(rounds):
        a = rounds[r]
        if a.opened_height < 0:
            continue  # only site scores filed under it: round 0's, the initial model's
        samples = {n: a.commits[n]["n_samples"] for n in a.included if n in a.commits}
        contributors = ", ".join(f"{n} ({samples.get(n, 'no commit')})" for n in a.included) or "-"
        rows.append(
            [
                r,
                contributors,
                sum(samples.values()),
                _merge_cell(a),
                f"{a.model_hash[:16]} (abandoned: the base model)"
                if a.abandoned
                else a.model_hash[:16] or "(not final)",
                f"{len(a.attesters)} of {', '.join(a.committee)}"
                if a.committee
                else len(a.attesters),
            ]
        )
    print(f"ledger {args.ledger}: verified, {report.n_entries} entries, tip {report.tip_hash[:16]}")
    print_table(
        "contributions per round",
        [
            "round",
            "contributors (samples)",
            "samples",
            "merge: down-weighted",
            "model hash",
            "attests (of the committee)",
        ],
        rows,
    )
    print_merge_summary(rounds)
    print_validation(rounds)
    print_privacy(rounds)
    for r, a in sorted(rounds.items()):
        if a.abandoned:
            print(f"round {r} abandoned: {a.abandoned}")
    return 0


def print_privacy(rounds: dict[int, RoundAudit]) -> None:
    """The privacy spent round by round, as the coordinator recorded it (DP swarms only)."""
    rows = [
        [
            r,
            f"{p.get('n')} of {p.get('expected')}",
            p.get("z"),
            f"{p.get('epsilon', float('nan')):.3f}",
            p.get("delta"),
        ]
        for r, a in sorted(rounds.items())
        if (p := a.privacy) is not None
    ]
    if rows:
        cols = ["round", "agents noised", "noise multiplier", "epsilon so far", "at delta"]
        print_table("differential privacy spent (model_final.privacy)", cols, rows)


MAX_SITE_COLUMNS = 12  # more sites: the summary columns only (--json lists each)


def print_validation(rounds: dict[int, RoundAudit]) -> None:
    """The table of each round's final model as every site scored it on its held-out slice
    (nothing if no site reported a score: a swarm without val_fraction)."""
    scored = [a for _, a in sorted(rounds.items()) if a.validation]
    if not scored:
        return
    sites = sorted({n for a in scored for n in a.validation})
    shown = sites if len(sites) <= MAX_SITE_COLUMNS else []  # --json has every site
    rows = []
    for a in scored:
        worst = a.val_worst()
        rows.append(
            [
                "0 (init)" if a.round == 0 else a.round,
                f"{a.val_mean():.3f}",
                worst[0] if worst else "",
                *(_score_cell(a, n) for n in shown),
            ]
        )
    slices = {n: a.validation[n][1] for a in scored for n in a.validation}  # the latest size
    print_table(
        "validation: each round's final model on each site's held-out slice, as the site "
        "reported it with its next commit ('-': no report)",
        ["round", "mean", "worst", *shown],
        rows,
    )
    print("held-out samples per site: " + ", ".join(f"{n} {k}" for n, k in sorted(slices.items())))


def _score_cell(a: RoundAudit, node: str) -> str:
    return f"{a.validation[node][0]:.3f}" if node in a.validation else "-"


def print_merge_summary(rounds: dict[int, RoundAudit]) -> None:
    """The per-node table of what the merge rule did over the run (nothing if no round has a
    merge report, i.e. a plain mean without reports)."""
    summary = merge_summary(rounds)
    if not summary:
        return
    rules = sorted({str((a.merge or {}).get("rule", "?")) for a in rounds.values() if a.merge})
    print_table(
        f"what the merge rule ({', '.join(rules)}) did with each node",
        ["node", "rounds in", "down-weighted", "mean share", "sample share"],
        [
            [
                s.node,
                s.included,
                f"{s.down_weighted} ({100 * s.down_weighted / s.included:.0f}%)",
                f"{s.mean_weight:.3f}",
                f"{s.mean_sample_share:.3f}",
            ]
            for s in summary
        ],
    )


def _merge_cell(a: RoundAudit) -> str:
    """``krum: agent-07 0.00, agent-08 0.00`` — who the rule down-weighted, and how much."""
    if a.merge is None:
        return ""
    rule = str(a.merge.get("rule", "?"))
    low = a.down_weighted()
    clipped = a.merge.get("clipped") or {}
    parts = [f"{n} {w:.2f}" for n, w in low.items()]
    parts += [f"{n} clipped x{s}" for n, s in sorted(clipped.items()) if n not in low]
    return f"{rule}: {', '.join(parts)}" if parts else f"{rule}: none"
