"""A read-only dashboard that a site gateway serves on the LAN: devices, rounds, accuracy per
round, contribution per device and the ledger's tail, as one self-contained HTML page and as
JSON.

How it works
------------
`DashboardSource` (here) folds the gateway's ledger into views. It remembers the height and
hash of the last entry it folded, so a call folds only what was appended since. Entries that
belong to a round are kept per round, and a round that gained one is re-audited with
`edge_swarm.swarm.audit.audit_rounds` (the fold ``edge-swarm audit`` prints), so the dashboard and
the audit never disagree about who contributed what. Per-device totals are sums of per-round
shares: re-auditing a round swaps its share instead of recounting every round. The device
table comes fresh from the `devices()` callable on every call.

The rest is in three sibling modules, one concern each, imported one way
(views <- page <- server <- here):

- `edge_swarm.dashboard.views`: the frozen view types (`DeviceRow`, `RoundView`, ...), the
  text caps and `summarize`; pure.
- `edge_swarm.dashboard.page`: `render_page`, the HTML with its CSS and the script that
  re-renders it from ``/api/state`` every `REFRESH_S` seconds; pure.
- `edge_swarm.dashboard.server`: `DashboardServer`, the stdlib HTTP server on a daemon
  thread; the only part with sockets.

This module re-exports their public names, so ``from edge_swarm.dashboard.source import
DashboardServer`` and the like keep working.

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

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from edge_swarm.dashboard.views import (
    HASH_CHARS,
    ID_CHARS,
    TAIL,
    Contribution,
    DeviceRow,
    LedgerLine,
    RoundView,
    _cut,
    _shares,
    validation_series,
)
from edge_swarm.swarm.audit import audit_rounds, site_scores
from ledger_lite import Entry
from ledger_lite.entry import is_uint

log = logging.getLogger(__name__)

MAX_ROUNDS = 200
"""Most recent rounds in the round table and the chart."""
MAX_DEVICES = 500
"""Most devices (and contributors) listed; a site has tens."""
_ROUND_KINDS = frozenset({"round_open", "delta_commit", "round_close", "model_final"})

EntriesFn = Callable[[], Sequence[Entry]]
DevicesFn = Callable[[], Mapping[str, Mapping[str, Any]]]


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
        # round -> site -> (val_acc, val_n): each site's score of that round's final model,
        # which arrives with a later round's commits (docs/VALIDATION.md)
        self._val: dict[int, dict[str, tuple[float, int]]] = {}

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
            rounds = [self._scored(self._rounds[r]) for r in sorted(self._rounds)[-MAX_ROUNDS:]]
            contributions = [Contribution(n, r, s) for n, (r, s) in self._totals.items() if r]
            contributions.sort(key=lambda c: (-c.samples, c.node))
            return {
                "swarm": self._swarm,
                "height": self._height,
                "tip": self._tip[:HASH_CHARS],
                "devices_total": len(devices),
                "devices": [asdict(d) for d in devices[:MAX_DEVICES]],
                "rounds": [r.to_dict() for r in rounds],
                "validation": (val := validation_series(self._val)),
                "validation_sites": val["sites"],
                "contributions": [asdict(c) for c in contributions[:MAX_DEVICES]],
                "ledger_tail": [asdict(line) for line in reversed(self._tail)],  # newest first
            }

    def _scored(self, view: RoundView) -> RoundView:
        """A round's view with its sites' scores of its final model, as reported so far."""
        val = self._val.get(view.round)
        if not val:
            return view
        worst = min(val, key=lambda n: (val[n][0], n))
        mean = sum(a for a, _ in val.values()) / len(val)
        return replace(
            view, val_mean=mean, val_worst=f"{_cut(worst, ID_CHARS)} {val[worst][0]:.3f}"
        )

    def _fold(self, e: Entry, touched: set[int]) -> None:
        self._height, self._tip, self._swarm = e.height, e.hash, e.swarm
        self._tail.append(LedgerLine.of(e))
        for score in site_scores(e):
            self._val.setdefault(score.round, {})[score.node] = (score.val_acc, score.val_n)
        while len(self._val) > MAX_ROUNDS + 1:  # bounded, however long the swarm runs
            del self._val[min(self._val)]
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
