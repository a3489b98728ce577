"""The audit fold: per round, who contributed, with how many samples, what the merge rule did,
which model came out and how that model scored on each site's held-out slice. Pure: a list of
ledger entries in, values out (``cli.audit`` reads the file, verifies it and prints).

A site's score of round r's final model travels in its commit to a later round (the one that
starts from that model), as ``metrics: {val_acc, val_n, val_round}`` of a ``delta_commit``
entry or the sixth element of a ``round_close`` row (docs/VALIDATION.md); `site_scores` reads
both, and the fold files each score under ``val_round``, the round whose model it scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger_lite import Entry
from ledger_lite.entry import is_id, is_uint


@dataclass(frozen=True)
class SiteScore:
    """One site's held-out accuracy of the final model of round ``round``."""

    node: str
    round: int
    val_acc: float
    val_n: int


def _score(node: Any, metrics: Any) -> SiteScore | None:
    """A SiteScore from a commit's metrics, or None if they hold none (never raises: in an
    "all" swarm a delta_commit's metrics are the agent's free-form object)."""
    if not isinstance(metrics, Mapping) or not is_id(node):
        return None
    acc, n, rnd = metrics.get("val_acc"), metrics.get("val_n"), metrics.get("val_round")
    if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not math.isfinite(acc):
        return None
    if not 0 <= acc <= 1 or not is_uint(n) or not n or not is_uint(rnd):
        return None
    return SiteScore(node, rnd, float(acc), n)


def site_scores(e: Entry) -> Iterator[SiteScore]:
    """The site scores an entry carries: a delta_commit's, or each row's of a round_close
    (rows of 6 elements; a compact entry's rows are a digest and carry none here). A score
    of a round not before the commit's own is no score (no site can have that model yet)."""
    p = e.payload
    found: list[SiteScore | None] = []
    if e.kind == "delta_commit":
        found.append(_score(e.author, p.get("metrics")))
    elif e.kind == "round_close" and isinstance(p.get("commits"), list):
        rows = [r for r in p["commits"] if isinstance(r, list) and len(r) == 6]
        found.extend(_score(r[0], r[5]) for r in rows)
    rnd = p.get("round")
    for score in found:
        if score is not None and is_uint(rnd) and score.round < rnd:
            yield score


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
    # Each site's held-out accuracy of this round's final model: node -> (val_acc, val_n).
    validation: dict[str, tuple[float, int]] = field(default_factory=dict)
    # Under DP (swarm/privacy.py): the round's effective noise multiplier, the agents whose
    # noise its sum carries, and the privacy spent so far (epsilon at delta).
    privacy: dict[str, Any] | None = None

    def val_mean(self) -> float | None:
        """The mean over sites (each site counts once) of their scores of this round's model."""
        accs = [a for a, _ in self.validation.values()]
        return sum(accs) / len(accs) if accs else None

    def val_worst(self) -> tuple[str, float] | None:
        """The site that scored this round's model lowest, and its score."""
        if not self.validation:
            return None
        node = min(self.validation, key=lambda n: (self.validation[n][0], n))
        return node, self.validation[node][0]

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
            "validation": {
                n: {"val_acc": a, "val_n": k} for n, (a, k) in sorted(self.validation.items())
            },
            "val_mean": self.val_mean(),
            "privacy": self.privacy,
        }


def audit_rounds(entries: list[Entry]) -> dict[int, RoundAudit]:
    """Fold ledger entries into one record per round (pure)."""
    rounds: dict[int, RoundAudit] = {}
    for e in entries:
        p = e.payload
        for score in site_scores(e):  # filed under the round whose model it scores
            rec = rounds.setdefault(score.round, RoundAudit(score.round))
            rec.validation[score.node] = (score.val_acc, score.val_n)
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
            for node, sha, n, *_ in p.get("commits", ()):  # [node, sha, n, ts, sig(, metrics)]
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
            rec.privacy = p.get("privacy") if isinstance(p.get("privacy"), dict) else None
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
