"""A read-only dashboard that a site gateway serves on the LAN: devices, rounds, accuracy per
round, contribution per device and the ledger's tail, as one self-contained HTML page and as
JSON.

How it works
------------
`DashboardSource` folds the gateway's ledger into views. It remembers the height and hash of
the last entry it folded, so a call folds only what was appended since. Entries that belong
to a round are kept per round, and a round that gained one is re-audited with
`edge_swarm.audit.audit_rounds` (the fold ``edge-swarm audit`` prints), so the dashboard and
the audit never disagree about who contributed what. Per-device totals are sums of per-round
shares: re-auditing a round swaps its share instead of recounting every round. The device
table comes fresh from the `devices()` callable on every call.

`render_page` turns that state into HTML: tables and SVG charts rendered on the server, so
the page shows everything without JavaScript, plus a small inline script that re-renders the
same elements from ``/api/state`` every `REFRESH_S` seconds. Each table's columns and
formats are declared once (`_TABLES`) and handed to the script as data attributes, so the
two renderings agree. `DashboardServer` serves both with the stdlib `ThreadingHTTPServer` on
a daemon thread.

Invariants
----------
- Read-only: GET and HEAD only; every other standard method gets 405, unknown ones 501.
- Nothing from the ledger or the devices reaches the page unescaped: the server writes it
  through `html.escape`, the script only through ``textContent`` and attribute values. A
  per-response CSP nonce is a second line: an injected ``<script>`` would not run.
- Responses are bounded: at most `MAX_ROUNDS` rounds, `MAX_DEVICES` devices and
  contributors, `TAIL` ledger entries, summaries cut to `SUMMARY_CHARS`; a body over
  `MAX_BODY` bytes is refused with 500 rather than sent.
- A handler never raises: a failure becomes a short 500 and one log line.
- No external resources: the LAN at a clinic is offline.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from edge_swarm.audit import RoundAudit, audit_rounds
from ledger_lite import Entry
from ledger_lite.entry import is_uint

log = logging.getLogger(__name__)

REFRESH_S = 5
"""How often the page's script fetches ``/api/state`` (seconds)."""
TAIL = 20
"""Ledger entries shown in the tail."""
MAX_ROUNDS = 200
"""Most recent rounds in the round table and the chart."""
MAX_DEVICES = 500
"""Most devices (and contributors) listed; a site has tens."""
SUMMARY_CHARS = 100
ID_CHARS = 128  # device ids from devices() are not ledger ids: cut, so a row stays a row
HASH_CHARS = 12
MAX_BODY = 4 * 1024 * 1024
"""Largest response body (bytes); the caps above keep a real one far below it."""
REQUEST_TIMEOUT_S = 10.0
"""Socket timeout per connection (seconds): a stalled client holds one thread, not forever."""
MAX_CLIENTS = 16
"""Connections served at once; more are closed at once rather than given a thread each."""
DEVICE_STATES = ("online", "offline", "paused")
_ROUND_KINDS = frozenset({"round_open", "delta_commit", "round_close", "model_final"})

EntriesFn = Callable[[], Sequence[Entry]]
DevicesFn = Callable[[], Mapping[str, Mapping[str, Any]]]


def _number(value: Any) -> float | None:
    """A finite int or float as float (bools are not numbers here), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- views


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
        )


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
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "participants": list(self.participants)}  # JSON has no tuple


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
        return f"{rnd}, model {model}, {_n(p.get('attesters'))} attester(s)"
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


# --------------------------------------------------------------------------- the source


class DashboardSource:
    """The dashboard's views of one gateway, folded incrementally. Thread-safe.

    `entries()` returns the whole ledger in height order, from genesis (as
    ``Ledger.entries()`` does); `devices()` maps node id to a status dict
    ``{"role", "state", "round"}`` plus optional telemetry numbers (``peak_rss_kb``,
    ``accuracy``, ``bytes_out``, ``cpu_temp_c``). Both are called on every `state()`.

    `entries_from(height)`, if given, returns the entries from `height` on (the signature of
    ``Ledger.entries`` and of every ``LedgerBackend``): a refresh then reads only the entries
    after the last one folded, instead of the whole ledger, and `entries()` is called only
    for the first fold and after the ledger was replaced.
    """

    def __init__(
        self,
        entries: EntriesFn,
        devices: DevicesFn,
        *,
        entries_from: Callable[[int], Sequence[Entry]] | None = None,
    ) -> None:
        self._entries = entries
        self._entries_from = entries_from
        self._devices = devices
        self._lock = threading.Lock()  # one fold at a time; readers see a whole fold
        self._reset()

    def _reset(self) -> None:
        self._height = -1
        self._tip = ""
        self._swarm = ""
        self._by_round: dict[int, list[Entry]] = {}  # only the kinds audit_rounds reads
        self._rounds: dict[int, RoundView] = {}
        self._shares: dict[int, dict[str, int]] = {}
        self._totals: dict[str, tuple[int, int]] = {}  # node -> (rounds, samples)
        self._tail: deque[LedgerLine] = deque(maxlen=TAIL)

    @property
    def height(self) -> int:
        """Height of the last entry folded (-1 before the first)."""
        return self._height

    def refresh(self) -> int:
        """Fold the entries appended since the last call; return how many were folded.
        Raises whatever `entries()` or `entries_from()` raise."""
        with self._lock:  # read inside: an older list must not look like a truncation
            new = self._unfolded()
            touched: set[int] = set()
            for e in new:
                self._fold(e, touched)
            for rnd in touched:
                self._audit(rnd)
            return len(new)

    def _unfolded(self) -> Sequence[Entry]:
        """The entries after the last one folded. Starts again from genesis if the ledger no
        longer holds that entry (a replica rebuilt from another gateway's chain)."""
        h = self._height
        if h >= 0 and self._entries_from is not None:
            tail = self._entries_from(h)  # from the last folded entry: it proves continuity
            if tail and tail[0].height == h and tail[0].hash == self._tip:
                return tail[1:]
        elif h >= 0:
            entries = self._entries()
            if len(entries) > h and entries[h].height == h and entries[h].hash == self._tip:
                return entries[h + 1 :]
        else:
            return self._entries()
        log.warning("dashboard: the ledger no longer holds entry %d as folded; refolding", h)
        self._reset()
        return self._entries()

    def state(self) -> dict[str, Any]:
        """Fold what is new, poll the devices, and return the JSON-ready views. Raises
        whatever the two callables raise."""
        raw = self._devices()
        devices = [DeviceRow.from_status(k, v) for k, v in raw.items()]
        devices.sort(key=lambda d: d.id)
        self.refresh()
        with self._lock:
            rounds = [self._rounds[r] for r in sorted(self._rounds)[-MAX_ROUNDS:]]
            contributions = [Contribution(n, r, s) for n, (r, s) in self._totals.items() if r]
            contributions.sort(key=lambda c: (-c.samples, c.node))
            return {
                "swarm": self._swarm,
                "height": self._height,
                "tip": self._tip[:HASH_CHARS],
                "devices_total": len(devices),
                "devices": [asdict(d) for d in devices[:MAX_DEVICES]],
                "rounds": [r.to_dict() for r in rounds],
                "contributions": [asdict(c) for c in contributions[:MAX_DEVICES]],
                "ledger_tail": [asdict(line) for line in reversed(self._tail)],  # newest first
            }

    def _fold(self, e: Entry, touched: set[int]) -> None:
        self._height, self._tip, self._swarm = e.height, e.hash, e.swarm
        self._tail.append(LedgerLine.of(e))
        rnd = e.payload.get("round")
        if e.kind in _ROUND_KINDS and is_uint(rnd):
            self._by_round.setdefault(rnd, []).append(e)
            touched.add(rnd)

    def _audit(self, rnd: int) -> None:
        """Re-audit one round and swap its share of the per-device totals."""
        entries = self._by_round[rnd]
        try:
            a = audit_rounds(entries)[rnd]
            view, shares = RoundView.from_audit(a, entries), _shares(a)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # The ledger checked these payloads' schema; this only guards a future kind.
            log.warning("dashboard: round %d does not audit (%r); keeping its last view", rnd, exc)
            return
        self._rounds[rnd] = view
        for node, n in self._shares.pop(rnd, {}).items():
            r, s = self._totals[node]
            self._totals[node] = (r - 1, s - n)
        for node, n in shares.items():
            r, s = self._totals.get(node, (0, 0))
            self._totals[node] = (r + 1, s + n)
        self._shares[rnd] = shares


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class _Column:
    title: str
    key: str
    fmt: str = "text"  # text | f1 | f3 | list | bar: `_cell` and the script's cell() agree


@dataclass(frozen=True)
class _Table:
    id: str  # element id
    title: str
    key: str  # the list in the state
    attrs: tuple[tuple[str, str], ...]  # (data-* attribute on each row, field it shows)
    columns: tuple[_Column, ...]


_C = _Column
_TABLES = (
    _Table(
        "devices",
        "Devices",
        "devices",
        (("node", "id"), ("state", "state")),
        (
            _C("device", "id"),
            _C("role", "role"),
            _C("state", "state"),
            _C("round", "round"),
            _C("memory MiB", "memory_mib", "f1"),
            _C("accuracy", "accuracy", "f3"),
            _C("sent bytes", "bytes_out"),
            _C("CPU °C", "cpu_temp_c", "f1"),
        ),
    ),
    _Table(
        "rounds",
        "Rounds",
        "rounds",
        (("round", "round"),),
        (
            _C("round", "round"),
            _C("participants", "participants", "list"),
            _C("close reason", "close_reason"),
            _C("time s", "duration_s", "f1"),
            _C("mean accuracy", "mean_accuracy", "f3"),
            _C("samples", "samples"),
            _C("model", "model_hash"),
        ),
    ),
    _Table(
        "contributions",
        "Contribution per device (samples in included rounds)",
        "contributions",
        (("node", "node"),),
        (
            _C("device", "node"),
            _C("rounds", "rounds"),
            _C("samples", "samples"),
            _C("", "samples", "bar"),
        ),
    ),
    _Table(
        "ledger-tail",
        f"Ledger, last {TAIL} entries",
        "ledger_tail",
        (("height", "height"),),
        (
            _C("height", "height"),
            _C("kind", "kind"),
            _C("author", "author"),
            _C("summary", "summary"),
            _C("hash", "hash"),
        ),
    ),
)
CHART_W, CHART_H, CHART_PAD = 640, 240, 36  # SVG user units; the script reads them back
BAR_W, BAR_H = 200, 12
DASH = "–"


def _cell(value: Any, fmt: str) -> str:
    """The text of one cell (not yet escaped)."""
    if value is None or value == "" or (fmt == "list" and not value):
        return DASH
    if fmt == "f1":
        return f"{value:.1f}"
    if fmt == "f3":
        return f"{value:.3f}"
    if fmt == "list":
        return ", ".join(str(v) for v in value)
    return str(value)


def _bar(value: Any, top: float) -> str:
    width = int(BAR_W * value / top + 0.5) if top > 0 and _number(value) else 0
    return (
        f'<svg class="bar" width="{BAR_W}" height="{BAR_H}" viewBox="0 0 {BAR_W} {BAR_H}">'
        f'<rect width="{width}" height="{BAR_H}"></rect></svg>'
    )


def _render_table(t: _Table, rows: Sequence[Mapping[str, Any]]) -> str:
    cols = json.dumps([[c.key, c.fmt] for c in t.columns])
    attrs = json.dumps([list(a) for a in t.attrs])
    head = "".join(f"<th>{escape(c.title)}</th>" for c in t.columns)
    tops = {  # a bar's full width is the column's largest value
        c.key: max((_number(r.get(c.key)) or 0.0 for r in rows), default=0.0)
        for c in t.columns
        if c.fmt == "bar"
    }
    body = []
    for r in rows:
        attr = "".join(f' data-{a}="{escape(str(r.get(k)))}"' for a, k in t.attrs)
        cells = "".join(
            f"<td>{_bar(r.get(c.key), tops[c.key])}</td>"
            if c.fmt == "bar"
            else f"<td>{escape(_cell(r.get(c.key), c.fmt))}</td>"
            for c in t.columns
        )
        body.append(f"<tr{attr}>{cells}</tr>")
    return (
        f'<table id="{t.id}" data-key="{t.key}" data-cols="{escape(cols)}" '
        f'data-attrs="{escape(attrs)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def chart_points(rounds: Sequence[Mapping[str, Any]]) -> list[tuple[int, float, float, float]]:
    """(round, accuracy, x, y) for each round with a mean accuracy, in round order; x spans
    the rounds shown, y maps accuracy 0..1 to the bottom..top of the plot."""
    pts = [(r["round"], r["mean_accuracy"]) for r in rounds if r.get("mean_accuracy") is not None]
    if not pts:
        return []
    lo, hi = pts[0][0], pts[-1][0]
    span_x, span_y = CHART_W - 2 * CHART_PAD, CHART_H - 2 * CHART_PAD
    out = []
    for rnd, acc in pts:
        x = CHART_PAD + (span_x * (rnd - lo) / (hi - lo) if hi > lo else span_x / 2)
        out.append((rnd, acc, round(x, 1), round(CHART_H - CHART_PAD - acc * span_y, 1)))
    return out


def _render_chart(rounds: Sequence[Mapping[str, Any]]) -> str:
    """The accuracy-per-round chart: static axes, and a ``#accuracy-points`` group that the
    script redraws with the same geometry."""
    axes = []
    for acc in (0.0, 0.5, 1.0):
        y = CHART_H - CHART_PAD - acc * (CHART_H - 2 * CHART_PAD)
        axes.append(
            f'<line class="grid" x1="{CHART_PAD}" x2="{CHART_W - CHART_PAD}" y1="{y}" y2="{y}">'
            f'</line><text class="axis" x="{CHART_PAD - 6}" y="{y + 4}" '
            f'text-anchor="end">{acc:.1f}</text>'
        )
    pts = chart_points(rounds)
    dyn = []
    if pts:
        line = " ".join(f"{x},{y}" for _, _, x, y in pts)
        dyn.append(f'<polyline class="line" points="{line}"></polyline>')
        for rnd, acc, x, y in pts:
            dyn.append(
                f'<circle data-round="{rnd}" data-accuracy="{acc:.3f}" cx="{x}" cy="{y}" r="4">'
                f"<title>round {rnd}: {acc:.3f}</title></circle>"
            )
        for rnd, _, x, _ in (pts[0], pts[-1]) if len(pts) > 1 else pts[:1]:
            dyn.append(
                f'<text class="axis" x="{x}" y="{CHART_H - CHART_PAD + 18}" '
                f'text-anchor="middle">round {rnd}</text>'
            )
    else:
        dyn.append(
            f'<text class="axis" x="{CHART_W / 2}" y="{CHART_H / 2}" text-anchor="middle">'
            "no accuracy reported yet</text>"
        )
    return (
        f'<svg id="accuracy-chart" viewBox="0 0 {CHART_W} {CHART_H}" width="{CHART_W}" '
        f'height="{CHART_H}" data-pad="{CHART_PAD}" role="img" '
        f'aria-label="mean local accuracy per round">{"".join(axes)}'
        f'<g id="accuracy-points">{"".join(dyn)}</g></svg>'
    )


def _status_line(state: Mapping[str, Any]) -> str:
    online = sum(1 for d in state["devices"] if d["state"] == "online")
    return (
        f"ledger height {state['height']}, tip {state['tip'] or DASH}; "
        f"{online} of {state['devices_total']} devices online"
    )


def render_page(state: Mapping[str, Any], nonce: str) -> str:
    """The whole page for `state` (as `DashboardSource.state` returns it). `nonce` marks the
    page's own <style> and <script> for the Content-Security-Policy header."""
    swarm = escape(state["swarm"] or "swarm")
    parts = [(t.id, t.title, _render_table(t, state[t.key])) for t in _TABLES]
    chart = _render_chart(state["rounds"])
    parts.insert(1, ("chart", "Mean local accuracy per round", chart))  # under the devices
    body = "".join(
        f'<section aria-labelledby="h-{tid}"><h2 id="h-{tid}">{escape(title)}</h2>{html}</section>'
        for tid, title, html in parts
    )
    script = _SCRIPT.replace("__REFRESH_MS__", str(REFRESH_S * 1000))
    script = script.replace("__BAR_W__", str(BAR_W)).replace("__BAR_H__", str(BAR_H))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>edge-swarm · {swarm}</title>"
        f'<style nonce="{nonce}">{_CSS}</style></head><body>'
        f"<header><h1>edge-swarm · {swarm}</h1>"
        f'<p id="status">{escape(_status_line(state))}</p></header>'
        f"<main>{body}</main>"
        f'<script nonce="{nonce}">{script}</script></body></html>'
    )


_CSS = """
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#667;--line:#d0d4da;--accent:#1f6feb}
@media (prefers-color-scheme:dark){:root{--fg:#e6e6e6;--muted:#99a;--line:#3a3f47}}
body{font:14px/1.4 system-ui,sans-serif;color:var(--fg);margin:0 auto;padding:1rem;
max-width:1240px}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
#status{color:var(--muted);margin:0}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:0 2rem}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
section{min-width:0;overflow-x:auto}
th,td{text-align:left;padding:.2rem .5rem;border-bottom:1px solid var(--line);
overflow-wrap:break-word;vertical-align:top}
#rounds td:last-child,#ledger-tail td:last-child{font-family:ui-monospace,monospace}
th{color:var(--muted);font-weight:600}
tr[data-state=offline],tr[data-state=unknown]{color:var(--muted)}
tr[data-state=paused] td:nth-child(3){color:#b08800}
tr[data-state=online] td:nth-child(3){color:#1a7f37}
svg text.axis{fill:var(--muted);font-size:11px}
svg .grid{stroke:var(--line)}svg .line{fill:none;stroke:var(--accent);stroke-width:2}
svg circle{fill:var(--accent)}svg.bar rect{fill:var(--accent)}
#accuracy-chart{max-width:100%;height:auto}
"""

# Rebuilds the tables and the chart from /api/state with the formats the server used (the
# tables carry their columns in data-cols). Only textContent and attributes: no innerHTML.
_SCRIPT = """
(() => {
  "use strict";
  const NS = "http://www.w3.org/2000/svg", DASH = "\\u2013";
  function cell(v, f) {
    if (v === null || v === undefined || v === "" || (f === "list" && !v.length)) return DASH;
    if (f === "f1") return v.toFixed(1);
    if (f === "f3") return v.toFixed(3);
    if (f === "list") return v.join(", ");
    return String(v);
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function bar(v, top) {
    const w = top > 0 && typeof v === "number" ? Math.round(__BAR_W__ * v / top) : 0;
    const s = svg("svg", {class: "bar", width: __BAR_W__, height: __BAR_H__,
      viewBox: "0 0 __BAR_W__ __BAR_H__"});
    s.appendChild(svg("rect", {width: w, height: __BAR_H__}));
    return s;
  }
  function fillTable(table, rows) {
    const cols = JSON.parse(table.dataset.cols), attrs = JSON.parse(table.dataset.attrs);
    const top = {};
    for (const [k] of cols) top[k] = Math.max(0, ...rows.map((r) =>
      typeof r[k] === "number" ? r[k] : 0));
    table.tBodies[0].replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      for (const [a, k] of attrs) tr.setAttribute("data-" + a, String(r[k]));
      for (const [k, f] of cols) {
        const td = document.createElement("td");
        if (f === "bar") td.appendChild(bar(r[k], top[k])); else td.textContent = cell(r[k], f);
        tr.appendChild(td);
      }
      return tr;
    }));
  }
  function drawChart(chart, rounds) {
    const W = chart.viewBox.baseVal.width, H = chart.viewBox.baseVal.height;
    const pad = Number(chart.dataset.pad), g = chart.querySelector("#accuracy-points");
    const pts = rounds.filter((r) => r.mean_accuracy !== null);
    const kids = [], r1 = (x) => Math.round(x * 10) / 10;
    if (!pts.length) {
      kids.push(svg("text", {class: "axis", x: W / 2, y: H / 2, "text-anchor": "middle"},
        "no accuracy reported yet"));
    } else {
      const lo = pts[0].round, hi = pts[pts.length - 1].round;
      const xy = pts.map((p) => [p,
        r1(pad + (hi > lo ? (W - 2 * pad) * (p.round - lo) / (hi - lo) : (W - 2 * pad) / 2)),
        r1(H - pad - p.mean_accuracy * (H - 2 * pad))]);
      const line = xy.map(([, x, y]) => x + "," + y).join(" ");
      kids.push(svg("polyline", {class: "line", points: line}));
      for (const [p, x, y] of xy) {
        const c = svg("circle", {"data-round": p.round,
          "data-accuracy": p.mean_accuracy.toFixed(3), cx: x, cy: y, r: 4});
        c.appendChild(svg("title", {}, "round " + p.round + ": " + p.mean_accuracy.toFixed(3)));
        kids.push(c);
      }
      for (const [p, x] of xy.length > 1 ? [xy[0], xy[xy.length - 1]] : xy)
        kids.push(svg("text", {class: "axis", x: x, y: H - pad + 18, "text-anchor": "middle"},
          "round " + p.round));
    }
    g.replaceChildren(...kids);
  }
  async function refresh() {
    const status = document.getElementById("status");
    try {
      const res = await fetch("/api/state", {cache: "no-store"});
      if (!res.ok) throw new Error("HTTP " + res.status);
      const s = await res.json();
      for (const t of document.querySelectorAll("table[data-key]")) fillTable(t, s[t.dataset.key]);
      drawChart(document.getElementById("accuracy-chart"), s.rounds);
      const online = s.devices.filter((d) => d.state === "online").length;
      status.textContent = "ledger height " + s.height + ", tip " + (s.tip || DASH) + "; " +
        online + " of " + s.devices_total + " devices online; updated " +
        new Date().toLocaleTimeString();
    } catch (err) {
      status.textContent = "refresh failed (" + err.message + "); showing the last state";
    }
  }
  setInterval(refresh, __REFRESH_MS__);
})();
"""


# --------------------------------------------------------------------------- the server


def _csp(nonce: str) -> str:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


_TEXT = "text/plain; charset=utf-8"
Response = tuple[int, str, bytes, dict[str, str]]


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of ``/`` and ``/api/state``; 405 for other methods. Never raises."""

    server: _HTTPServer
    server_version = "edge-swarm-dashboard"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S
    # Answer even a malformed or HTTP/0.9 request with a status line and our headers.
    default_request_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _not_allowed(self) -> None:
        self.close_connection = True  # the unread body must not be parsed as a request
        self._send((405, _TEXT, b"read-only: GET and HEAD only\n", {"Allow": "GET, HEAD"}))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _serve(self) -> None:
        path = urlsplit(self.path).path
        try:
            response = self.server.dashboard.respond(path)
        except Exception as exc:
            log.error("dashboard: GET %s failed: %r", _cut(path, 80), exc)
            response = (500, _TEXT, b"internal error, see the gateway's log\n", {})
        self._send(response)

    def _send(self, response: Response) -> None:
        status, ctype, body, extra = response
        try:
            self.send_response(status)
            headers = {
                "Content-Type": ctype,
                "Content-Length": str(len(body)),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                **extra,
            }
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD" and status >= 200 and status not in (204, 304):
                self.wfile.write(body)
        except OSError as exc:  # the client went away; nothing to tell it
            log.debug("dashboard: client %s gone: %r", self.client_address[0], exc)
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (400, 414, 431, 501): the same short, uncached reply."""
        self.close_connection = True
        text = f"{code} {_cut(message or self.responses.get(code, ('error',))[0], 80)}\n"
        self._send((code, _TEXT, text.encode("utf-8", "replace"), {}))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard: %s " + format, self.client_address[0], *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks stop()
    dashboard: DashboardServer
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        # A gateway is a small board: past `slots` clients, drop the connection instead of
        # starting one more thread for it.
        if not self.slots.acquire(blocking=False):
            log.debug("dashboard: busy, dropping a connection from %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("dashboard: request from %s failed", client_address[0], exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class DashboardServer:
    """Serves a `DashboardSource` over HTTP on a daemon thread: ``/`` and ``/api/state``.

    `host` is the address to bind ("0.0.0.0" or the gateway's LAN address on a site; the
    default keeps it on this machine); `port` 0 picks a free one, read back from `.port`
    after `start()`. At most `max_clients` connections are served at once.
    """

    def __init__(
        self,
        source: DashboardSource,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.source = source
        self.host = host
        self._port = port
        self.max_clients = max_clients
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started, else the one asked for."""
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> DashboardServer:
        """Bind and serve; returns self. Raises OSError if the address cannot be bound."""
        if self._httpd is not None:
            raise RuntimeError("dashboard server already started")
        cls = _HTTPServer6 if ":" in self.host else _HTTPServer
        self._httpd = cls((self.host, self._port), _Handler)
        self._httpd.dashboard = self
        self._httpd.slots = threading.BoundedSemaphore(self.max_clients)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="es-dashboard"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("dashboard on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket (idempotent); waits up to `timeout` seconds."""
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def respond(self, path: str) -> Response:
        """(status, content type, body, extra headers) for a GET of `path`. Raises whatever
        the source raises; the handler turns that into a 500."""
        if path == "/":
            nonce = secrets.token_urlsafe(16)
            body = render_page(self.source.state(), nonce).encode()
            response = (
                200,
                "text/html; charset=utf-8",
                body,
                {"Content-Security-Policy": _csp(nonce)},
            )
        elif path == "/api/state":
            text = json.dumps(self.source.state(), allow_nan=False, separators=(",", ":"))
            response = (200, "application/json", text.encode(), {})
        else:
            return 404, _TEXT, b"not found\n", {}
        if len(response[2]) > MAX_BODY:
            log.error("dashboard: %s would be %d bytes, over MAX_BODY", path, len(response[2]))
            return 500, _TEXT, b"response too large\n", {}
        return response
