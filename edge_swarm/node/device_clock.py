"""A node's clocks, read for real around the pure ``swarm.ledger_clock.LedgerClock``.

A device decides nothing by its wall clock (a Pi boots with the time it last saved): round
windows run on the monotonic clock, and every timestamp it signs (ledger transactions,
status, telemetry, fleet answers) comes from the ledger clock, learnt from the entries the
gateways stamp. The wall clock is read only to tell the operator how far off it is: logged
once when beyond ``TOLERATED_SKEW_MS``, and in every telemetry report as ``clock_skew_s``.

A gateway feeds its ``DeviceClock`` nothing, so its stamps stay its own wall clock, which is
the swarm's (the coordinator bounds submissions against it).
"""

from __future__ import annotations

import logging
import time

from edge_swarm.swarm.ledger_clock import TOLERATED_SKEW_MS, LedgerClock
from ledger_lite import Entry, LedgerState

log = logging.getLogger(__name__)


def _mono_ms() -> int:
    return int(time.monotonic() * 1000)


def _wall_ms() -> int:
    return int(time.time() * 1000)


class DeviceClock:
    """This node's monotonic clock, its ledger clock, and its wall clock's skew."""

    def __init__(self) -> None:
        self.ledger = LedgerClock()

    def readings(self) -> tuple[int, int | None]:
        """(monotonic ms, ledger ms or None before sync): what a ``Participant`` runs on."""
        mono = _mono_ms()
        return mono, self.ledger.read(mono)

    def stamp(self) -> int:
        """The timestamp for what this node signs now (``LedgerClock.stamp``)."""
        return self.ledger.stamp(_mono_ms(), _wall_ms())

    def telemetry(self) -> dict[str, float]:
        """``{"clock_skew_s": wall minus ledger clock}`` once synced, else nothing."""
        skew = self.ledger.skew_ms(_mono_ms(), _wall_ms())
        return {} if skew is None else {"clock_skew_s": round(skew / 1000, 1)}

    def on_entry(self, entry: Entry, state: LedgerState | None, live: bool) -> None:
        """Learn from ``entry`` if a gateway (per ``state``) stamped it; ``live``: it has just
        arrived on ``ledger/events`` (not from a copy of the history)."""
        author = state.member(entry.author) if state is not None else None
        if author is None or author.role != "gateway":
            return
        if not live:
            self.ledger.not_before(entry.ts)
            return
        mono, wall = _mono_ms(), _wall_ms()
        self.ledger.observe(entry.ts, mono)
        skew = self.ledger.skew_to_report(mono, wall)
        if skew is not None:
            log.warning(
                "this device's clock is %.0f s %s the swarm's (the gateways' ledger clock; "
                "tolerated: %d s): rounds and timestamps here follow the ledger clock, but "
                "set the device's time (the site bundle points chrony at the gateway)",
                abs(skew) / 1000,
                "ahead of" if skew > 0 else "behind",
                TOLERATED_SKEW_MS // 1000,
            )
