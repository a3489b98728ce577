"""The dashboard's HTML page: tables and an SVG chart rendered on the server, plus a small
inline script that re-renders the same elements from ``/api/state``.

How it works
------------
`render_page` turns the dict that `edge_swarm.dashboard.source.DashboardSource.state` returns
into one self-contained page, so the page shows everything without JavaScript. The script
fetches ``/api/state`` every `REFRESH_S` seconds and redraws the tables and the chart in
place. Each table's columns and formats are declared once (`_TABLES`) and handed to the
script as data attributes, and the chart's geometry is read back from the SVG, so the two
renderings agree. The page lives apart from the server so that it is a pure function of
the state and a nonce, testable without a socket.

Invariants
----------
- Nothing from the ledger or the devices reaches the page unescaped: Python writes it
  through `html.escape`, the script only through ``textContent`` and attribute values,
  never ``innerHTML``. The page's own <style> and <script> carry the caller's CSP nonce,
  so an injected ``<script>`` would not run.
- No external resources (fonts, scripts, images): the LAN at a clinic is offline.
- `_cell` here and ``cell()`` in `_SCRIPT` format a value the same way; so do
  `chart_series` and ``drawChart()`` (one line a site, then the dashed mean). Change them
  together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from edge_swarm.dashboard.views import PALETTE, TAIL, _number

REFRESH_S = 5
"""How often the page's script fetches ``/api/state`` (seconds)."""


@dataclass(frozen=True)
class _Column:
    title: str
    key: str
    fmt: str = "text"  # text | f1 | f3 | list | bar | swatch: `_cell` and cell() agree


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
            _C("val acc", "val_acc", "f3"),
            _C("serving", "serving"),
            _C("sent bytes", "bytes_out"),
            _C("CPU °C", "cpu_temp_c", "f1"),
            _C("clock skew s", "clock_skew_s", "f1"),
        ),
    ),
    _Table(
        "validation-sites",
        "Validation per site (the chart's legend)",
        "validation_sites",
        (("site", "site"),),
        (
            _C("", "color", "swatch"),
            _C("site", "site"),
            _C("held-out samples", "val_n"),
            _C("latest round scored", "latest_round"),
            _C("its accuracy", "latest", "f3"),
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
            _C("site validation (mean)", "val_mean", "f3"),
            _C("worst site", "val_worst"),
            _C("samples", "samples"),
            _C("privacy spent ε", "epsilon", "f3"),
            _C("down-weighted by the merge rule", "down_weighted", "list"),
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


def _swatch(color: Any) -> str:
    fill = color if color in PALETTE else PALETTE[-1]  # only our own colours reach the page
    rect = f'<rect width="12" height="12" fill="{fill}"></rect>'
    return f'<svg class="swatch" width="12" height="12">{rect}</svg>'


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
            else f"<td>{_swatch(r.get(c.key))}</td>"
            if c.fmt == "swatch"
            else f"<td>{escape(_cell(r.get(c.key), c.fmt))}</td>"
            for c in t.columns
        )
        body.append(f"<tr{attr}>{cells}</tr>")
    return (
        f'<table id="{t.id}" data-key="{t.key}" data-cols="{escape(cols)}" '
        f'data-attrs="{escape(attrs)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def chart_series(val: Mapping[str, Any]) -> list[tuple[str, list[tuple[int, float, float, float]]]]:
    """(site, [(round, accuracy, x, y)]) for each site of ``state["validation"]``, then
    ("", the mean's points); x spans the rounds shown, y maps accuracy 0..1 to the bottom..top
    of the plot. Rounds a site did not report are skipped (its line joins the ones around)."""
    rounds = list(val.get("rounds") or [])
    if not rounds:
        return []
    lo, hi = rounds[0], rounds[-1]
    span_x, span_y = CHART_W - 2 * CHART_PAD, CHART_H - 2 * CHART_PAD

    def points(accs: Sequence[Any]) -> list[tuple[int, float, float, float]]:
        out = []
        for rnd, acc in zip(rounds, accs, strict=False):
            if acc is None:
                continue
            x = CHART_PAD + (span_x * (rnd - lo) / (hi - lo) if hi > lo else span_x / 2)
            out.append((rnd, acc, round(x, 1), round(CHART_H - CHART_PAD - acc * span_y, 1)))
        return out

    series = [(s["site"], points(s["acc"])) for s in val.get("sites") or []]
    return [*series, ("", points(val.get("mean") or []))]


def _render_chart(val: Mapping[str, Any]) -> str:
    """Each site's held-out accuracy of each round's final model, one line a site plus their
    mean (dashed): static axes, and a ``#accuracy-points`` group the script redraws with the
    same geometry."""
    axes = []
    for acc in (0.0, 0.5, 1.0):
        y = CHART_H - CHART_PAD - acc * (CHART_H - 2 * CHART_PAD)
        axes.append(
            f'<line class="grid" x1="{CHART_PAD}" x2="{CHART_W - CHART_PAD}" y1="{y}" y2="{y}">'
            f'</line><text class="axis" x="{CHART_PAD - 6}" y="{y + 4}" '
            f'text-anchor="end">{acc:.1f}</text>'
        )
    series = chart_series(val)
    dyn = []
    for i, (site, pts) in enumerate(series):
        if not pts:
            continue
        line = " ".join(f"{x},{y}" for _, _, x, y in pts)
        if not site:  # the mean
            dyn.append(f'<polyline class="mean" points="{line}"></polyline>')
            continue
        color = PALETTE[i % len(PALETTE)]
        dyn.append(
            f'<polyline class="site" data-site="{escape(site)}" stroke="{color}" '
            f'points="{line}"></polyline>'
        )
        for rnd, acc, x, y in pts:
            dyn.append(
                f'<circle data-site="{escape(site)}" data-round="{rnd}" '
                f'data-accuracy="{acc:.3f}" cx="{x}" cy="{y}" r="3" fill="{color}">'
                f"<title>{escape(site)}, round {rnd}: {acc:.3f}</title></circle>"
            )
    rounds = list(val.get("rounds") or [])
    if rounds:
        for rnd, x in _round_ticks(rounds):
            dyn.append(
                f'<text class="axis" x="{x}" y="{CHART_H - CHART_PAD + 18}" '
                f'text-anchor="middle">round {rnd}</text>'
            )
    else:
        dyn.append(
            f'<text class="axis" x="{CHART_W / 2}" y="{CHART_H / 2}" text-anchor="middle">'
            "no validation reported yet</text>"
        )
    return (
        f'<svg id="accuracy-chart" viewBox="0 0 {CHART_W} {CHART_H}" width="{CHART_W}" '
        f'height="{CHART_H}" data-pad="{CHART_PAD}" data-palette="{",".join(PALETTE)}" '
        f'role="img" aria-label="held-out accuracy of each round\'s model on each site">'
        f'{"".join(axes)}<g id="accuracy-points">{"".join(dyn)}</g></svg>'
    )


def _round_ticks(rounds: Sequence[int]) -> list[tuple[int, float]]:
    lo, hi = rounds[0], rounds[-1]
    if hi == lo:
        return [(lo, CHART_PAD + (CHART_W - 2 * CHART_PAD) / 2)]
    return [(lo, float(CHART_PAD)), (hi, float(CHART_W - CHART_PAD))]


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
    chart = _render_chart(state["validation"])
    title = "Validation: each round's model on each site's held-out data (dashed: the mean)"
    parts.insert(1, ("chart", title, chart))  # under the devices
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
svg .grid{stroke:var(--line)}svg .site{fill:none;stroke-width:1.5}
svg .mean{fill:none;stroke:var(--fg);stroke-width:2;stroke-dasharray:6 4}
svg.bar rect{fill:var(--accent)}
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
  function swatch(color) {
    const palette = document.getElementById("accuracy-chart").dataset.palette.split(",");
    const s = svg("svg", {class: "swatch", width: 12, height: 12});
    s.appendChild(svg("rect", {width: 12, height: 12,
      fill: palette.includes(color) ? color : palette[palette.length - 1]}));
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
        if (f === "bar") td.appendChild(bar(r[k], top[k]));
        else if (f === "swatch") td.appendChild(swatch(r[k]));
        else td.textContent = cell(r[k], f);
        tr.appendChild(td);
      }
      return tr;
    }));
  }
  function drawChart(chart, val) {
    const W = chart.viewBox.baseVal.width, H = chart.viewBox.baseVal.height;
    const pad = Number(chart.dataset.pad), g = chart.querySelector("#accuracy-points");
    const palette = chart.dataset.palette.split(","), rounds = val.rounds || [];
    const kids = [], r1 = (x) => Math.round(x * 10) / 10;
    if (!rounds.length) {
      kids.push(svg("text", {class: "axis", x: W / 2, y: H / 2, "text-anchor": "middle"},
        "no validation reported yet"));
      g.replaceChildren(...kids);
      return;
    }
    const lo = rounds[0], hi = rounds[rounds.length - 1];
    const X = (r) => r1(pad + (hi > lo ? (W - 2 * pad) * (r - lo) / (hi - lo) : (W - 2 * pad) / 2));
    const Y = (a) => r1(H - pad - a * (H - 2 * pad));
    const pts = (accs) => rounds.map((r, i) => [r, accs[i]]).filter(([, a]) =>
      a !== null && a !== undefined);
    val.sites.forEach((s, i) => {
      const p = pts(s.acc), color = palette[i % palette.length];  // as the legend's swatch
      if (!p.length) return;
      kids.push(svg("polyline", {class: "site", "data-site": s.site, stroke: color,
        points: p.map(([r, a]) => X(r) + "," + Y(a)).join(" ")}));
      for (const [r, a] of p) {
        const c = svg("circle", {"data-site": s.site, "data-round": r,
          "data-accuracy": a.toFixed(3), cx: X(r), cy: Y(a), r: 3, fill: color});
        c.appendChild(svg("title", {}, s.site + ", round " + r + ": " + a.toFixed(3)));
        kids.push(c);
      }
    });
    const m = pts(val.mean || []);
    if (m.length) kids.push(svg("polyline", {class: "mean",
      points: m.map(([r, a]) => X(r) + "," + Y(a)).join(" ")}));
    for (const r of hi > lo ? [lo, hi] : [lo])
      kids.push(svg("text", {class: "axis", x: hi > lo ? (r === lo ? pad : W - pad) : W / 2,
        y: H - pad + 18, "text-anchor": "middle"}, "round " + r));
    g.replaceChildren(...kids);
  }
  async function refresh() {
    const status = document.getElementById("status");
    try {
      const res = await fetch("/api/state", {cache: "no-store"});
      if (!res.ok) throw new Error("HTTP " + res.status);
      const s = await res.json();
      for (const t of document.querySelectorAll("table[data-key]")) fillTable(t, s[t.dataset.key]);
      drawChart(document.getElementById("accuracy-chart"), s.validation);
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
