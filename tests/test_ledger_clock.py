"""The ledger clock: a device's monotonic clock plus the offset its gateways' entries give."""

from __future__ import annotations

import pytest

from edge_swarm.swarm.ledger_clock import TOLERATED_SKEW_MS, LedgerClock

T = 1_700_000_000_000  # the gateway's clock, ms
DAY = 86_400_000


def test_before_any_entry_it_has_no_reading_and_stamps_the_wall_clock() -> None:
    c = LedgerClock()
    assert not c.synced
    assert c.read(5_000) is None and c.skew_ms(5_000, T) is None
    assert c.stamp(5_000, T + 123) == T + 123


def test_history_raises_the_stamp_of_a_clock_behind_but_never_lowers_one_ahead() -> None:
    c = LedgerClock()
    c.not_before(T)
    c.not_before(T - 10)  # an older entry changes nothing
    assert c.stamp(5_000, T - DAY) == T  # a day behind: at least the newest entry's time
    assert c.stamp(5_000, T + 600_000) == T + 600_000  # ahead: nothing to tell from history
    assert not c.synced  # history gives no offset


def test_a_live_entry_sets_the_offset_and_the_clock_runs_on_monotonic_time() -> None:
    c = LedgerClock()
    c.observe(T, 5_000)
    assert c.synced
    assert c.read(5_000) == T and c.read(65_000) == T + 60_000
    # The wall clock plays no part in the stamp once synced, whatever it reads.
    for wall in (T + 600_000, T - DAY, 0):
        assert c.stamp(65_000, wall) == T + 60_000


def test_the_newest_entry_wins_so_a_gateway_whose_time_was_set_is_followed() -> None:
    c = LedgerClock()
    c.observe(T, 5_000)
    c.observe(T + 1_000, 6_000)
    assert c.read(7_000) == T + 2_000
    c.observe(T - 3_600_000, 8_000)  # the gateway's clock was set back an hour
    assert c.read(9_000) == T - 3_600_000 + 1_000
    assert c.stamp(9_000, T) == T - 3_599_000


@pytest.mark.parametrize("skew", [600_000, -DAY, 0, 1_500])
def test_skew_is_the_wall_clock_minus_the_ledger_clock(skew: int) -> None:
    c = LedgerClock()
    c.observe(T, 5_000)
    assert c.skew_ms(65_000, T + 60_000 + skew) == skew


def test_a_skew_beyond_the_tolerance_is_reported_once() -> None:
    c = LedgerClock()
    assert c.skew_to_report(0, T) is None  # not synced: nothing known
    c.observe(T, 0)
    assert c.skew_to_report(0, T + TOLERATED_SKEW_MS) is None  # within tolerance
    assert c.skew_to_report(0, T - DAY) == -DAY
    assert c.skew_to_report(0, T - DAY) is None  # said once
    assert c.skew_to_report(0, T + 600_000) is None
    assert c.skew_ms(0, T + 600_000) == 600_000  # still known (telemetry reports it)


def test_a_stamp_is_never_negative() -> None:
    c = LedgerClock()
    c.observe(10, 5_000)  # a gateway whose clock starts at the epoch
    assert c.stamp(0, T) == 0
