"""Campaigns as a ledger fold, and the coordinator opening rounds only while one allows."""

from __future__ import annotations

from typing import Any

import pytest

from edge_swarm.swarm import protocol as P
from edge_swarm.swarm.campaign import (
    Cadence,
    CampaignBook,
    CampaignError,
    CampaignSettings,
)
from edge_swarm.swarm.convergence import StopRule

H0, H1 = "0" * 64, "1" * 64
S = "5" * 64
AGENTS = ["a", "b"]


def book(rounds: int | None = 2, **kw: Any) -> CampaignBook:
    return CampaignBook(CampaignSettings(rounds, **kw))


def play_round(b: CampaignBook, rnd: int) -> None:
    b.fold("round_open", "gw", {"round": rnd, "base_model_hash": H0, "deadline_ms": 1})
    b.fold("model_final", "gw", {"round": rnd, "model_hash": H1, "state_hash": S})


def op(**payload: Any) -> tuple[str, str, dict[str, Any]]:
    return ("campaign", "admin", payload)


# --------------------------------------------------------------------------- the fold


def test_a_budget_is_spent_then_extended_paused_resumed_and_ended() -> None:
    b = book(2)
    assert b.current.state == "running" and b.why_not_open() is None
    play_round(b, 1)
    play_round(b, 2)
    assert b.current.state == "spent"
    assert b.why_not_open() == "campaign 1 spent its budget of 2 rounds"
    assert b.fold(*op(op="extend", rounds=2)) == "campaign 1 extended by 2 (budget 4 rounds now)"
    assert (b.current.state, b.current.remaining) == ("running", 2)
    assert b.fold(*op(op="pause", reason="ward move")) == "campaign 1 paused: ward move"
    assert b.why_not_open() == "campaign 1 is paused: ward move"
    b.fold(*op(op="resume"))
    assert b.why_not_open() is None
    b.fold(*op(op="end", reason="enough"))
    assert b.current.state == "ended" and b.current.ended_by == "admin"
    assert b.why_not_open() == "campaign 1 ended: enough"


def test_an_entry_that_does_not_apply_changes_nothing_and_says_why() -> None:
    b = book(None)
    before = b.current
    assert b.refusal({"op": "extend", "rounds": 3}) == (
        "campaign 1 is open-ended; it has no budget to extend"
    )
    assert b.fold(*op(op="extend", rounds=3)).startswith("campaign extend changes nothing")
    assert b.refusal({"op": "resume"}) == "campaign 1 is not paused"
    assert b.fold(*op(op="resume")).endswith("campaign 1 is not paused")
    assert b.current == before
    b.fold(*op(op="end", reason="x"))
    for payload in ({"op": "pause"}, {"op": "end"}, {"op": "resume"}):
        assert b.refusal(payload) == "campaign 1 has ended; `campaign new` starts another"
    assert b.refusal({"op": "new"}) is None
    assert b.refusal("garbage") == "a campaign payload is an object"


def test_an_open_ended_campaign_never_spends_its_budget() -> None:
    b = book(None)
    for rnd in range(1, 60):
        play_round(b, rnd)
    assert b.current.state == "running" and b.current.remaining is None
    assert b.current.opened == b.current.finished == 59


def test_a_new_campaign_starts_from_the_current_model_and_the_round_in_flight_stays_old() -> None:
    b = book(2)
    play_round(b, 1)
    b.fold("round_open", "gw", {"round": 2, "base_model_hash": H0, "deadline_ms": 1})
    assert b.fold(*op(op="new", rounds=3, reason="new data")) == (
        "campaign 2 started (budget 3 rounds): new data"
    )
    assert (b.current.number, b.current.after_round, b.current.opened) == (2, 2, 0)
    b.fold("model_final", "gw", {"round": 2, "model_hash": H1, "state_hash": S})
    old = b.past[1]
    assert (old.opened, old.finished, old.state) == (2, 2, "ended")
    assert old.ended == "superseded by campaign 2"
    assert b.current.finished == 0
    b.fold(*op(op="new"))  # open-ended
    assert (b.current.number, b.current.budget, b.current.state) == (3, None, "running")


def test_a_void_round_counts_and_a_second_open_of_a_round_does_not() -> None:
    b = book(2)
    b.fold("round_open", "gw", {"round": 1, "base_model_hash": H0, "deadline_ms": 1})
    b.fold("round_open", "gw2", {"round": 1, "base_model_hash": H0, "deadline_ms": 2})
    b.fold("round_close", "gw", {"round": 1, "included": [], "reason": "deadline"})
    assert (b.current.opened, b.current.finished) == (1, 1)


def test_the_settings_read_from_the_genesis() -> None:
    s = CampaignSettings.from_params(
        {"rounds": None, "cadence_s": 1.5, "stop": {"patience": 3, "min_delta": 0.005}}
    )
    assert s == CampaignSettings(None, 1500, StopRule(3, 0.005))
    assert CampaignSettings.from_params({}) == CampaignSettings(None, 0, None)
    assert CampaignSettings.from_params({"rounds": 20.0}).rounds == 20
    for params in ({"rounds": 0}, {"rounds": "5"}, {"cadence_s": -1}, {"cadence_s": "1"}):
        with pytest.raises(CampaignError):
            CampaignSettings.from_params(params)
    with pytest.raises(ValueError, match="rounds must be an int >= 1 or null"):
        P.RoundPolicy.from_params({"rounds": True})


def test_the_cadence_counts_on_the_monotonic_clock_and_again_after_a_restart() -> None:
    c = Cadence(1000)
    c.opened(5_000)
    assert not c.ready(5_999) and c.ready(6_000)
    assert not c.ready(None)
    c.restart()  # another process: its last opening is not on our clock
    assert not c.ready(100) and not c.ready(1_099) and c.ready(1_100)
    assert Cadence(0).ready(None)


# --------------------------------------------------------------------------- the coordinator


def coordinator(**kw: Any) -> P.Coordinator:
    policy = P.RoundPolicy(
        **{"min_peers": 2, "round_deadline_ms": 1000, "attest_timeout_ms": 500, **kw}
    )
    c = P.Coordinator(policy, H0, started_ms=0)
    for a in AGENTS:
        c.handle(P.Appended("enroll", "admin", {"node": a, "role": "agent"}, 0))
        c.handle(P.PeerSeen(a, True))
    return c


class Ledger:
    """What the wiring does: every Append the coordinator asks for lands on the ledger, and
    is fed back as Appended; the log replays into another coordinator."""

    def __init__(self, c: P.Coordinator) -> None:
        self.c = c
        self.log: list[P.Appended] = []
        self.out: list[P.Action] = []

    def feed(self, ev: P.Appended) -> list[P.Action]:
        self.log.append(ev)
        actions = self.c.handle(ev)
        self.out += actions
        return actions

    def append(self, action: P.Action, author: str = "gw") -> list[P.Action]:
        assert isinstance(action, P.Append), action
        return self.feed(P.Appended(action.kind, author, action.payload, 0))

    def admin(self, **payload: Any) -> list[P.Action]:
        return self.feed(P.Appended("campaign", "admin", payload, 0))

    def tick(self, now: int, mono: int | None = None) -> list[P.Action]:
        actions = self.c.handle(P.Tick(now, mono_ms=now if mono is None else mono))
        self.out += actions
        return actions

    def round(self, now: int, metrics: dict[str, Any] | None = None) -> int:
        """Open (at tick ``now``), commit, close, merge, attest and finalise one round."""
        (opening,) = self.tick(now)
        assert opening.kind == "round_open", opening
        self.append(opening)
        rnd = opening.payload["round"]
        close: list[P.Action] = []
        for a in AGENTS:
            m = dict(metrics or {})
            commit = {
                "round": rnd,
                "node": a,
                "envelope_sha256": "ab" * 32,
                "n_samples": 10,
                "metrics": m,
            }
            close = self.feed(P.Appended("delta_commit", a, commit, 0))
        self.append(close[0])
        attest = self.c.handle(P.MergeDone(rnd, H1, S))
        self.append(attest[0])
        for a in AGENTS:
            final = self.feed(P.Appended("model_attest", a, attest[0].payload, 0))
        self.append(final[0])
        return rnd


def test_the_coordinator_stops_at_the_budget_and_goes_on_when_extended() -> None:
    c = coordinator(rounds=1)
    led = Ledger(c)
    assert led.round(10) == 1
    assert P.SwarmDone(1, "campaign 1 spent its budget of 1 rounds") in led.out
    assert led.tick(99_999) == [] and c.done
    assert led.admin(op="extend", rounds=2) == []  # opens at the next tick
    assert not c.done
    assert led.round(100_000) == 2 and led.round(100_001) == 3
    assert led.tick(200_000) == [] and c.done


def test_pause_lets_the_open_round_finish_and_opens_no_other_until_resumed() -> None:
    c = coordinator(rounds=None)
    led = Ledger(c)
    led.round(10)
    (opening,) = led.tick(20)
    led.append(opening)
    assert led.admin(op="pause", reason="maintenance") == []
    for a in AGENTS:  # round 2 goes on to its end
        commit = {"round": 2, "node": a, "envelope_sha256": "ab" * 32, "n_samples": 1}
        close = led.feed(P.Appended("delta_commit", a, {**commit, "metrics": {}}, 0))
    assert close[0].kind == "round_close"
    led.append(close[0])
    attest = c.handle(P.MergeDone(2, H1, S))
    led.append(attest[0])
    for a in AGENTS:
        final = led.feed(P.Appended("model_attest", a, attest[0].payload, 0))
    assert not any(isinstance(x, P.SwarmDone) for x in led.append(final[0]))  # paused != done
    assert led.tick(50_000) == [] and not c.done
    assert c.admit("campaign", "admin", {"op": "pause"}, 0, 0) == ("campaign 1 is already paused")
    led.admin(op="resume")
    assert led.round(50_001) == 3


def test_end_stops_opening_and_says_why_once() -> None:
    c = coordinator(rounds=None)
    led = Ledger(c)
    led.round(10)
    actions = led.admin(op="end", reason="the study is over")
    assert actions == [P.SwarmDone(1, "campaign 1 ended: the study is over")]
    assert led.tick(99_999) == [] and led.tick(199_999) == []
    assert c.admit("campaign", "admin", {"op": "extend", "rounds": 1}, 0, 0) == (
        "campaign 1 has ended; `campaign new` starts another"
    )
    led.admin(op="new", rounds=1)
    assert led.round(200_000) == 2
    assert led.out[-1] == P.SwarmDone(2, "campaign 2 spent its budget of 1 rounds")


def test_the_coordinator_ends_a_converged_campaign_with_the_reason() -> None:
    stop = StopRule(patience=2, min_delta=0.01)
    c = coordinator(rounds=None, stop=stop)
    led = Ledger(c)
    # Each round's commits score the model the round started from (the last final one).
    for now, acc in ((10, 0.5), (20, 0.8), (30, 0.805), (40, 0.801)):
        led.round(now, {"val_acc": acc, "val_n": 20})
    (end,) = led.tick(50)
    assert end == P.Append(
        "campaign",
        {
            "op": "end",
            "reason": "converged: mean validation accuracy improved < 0.01 for 2 rounds "
            "(best 0.8000, model of round 1)",
        },
    )
    assert led.tick(51) == []  # in flight: asked once
    assert led.append(end) == [P.SwarmDone(4, "campaign 1 ended: " + end.payload["reason"])]
    assert led.tick(60) == []
    # A new campaign (new data, say) is judged on its own rounds: it trains again, and the
    # rule ends it once its own rounds stop improving (the model it started from counts).
    led.admin(op="new", reason="new data")
    for now, acc in ((70, 0.79), (80, 0.9), (90, 0.9), (100, 0.9)):
        assert led.round(now, {"val_acc": acc})
    (end,) = led.tick(110)
    assert end.payload["reason"].endswith("for 2 rounds (best 0.9000, model of round 5)")


def test_a_restarted_coordinator_rebuilds_the_same_campaign_from_the_ledger() -> None:
    c = coordinator(rounds=2, stop=StopRule(patience=5))
    led = Ledger(c)
    led.round(10, {"val_acc": 0.4})
    led.admin(op="extend", rounds=3)
    led.round(20, {"val_acc": 0.6})
    led.admin(op="pause", reason="night")
    led.admin(op="resume")
    led.round(30, {"val_acc": 0.7})
    led.admin(op="pause", reason="again")

    again = coordinator(rounds=2, stop=StopRule(patience=5))
    again.replaying = True
    for ev in led.log:
        assert again.handle(ev) == []
    again.finish_replay()
    assert again.campaign.status() == c.campaign.status()
    assert again.campaign.status()["state"] == "paused"
    assert again.campaign.status()["means"] == {0: 0.4, 1: 0.6, 2: 0.7}
    assert again.handle(P.Tick(99_999, mono_ms=99_999)) == []  # still paused


def test_rounds_open_no_sooner_than_the_cadence_on_the_monotonic_clock() -> None:
    c = coordinator(rounds=None, cadence_ms=5_000)
    led = Ledger(c)
    led.round(10)  # the first round does not wait for the cadence
    assert led.tick(20, mono=4_000) == []
    assert led.tick(9_999_999, mono=5_009) == []  # the wall clock jumped: no matter
    assert led.tick(30, mono=5_010)[0].kind == "round_open"


def test_a_cadence_without_a_monotonic_reading_opens_nothing_after_the_first() -> None:
    c = coordinator(rounds=None, cadence_ms=1)
    led = Ledger(c)
    led.round(10)
    assert c.handle(P.Tick(1_000_000)) == []
