"""``edge-swarm audit``: per round, who contributed, with how many samples, and which model
came out — read from a ledger file, after the chain has been verified from genesis."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger_lite import Entry
from ledger_lite.verify import verify_file


@dataclass
class RoundAudit:
    round: int
    base_model_hash: str = ""
    opened_height: int = -1
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)
    included: list[str] = field(default_factory=list)
    close_reason: str = ""
    model_hash: str = ""
    attesters: list[str] = field(default_factory=list)
    final_height: int = -1
    merge: dict[str, Any] | None = None  # model_final's record of what the merge rule did

    def merge_weights(self) -> dict[str, float]:
        """{node: share} from model_final's merge report ({} without one); an entry whose
        share is not a number (the report is the gateway's word) is skipped."""
        weights = (self.merge or {}).get("weights") or {}
        if not isinstance(weights, dict):
            return {}
        return {
            str(n): float(w)
            for n, w in sorted(weights.items())
            if isinstance(w, (int, float)) and not isinstance(w, bool)
        }

    def sample_shares(self, nodes: list[str]) -> dict[str, float]:
        """Each node's share of the samples its delta_commits claim among ``nodes`` (what a
        plain mean gives it); an equal share when the counts are missing."""
        samples = {n: self.commits.get(n, {}).get("n_samples") for n in nodes}
        total = sum(v for v in samples.values() if isinstance(v, int) and v > 0)
        return {
            n: k / total if isinstance(k, int) and k > 0 and total else 1 / len(nodes)
            for n, k in samples.items()
        }

    def down_weighted(self) -> dict[str, float]:
        """Included nodes the merge rule gave less than half of their sample share (what a
        plain mean would give them; 0 means left out), with the weight they got."""
        weights = self.merge_weights()
        share = self.sample_shares(list(weights))
        return {n: w for n, w in weights.items() if w < 0.5 * share[n]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "base_model_hash": self.base_model_hash,
            "contributors": [
                {
                    "node": n,
                    "n_samples": self.commits.get(n, {}).get("n_samples"),
                    "envelope_sha256": self.commits.get(n, {}).get("envelope_sha256"),
                }
                for n in self.included  # None: included without a delta_commit on the ledger
            ],
            "committed_not_included": sorted(set(self.commits) - set(self.included)),
            "close_reason": self.close_reason,
            "model_hash": self.model_hash,
            "attesters": self.attesters,
            "final_height": self.final_height,
            "merge": self.merge,
            "down_weighted": self.down_weighted(),
        }


def audit_rounds(entries: list[Entry]) -> dict[int, RoundAudit]:
    """Fold ledger entries into one record per round (pure)."""
    rounds: dict[int, RoundAudit] = {}
    for e in entries:
        p = e.payload
        if e.kind not in ("round_open", "delta_commit", "round_close", "model_final"):
            continue
        rec = rounds.setdefault(p["round"], RoundAudit(p["round"]))
        if e.kind == "round_open":
            rec.base_model_hash, rec.opened_height = p["base_model_hash"], e.height
        elif e.kind == "delta_commit":
            rec.commits[e.author] = p
        elif e.kind == "round_close":
            rec.included, rec.close_reason = list(p["included"]), p["reason"]
        else:
            rec.model_hash, rec.attesters, rec.final_height = (
                p["model_hash"],
                p["attesters"],
                e.height,
            )
            rec.merge = p.get("merge") if isinstance(p.get("merge"), dict) else None
    return rounds


@dataclass(frozen=True)
class NodeMergeSummary:
    """Over the rounds with a merge report: how often a node was included, how often the
    rule down-weighted it (or left it out), and its mean share against its sample share."""

    node: str
    included: int
    down_weighted: int
    mean_weight: float
    mean_sample_share: float


def merge_summary(rounds: dict[int, RoundAudit]) -> list[NodeMergeSummary]:
    """Per node, most down-weighted first (pure)."""
    seen: dict[str, list[tuple[bool, float, float]]] = {}
    for a in rounds.values():
        weights = a.merge_weights()
        low = a.down_weighted()
        share = a.sample_shares(list(weights))
        for n, w in weights.items():
            seen.setdefault(n, []).append((n in low, w, share[n]))
    out = [
        NodeMergeSummary(
            node,
            len(v),
            sum(1 for low, _, _ in v if low),
            sum(w for _, w, _ in v) / len(v),
            sum(s for _, _, s in v) / len(v),
        )
        for node, v in seen.items()
    ]
    return sorted(out, key=lambda s: (-s.down_weighted / s.included, s.node))


def read_rounds(ledger: Path) -> dict[int, RoundAudit]:
    """`audit_rounds` of a ledger file, opened read-only and closed again (verify it first:
    this trusts what it reads)."""
    from ledger_lite import SqliteStore

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
    if args.json:
        for r in sorted(rounds):
            print(json.dumps(rounds[r].to_dict(), sort_keys=True))
        return 0
    from edge_swarm.report import print_table

    rows = []
    for r in sorted(rounds):
        a = rounds[r]
        samples = {n: a.commits[n]["n_samples"] for n in a.included if n in a.commits}
        contributors = ", ".join(f"{n} ({samples.get(n, 'no commit')})" for n in a.included) or "-"
        rows.append(
            [
                r,
                contributors,
                sum(samples.values()),
                _merge_cell(a),
                a.model_hash[:16] or "(not final)",
                len(a.attesters),
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
            "attests",
        ],
        rows,
    )
    print_merge_summary(rounds)
    return 0


def print_merge_summary(rounds: dict[int, RoundAudit]) -> None:
    """The per-node table of what the merge rule did over the run (nothing if no round has a
    merge report, i.e. a plain mean without reports)."""
    from edge_swarm.report import print_table

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
