"""The swarm's clock as a device reads it: its own monotonic clock plus an offset learnt from
the gateways' ledger entries.

Why
---
A Raspberry Pi has no hardware clock and a clinic LAN often has no internet time: after a
power cut a device boots with whatever time it last saved. Nothing a device decides or signs
may rest on that wall clock. Durations (a round's training window) run on the monotonic
clock; timestamps (ledger transactions, status, telemetry) come from this clock, which reads
what the coordinator's clock reads now, because the coordinator stamps its own entries
(``round_open``, ``round_close``, ``model_final`` …) with it and bounds every submission's
timestamp against it (``coordinator.MAX_CLOCK_SKEW_MS``).

How it works
------------
* ``observe(ts, seen)``: a gateway-authored entry stamped ``ts`` arrived live when the
  device's monotonic clock read ``seen``. The newest such pair sets the offset (ledger time
  = monotonic + offset): delivery on a LAN takes milliseconds, far under what the protocol
  tolerates, and following the newest entry follows a gateway whose clock was set or stepped.
* ``not_before(ts)``: a gateway entry read from history (a ledger copy at start): no offset
  can be learnt from it, but the ledger's time is at least ``ts``.
* ``stamp``: the reading once an entry was observed live; before that the wall clock, never
  earlier than the newest history entry (a device that boots a day behind is then at most
  as far behind as that entry is old).

Pure: times come in as arguments (milliseconds); no clock is read and nothing is logged here.
"""

from __future__ import annotations

TOLERATED_SKEW_MS = 60_000
"""A device wall clock further than this from the ledger clock is reported (logged once,
and always in telemetry): well within ``MAX_CLOCK_SKEW_MS``, far beyond NTP's errors."""


class LedgerClock:
    """The ledger's (the coordinator's) time on a device's monotonic clock (module header)."""

    def __init__(self) -> None:
        self._offset: int | None = None  # ledger ms minus monotonic ms, from the newest entry
        self._floor = 0  # the newest gateway timestamp seen, live or from history
        self._reported = False

    def observe(self, ts_ms: int, seen_ms: int) -> None:
        """A gateway's entry stamped ``ts_ms`` arrived live at monotonic ``seen_ms``."""
        self._offset = ts_ms - seen_ms
        self._floor = max(self._floor, ts_ms)

    def not_before(self, ts_ms: int) -> None:
        """A gateway's entry stamped ``ts_ms`` was read from history."""
        self._floor = max(self._floor, ts_ms)

    @property
    def synced(self) -> bool:
        """True once an entry was observed live."""
        return self._offset is not None

    def read(self, mono_ms: int) -> int | None:
        """The ledger's time when the monotonic clock reads ``mono_ms``; None before sync."""
        return None if self._offset is None else mono_ms + self._offset

    def stamp(self, mono_ms: int, wall_ms: int) -> int:
        """The timestamp for what the device signs now: the reading, or before sync the wall
        clock ``wall_ms`` but not earlier than the newest gateway entry seen."""
        now = self.read(mono_ms)
        return max(0, now) if now is not None else max(wall_ms, self._floor)

    def skew_ms(self, mono_ms: int, wall_ms: int) -> int | None:
        """Wall clock minus ledger clock (positive: the device runs ahead); None before sync."""
        now = self.read(mono_ms)
        return None if now is None else wall_ms - now

    def skew_to_report(self, mono_ms: int, wall_ms: int) -> int | None:
        """The skew the first time it is beyond ``TOLERATED_SKEW_MS``, else None: a device
        says it once, not at every entry."""
        skew = self.skew_ms(mono_ms, wall_ms)
        if self._reported or skew is None or abs(skew) <= TOLERATED_SKEW_MS:
            return None
        self._reported = True
        return skew
