"""The audit fold: per round, who contributed, with how many samples, what the merge rule did
and which model came out. Pure: a list of ledger entries in, values out (``cli.audit`` reads
the file, verifies it and prints)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger_lite import Entry


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
    abandoned: str = ""  # why the round was finalised on its base model (nobody could merge)
    committee: list[str] = field(default_factory=list)  # merge_by = committee: who merged it

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
            "abandoned": self.abandoned,
            "committee": self.committee,
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
            # A committee swarm folds the commits into round_close (ledger_lite/commits.py).
            for node, sha, n, *_ in p.get("commits", ()):
                rec.commits[node] = {"round": p["round"], "envelope_sha256": sha, "n_samples": n}
        else:
            rec.model_hash, rec.attesters, rec.final_height = (
                p["model_hash"],
                p["attesters"],
                e.height,
            )
            rec.merge = p.get("merge") if isinstance(p.get("merge"), dict) else None
            rec.abandoned = str(p.get("abandoned", ""))
            rec.committee = list(p.get("committee", []))
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
