"""The dashboard's views: what one device, one round, one contributor and one ledger entry
look like on the page, built from a status dict off the network or from the ledger.

How it works
------------
Each view is a frozen dataclass with a constructor that coerces its input (`DeviceRow`
from a ``devices()`` item, `RoundView` from a round's audit, `LedgerLine` from an entry);
`edge_swarm.dashboard.source.DashboardSource` folds the ledger into them and
`edge_swarm.dashboard.page` renders them. They live apart from both so the page and the
source can share the caps and coercions below without importing each other.

Invariants
----------
- Pure: no I/O, no logging, no locks; every constructor here is a function of its input.
- `DeviceRow.from_status` and `summarize` never raise on odd input from the network: a
  field of the wrong type becomes None or "unknown"; text is cut to `SUMMARY_CHARS` or
  `ID_CHARS`, hashes to `HASH_CHARS`.
- Values are JSON-ready (`dataclasses.asdict`, or `to_dict` where a tuple must become a
  list): the same views feed the HTML and ``/api/state``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edge_swarm.swarm.audit import RoundAudit
from ledger_lite import Entry
from ledger_lite.entry import is_uint

TAIL = 20
"""Ledger entries shown in the tail."""
SUMMARY_CHARS = 100
ID_CHARS = 128  # device ids from devices() are not ledger ids: cut, so a row stays a row
HASH_CHARS = 12
MAX_LISTED = 64  # nodes listed in one round's down-weighted cell
MAX_CHART_ROUNDS = 50  # rounds in the validation chart (the newest)
MAX_CHART_SITES = 32  # sites drawn in it, by id (the round table's mean counts them all)
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#bf8700", "#8250df", "#0a7ea4", "#e16f24", "#6e7781")
"""Site colours in the validation chart, by the site's place in its (sorted) list."""
DEVICE_STATES = ("online", "offline", "paused")


def _number(value: Any) -> float | None:
    """A finite int or float as float (bools are not numbers here), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class DeviceRow:
    """One device as the table shows it. Built by `from_status`, which never raises."""

    id: str
    role: str
    state: str  # one of DEVICE_STATES, or "unknown"
    round: int | None
    memory_mib: float | None  # peak RSS
    accuracy: float | None
    bytes_out: int | None
    cpu_temp_c: float | None
    clock_skew_s: float | None = None  # its wall clock minus the ledger's (the gateways')
    val_acc: float | None = None  # the last final model on its own held-out slice
    serving: str = ""  # the round it serves, and a newer one its safety gate held back

    @classmethod
    def from_status(cls, node: Any, status: Any) -> DeviceRow:
        """Coerce one ``devices()`` item: a field of the wrong type becomes None, a state
        outside DEVICE_STATES becomes "unknown" (the status comes off the network)."""
        s = status if isinstance(status, Mapping) else {}
        state = s.get("state")
        rss = _number(s.get("peak_rss_kb"))
        out = _number(s.get("bytes_out"))
        return cls(
            id=_cut(str(node), ID_CHARS),
            role=_cut(s["role"], 32) if isinstance(s.get("role"), str) else "",
            state=state if state in DEVICE_STATES else "unknown",
            round=s.get("round") if is_uint(s.get("round")) else None,
            memory_mib=None if rss is None else round(rss / 1024, 1),
            accuracy=_number(s.get("accuracy")),
            bytes_out=None if out is None else int(out),
            cpu_temp_c=_number(s.get("cpu_temp_c")),
            clock_skew_s=_number(s.get("clock_skew_s")),
            val_acc=_fraction(s.get("val_acc")),
            serving=serving_text(s),
        )


def _fraction(value: Any) -> float | None:
    v = _number(value)
    return v if v is not None and 0.0 <= v <= 1.0 else None


def serving_text(values: Mapping[str, Any]) -> str:
    """``r19``, or ``r3; held back r5: val 0.412 < 0.938`` when a device's serving gate kept
    an older model (node/serving.py's telemetry); "" for a device that serves no model.
    Never raises: the values come off the network (signed, but any device may be wrong)."""
    served = _number(values.get("serving_round"))
    if served is None:
        return ""
    out = f"r{int(served)}"
    held = _number(values.get("serve_held_round"))
    new, kept = _fraction(values.get("serve_held_acc")), _fraction(values.get("serve_kept_acc"))
    if held is not None and new is not None and kept is not None:
        out += f"; held back r{int(held)}: val {new:.3f} < {kept:.3f}"
    return out


Scores = Mapping[int, Mapping[str, tuple[float, int]]]  # round -> site -> (val_acc, val_n)


def validation_series(scores: Scores) -> dict[str, Any]:
    """The chart's data: for the newest `MAX_CHART_ROUNDS` rounds scored, each site's held-out
    accuracy of that round's final model (None where it reported none), at most
    `MAX_CHART_SITES` sites by id, and the mean over every site that reported."""
    rounds = sorted(scores)[-MAX_CHART_ROUNDS:]
    sites = sorted({n for r in rounds for n in scores[r]})
    series = []
    for i, node in enumerate(sites[:MAX_CHART_SITES]):
        accs = [scores[r][node][0] if node in scores[r] else None for r in rounds]
        last = next(r for r in reversed(rounds) if node in scores[r])
        series.append(
            {
                "site": _cut(node, ID_CHARS),
                "color": PALETTE[i % len(PALETTE)],  # ours, never from the network
                "acc": accs,
                "latest": scores[last][node][0],
                "latest_round": last,
                "val_n": scores[last][node][1],
            }
        )
    means = [
        sum(a for a, _ in scores[r].values()) / len(scores[r]) if scores[r] else None
        for r in rounds
    ]
    return {"rounds": rounds, "sites": series, "sites_total": len(sites), "mean": means}


def weighted_accuracy(commits: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Mean of ``metrics["accuracy"]`` over a round's delta_commit payloads (every commit,
    included or not: it is what the devices reported), weighted by ``n_samples``.

    Commits without an accuracy in [0, 1] or with no samples are left out; None when none
    is left.
    """
    total = weight = 0.0
    for payload in commits.values():
        metrics = payload.get("metrics")
        acc = _number(metrics.get("accuracy")) if isinstance(metrics, Mapping) else None
        n = payload.get("n_samples")
        if acc is None or not 0.0 <= acc <= 1.0 or not is_uint(n) or n == 0:
            continue
        total += acc * n
        weight += n
    return total / weight if weight else None


@dataclass(frozen=True)
class RoundView:
    """One round as the round table and the chart show it."""

    round: int
    participants: tuple[str, ...]  # the included nodes once closed; the committers until then
    closed: bool
    close_reason: str
    duration_s: float | None  # ts of round_open to ts of model_final
    mean_accuracy: float | None  # `weighted_accuracy` of its commits
    samples: int  # n_samples of the included nodes' commits
    model_hash: str  # prefix; "" until final
    # Included nodes the merge rule gave under half their sample share (audit's rule).
    down_weighted: tuple[str, ...] = ()
    # Its final model on the sites' held-out slices (reported with the next round's commits).
    val_mean: float | None = None
    val_worst: str = ""  # "agent-05 0.906": the site that scored it lowest
    epsilon: float | None = None  # DP: the privacy spent up to this round (model_final)

    @classmethod
    def from_audit(cls, a: RoundAudit, entries: Sequence[Entry]) -> RoundView:
        """Build from the audit of a round and that round's entries (for their times)."""
        ts_at = {e.height: e.ts for e in entries}
        opened, final = ts_at.get(a.opened_height), ts_at.get(a.final_height)
        closed = any(e.kind == "round_close" for e in entries)
        return cls(
            round=a.round,
            participants=tuple(a.included) if closed else tuple(sorted(a.commits)),
            closed=closed,
            close_reason=_cut(a.close_reason, SUMMARY_CHARS),
            duration_s=None if opened is None or final is None else (final - opened) / 1000,
            mean_accuracy=weighted_accuracy(a.commits),
            samples=sum(_shares(a).values()),
            model_hash=a.model_hash[:HASH_CHARS],
            down_weighted=tuple(
                _cut(str(n), ID_CHARS) for n in list(a.down_weighted())[:MAX_LISTED]
            ),
            epsilon=_number((a.privacy or {}).get("epsilon")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {  # JSON has no tuple
            **asdict(self),
            "participants": list(self.participants),
            "down_weighted": list(self.down_weighted),
        }


def _shares(a: RoundAudit) -> dict[str, int]:
    """{node: samples} for the nodes a round included: the audit's own contributor list
    (a node included without a delta_commit on the ledger counts the round, 0 samples)."""
    return {c["node"]: c["n_samples"] or 0 for c in a.to_dict()["contributors"]}


@dataclass(frozen=True)
class Contribution:
    """What one device has contributed over every round folded so far."""

    node: str
    rounds: int  # rounds whose round_close included it
    samples: int  # n_samples of its delta_commits in those rounds


@dataclass(frozen=True)
class LedgerLine:
    """One entry of the ledger's tail."""

    height: int
    kind: str
    author: str
    ts: int
    summary: str
    hash: str  # prefix

    @classmethod
    def of(cls, e: Entry) -> LedgerLine:
        return cls(e.height, e.kind, e.author, e.ts, summarize(e), e.hash[:HASH_CHARS])


def _n(value: Any) -> int:
    return len(value) if isinstance(value, (list, dict)) else 0


def _summary(kind: str, p: Mapping[str, Any]) -> str:
    rnd = f"round {p.get('round')}"
    model = str(p.get("model_hash"))[:HASH_CHARS]
    if kind == "genesis":
        return f"swarm {p.get('swarm')}, {_n(p.get('admins'))} admin(s)"
    if kind == "enroll":
        return f"{p.get('node')} as {p.get('role')}"
    if kind == "revoke":
        return f"{p.get('node')}: {p.get('reason')}"
    if kind == "round_open":
        return f"{rnd} from model {str(p.get('base_model_hash'))[:HASH_CHARS]}"
    if kind == "delta_commit":
        metrics = p.get("metrics")
        acc = _number(metrics.get("accuracy")) if isinstance(metrics, Mapping) else None
        return f"{rnd}, {p.get('n_samples')} samples" + ("" if acc is None else f", acc {acc:.3f}")
    if kind == "round_close":
        return f"{rnd}: {_n(p.get('included'))} included ({p.get('reason')})"
    if kind == "model_attest":
        return f"{rnd}, model {model}"
    if kind == "model_final":
        spent = p.get("privacy")
        eps = _number(spent.get("epsilon")) if isinstance(spent, Mapping) else None
        tail = "" if eps is None else f", epsilon {eps:.3f}"
        return f"{rnd}, model {model}, {_n(p.get('attesters'))} attester(s){tail}"
    if kind == "key_epoch":
        return f"epoch {p.get('epoch')} for {_n(p.get('wrapped'))} node(s)"
    return "fields: " + ", ".join(sorted(p)[:8])  # config, fleet_command: free-form


def summarize(entry: Entry) -> str:
    """One short line about an entry's payload, at most SUMMARY_CHARS; never raises."""
    try:
        text = _summary(entry.kind, entry.payload)
    except (AttributeError, TypeError, ValueError):  # a payload of an unexpected shape
        text = "(payload not summarised)"
    return _cut(text, SUMMARY_CHARS)
