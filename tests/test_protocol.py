"""The round state machines, driven by hand: no network, no clock but the one we pass."""

from __future__ import annotations

from typing import Any

import pytest

from edge_swarm.swarm import protocol as P
from edge_swarm.swarm.ledger_clock import LedgerClock

H0, H1, H2 = "0" * 64, "1" * 64, "2" * 64
S = "5" * 64


def policy(**kw: Any) -> P.RoundPolicy:
    base = {
        "rounds": 3,
        "min_peers": 2,
        "round_deadline_ms": 1000,
        "attest_timeout_ms": 500,
        "start_grace_ms": 10_000,
    }
    return P.RoundPolicy(**{**base, **kw})


def coordinator(agents: list[str], online: list[str] | None = None, **kw: int) -> P.Coordinator:
    c = P.Coordinator(policy(**kw), H0, started_ms=0)
    for a in agents:
        c.handle(P.Appended("enroll", "admin", {"node": a, "role": "agent"}, 0))
    for a in online if online is not None else agents:
        c.handle(P.PeerSeen(a, True))
    return c


def append(c: P.Coordinator, action: P.Action, ts: int, author: str = "gw") -> list[P.Action]:
    assert isinstance(action, P.Append)
    return c.handle(P.Appended(action.kind, author, action.payload, ts))


def commit(node: str, rnd: int, sha: str = "a" * 64) -> P.Appended:
    payload = {"round": rnd, "node": node, "envelope_sha256": sha, "n_samples": 10, "metrics": {}}
    return P.Appended("delta_commit", node, payload, 0)


def attest(node: str, rnd: int, mh: str) -> P.Appended:
    return P.Appended("model_attest", node, {"round": rnd, "model_hash": mh, "state_hash": S}, 0)


def test_opens_only_when_everyone_is_online_or_grace_is_over() -> None:
    c = coordinator(["a", "b", "c"], online=["a", "b"])
    assert c.handle(P.Tick(100)) == []
    (act,) = c.handle(P.Tick(10_000))
    assert isinstance(act, P.Append) and act.kind == "round_open"
    assert act.payload == {"round": 1, "base_model_hash": H0, "deadline_ms": 11_000}
    assert c.handle(P.Tick(10_001)) == []  # pending: no second open


def test_never_opens_below_min_peers() -> None:
    c = coordinator(["a", "b"], online=["a"])
    assert c.handle(P.Tick(50_000)) == []


def test_closes_when_all_expected_committed_sorted() -> None:
    c = coordinator(["b", "a"])
    (op,) = c.handle(P.Tick(1))
    append(c, op, 1)
    assert c.handle(commit("b", 1)) == []
    (close,) = c.handle(commit("a", 1))
    assert close.kind == "round_close"
    assert close.payload["included"] == ["a", "b"]
    (merge,) = append(c, close, 5)
    # the merge names each included node's envelope and its commit's sample count
    assert merge == P.Merge(1, (("a", "a" * 64), ("b", "a" * 64)), (("a", 10), ("b", 10)))
    assert merge.sample_counts == {"a": 10, "b": 10}


def test_an_agent_back_during_the_round_is_waited_for() -> None:
    """After a broker restart the agents come back one by one: one that is seen online
    after the open trains the round too, and the round does not close without it (it did,
    and its commit was refused as out of round: CI, test_e2e_faults)."""
    c = coordinator(["a", "b", "c"], online=["a", "b"])
    (op,) = c.handle(P.Tick(10_000))  # the grace is over: opens with a and b
    append(c, op, 10_000)
    assert c.handle(P.PeerSeen("c", True)) == []
    assert c.handle(commit("a", 1)) == []
    assert c.handle(commit("b", 1)) == []  # c is expected now
    (close,) = c.handle(commit("c", 1))
    assert close.payload["included"] == ["a", "b", "c"]
    # ... and if it never commits, the deadline closes without it
    c = coordinator(["a", "b", "c"], online=["a", "b"])
    append(c, c.handle(P.Tick(10_000))[0], 10_000)
    c.handle(P.PeerSeen("c", True))
    c.handle(commit("a", 1))
    assert c.handle(commit("b", 1)) == []
    (close,) = c.handle(P.Tick(11_000))
    assert close.payload == {"round": 1, "included": ["a", "b"], "reason": "deadline"}


def test_offline_peer_is_not_waited_for_and_deadline_closes() -> None:
    c = coordinator(["a", "b", "c"])
    append(c, c.handle(P.Tick(0))[0], 0)
    c.handle(commit("a", 1))
    assert c.handle(commit("b", 1)) == []
    (close,) = c.handle(P.PeerSeen("c", False))
    assert close.payload["included"] == ["a", "b"]
    assert close.payload["reason"] == "all expected peers committed"

    c = coordinator(["a", "b", "c"])
    append(c, c.handle(P.Tick(0))[0], 0)
    c.handle(commit("a", 1))
    c.handle(commit("b", 1))
    assert c.handle(P.Tick(999)) == []
    (close,) = c.handle(P.Tick(1000))
    assert close.payload == {"round": 1, "included": ["a", "b"], "reason": "deadline"}


def test_too_few_commits_void_the_round_and_the_next_one_opens() -> None:
    c = coordinator(["a", "b", "c"])
    append(c, c.handle(P.Tick(0))[0], 0)
    c.handle(commit("a", 1))
    (close,) = c.handle(P.Tick(1000))
    assert close.payload["included"] == []
    assert append(c, close, 1000) == []
    (op,) = c.handle(P.Tick(1001))
    assert op.payload["round"] == 2 and op.payload["base_model_hash"] == H0


def test_commits_for_other_rounds_are_ignored() -> None:
    c = coordinator(["a", "b"])
    append(c, c.handle(P.Tick(0))[0], 0)
    c.handle(commit("a", 7))
    c.handle(commit("b", 1))
    assert c.current is not None and set(c.current.commits) == {"b"}


def _closed(c: P.Coordinator, nodes: list[str]) -> None:
    append(c, c.handle(P.Tick(0))[0], 0)
    actions: list[P.Action] = []
    for n in nodes:
        actions = c.handle(commit(n, 1))
    append(c, actions[0], 10)


def test_final_needs_a_strict_majority_of_included() -> None:
    c = coordinator(["a", "b", "c", "d"])
    _closed(c, ["a", "b", "c", "d"])
    assert c.handle(attest("a", 1, H1)) == []
    assert c.handle(attest("b", 1, H1)) == []  # 2 of 4 is not a majority
    assert c.handle(attest("c", 1, H2)) == []
    (final,) = c.handle(attest("d", 1, H1))
    assert final.payload == {
        "round": 1,
        "model_hash": H1,
        "state_hash": S,
        "attesters": ["a", "b", "d"],
    }
    (publish,) = append(c, final, 20)
    assert publish == P.PublishCheckpoint(1, H1)
    assert c.model_hash == H1
    # Who holds the final model, for a gateway that lost it: its attesters, then whoever
    # attests the same bytes later (an agent that adopted the checkpoint), never other bytes.
    assert c.final_holders == ("a", "b", "d")
    c.handle(attest("e", 1, H1))
    c.handle(attest("f", 1, H2))
    assert c.final_holders == ("a", "b", "d", "e")


def test_attest_timeout_falls_back_to_own_merge() -> None:
    c = coordinator(["a", "b", "c"])
    _closed(c, ["a", "b", "c"])
    (own_attest,) = c.handle(P.MergeDone(1, H2, S))
    assert own_attest == P.Append("model_attest", {"round": 1, "model_hash": H2, "state_hash": S})
    assert c.handle(P.Tick(400)) == []
    (final,) = c.handle(P.Tick(510))
    assert final.payload["model_hash"] == H2 and final.payload["attesters"] == []


def test_round_budget_ends_the_swarm() -> None:
    c = coordinator(["a", "b"], rounds=1)
    _closed(c, ["a", "b"])
    c.handle(attest("a", 1, H1))
    (final,) = c.handle(attest("b", 1, H1))
    actions = append(c, final, 30)
    assert P.SwarmDone(1, "campaign 1 spent its budget of 1 rounds") in actions and c.done
    assert c.handle(P.Tick(99_999)) == []


def test_replay_folds_without_acting_then_resume_asks_for_the_merge() -> None:
    live = coordinator(["a", "b"])
    log: list[P.Appended] = []
    op = live.handle(P.Tick(0))[0]
    for ev in (P.Appended("round_open", "gw", op.payload, 0), commit("a", 1), commit("b", 1)):
        log.append(ev)
        live.handle(ev)
    log.append(
        P.Appended("round_close", "gw", {"round": 1, "included": ["a", "b"], "reason": "x"}, 5)
    )

    again = coordinator(["a", "b"])
    again.replaying = True
    for ev in log:
        assert again.handle(ev) == []
    assert again.finish_replay() == [
        P.Merge(1, (("a", "a" * 64), ("b", "a" * 64)), (("a", 10), ("b", 10)))
    ]


def test_a_following_gateway_merges_every_round_but_appends_nothing() -> None:
    leader, follower = coordinator(["a", "b"]), coordinator(["a", "b"])
    follower.set_leading(False)
    (op,) = leader.handle(P.Tick(0))
    assert follower.handle(P.Tick(0)) == []  # only the leader opens
    for c in (leader, follower):
        append(c, op, 0)
        c.handle(commit("a", 1))
    (close,) = leader.handle(commit("b", 1))
    assert follower.handle(commit("b", 1)) == []  # ... and closes
    (merge,) = append(follower, close, 5)  # but every gateway merges
    assert merge == append(leader, close, 5)[0]
    assert follower.handle(P.MergeDone(1, H1, S)) == []  # no attest from a follower
    assert leader.handle(P.MergeDone(1, H1, S))[0].kind == "model_attest"
    follower.set_leading(True)  # the leader died: the follower takes over where it was
    assert follower.current is not None and follower.current.own == (H1, S)
    follower.handle(attest("a", 1, H1))
    (final,) = follower.handle(attest("b", 1, H1))
    assert final.kind == "model_final" and final.payload["model_hash"] == H1


def test_a_sealed_swarm_opens_a_round_only_once_the_keys_fit() -> None:
    c = P.Coordinator(P.RoundPolicy(min_peers=2, start_grace_ms=0, sealed=True), H0, 0)
    for a in ("a", "b"):
        c.handle(P.Appended("enroll", "admin", {"node": a, "role": "agent"}, 0))
        c.handle(P.PeerSeen(a, True))
    assert c.handle(P.Tick(1)) == [P.EnsureKeys()]
    assert c.handle(P.Tick(2)) == []  # waits for the answer
    # The wiring appended a fresh epoch: when it lands the machine asks again, ...
    assert c.handle(P.Appended("key_epoch", "gw", {"epoch": 0}, 3)) == []
    assert c.handle(P.Tick(4)) == [P.EnsureKeys()]
    # ... and opens once the keys fit.
    (op,) = c.handle(P.KeysReady())
    assert op.kind == "round_open" and op.payload["round"] == 1
    append(c, op, 5)
    assert c.handle(P.KeysReady()) == []  # an answer nobody asked for changes nothing


def test_a_refused_append_is_tried_again() -> None:
    c = coordinator(["a", "b"])
    (op,) = c.handle(P.Tick(0))
    assert c.handle(P.Tick(1)) == []  # pending
    assert c.handle(P.AppendFailed("model_final")) == []  # not the pending kind: still waits
    assert c.handle(P.Tick(2)) == []
    c.handle(P.AppendFailed("round_open"))
    (again,) = c.handle(P.Tick(3))
    assert again.kind == "round_open" and again.payload["round"] == 1


def test_admit_says_which_submissions_fit_the_round_in_progress() -> None:
    c = coordinator(["a", "b", "c"])
    now = 1_000_000

    def admit(kind: str, author: str, payload: object, ts: int = now) -> str | None:
        return c.admit(kind, author, payload, ts, now)

    assert admit("delta_commit", "a", {"round": 1}) == "round 1 is not open for commits"
    append(c, c.handle(P.Tick(now))[0], now)
    assert admit("delta_commit", "a", {"round": 1}) is None
    assert admit("delta_commit", "a", {"round": 2}) == "round 2 is not open for commits"
    assert admit("delta_commit", "a", "not a dict") == "round None is not open for commits"
    c.handle(commit("a", 1))
    assert admit("delta_commit", "a", {"round": 1}) == "a already committed to round 1"
    assert admit("model_attest", "a", {"round": 1}) == "round 1 is not awaiting attestations"
    for kind in ("round_open", "round_close", "model_final"):
        assert admit(kind, "a", {}) == "only the coordinator opens, closes and finalises rounds"
    assert "off the gateway's clock" in str(admit("delta_commit", "b", {"round": 1}, ts=0))
    c.handle(commit("b", 1))
    (close,) = c.handle(P.Tick(now + 1000))
    append(c, close, now)
    assert admit("model_attest", "a", {"round": 1}) is None
    assert admit("delta_commit", "c", {"round": 1}) == "round 1 is not open for commits"
    c.handle(attest("a", 1, H1))
    assert admit("model_attest", "a", {"round": 1}) == "a already attested round 1"
    (final,) = c.handle(attest("b", 1, H1))
    append(c, final, now)
    # A late attestation of the round just finalised still counts (for the audit), once.
    assert admit("model_attest", "c", {"round": 1}) is None
    assert admit("model_attest", "b", {"round": 1}) == "b already attested round 1"
    assert admit("enroll", "admin", {}) is None  # not the round's business: the ledger judges


def test_a_restarted_coordinator_waits_for_the_peers_the_ledger_says_were_active() -> None:
    """Replaying, nobody's status is known: the open round must not close on the first tick
    with whoever had committed before the restart (issue: it did, refusing the rest)."""
    live = coordinator(["a", "b", "c", "d"], online=["a", "b", "c"])
    history: list[P.Appended] = []

    def fold(ev: P.Appended) -> list[P.Action]:
        history.append(ev)
        return live.handle(ev)

    (op,) = live.handle(P.Tick(10_000))
    fold(P.Appended("round_open", "gw", op.payload, 10_000))
    for n in ("a", "b"):
        fold(commit(n, 1))
    (close,) = fold(commit("c", 1))
    fold(P.Appended("round_close", "gw", close.payload, 10_010))
    (final,) = [a for a in (fold(attest(n, 1, H1)) for n in ("a", "b")) if a][0]
    fold(P.Appended("model_final", "gw", final.payload, 10_020))
    (op2,) = live.handle(P.Tick(10_030))
    fold(P.Appended("round_open", "gw", op2.payload, 10_030))
    fold(commit("a", 2))
    fold(commit("b", 2))  # ... and the gateway is killed here

    again = P.Coordinator(policy(), H0, started_ms=20_000, leading=False)
    again.replaying = True
    for ev in [
        P.Appended("enroll", "admin", {"node": n, "role": "agent"}, 0) for n in "abcd"
    ] + history:
        assert again.handle(ev) == []
    assert again.finish_replay() == []
    again.set_leading(True)
    assert again.current is not None and again.current.expected == {"a", "b", "c"}
    assert again.handle(P.Tick(10_100)) == []  # c has not been heard of: still expected
    again.handle(P.PeerSeen("a", True))
    assert again.handle(P.PeerSeen("b", True)) == []
    (close2,) = again.handle(commit("c", 2))  # c was training all along
    assert close2.payload == {
        "round": 2,
        "included": ["a", "b", "c"],
        "reason": "all expected peers committed",
    }
    # Had c's status said offline instead, the round would close without it.
    other = P.Coordinator(policy(), H0, started_ms=20_000)
    other.replaying = True
    for ev in [
        P.Appended("enroll", "admin", {"node": n, "role": "agent"}, 0) for n in "abcd"
    ] + history:
        other.handle(ev)
    other.finish_replay()
    assert other.handle(P.Tick(10_100)) == []
    (close3,) = other.handle(P.PeerSeen("c", False))
    assert close3.payload["included"] == ["a", "b"]


# ----------------------------------------------------------------------- participant


def opened(rnd: int = 1, base: str = H0, deadline: int = 1000, ts: int = 0) -> P.Appended:
    payload = {"round": rnd, "base_model_hash": base, "deadline_ms": deadline}
    return P.Appended("round_open", "gw", payload, ts)


def closed(rnd: int, included: list[str]) -> P.Appended:
    return P.Appended("round_close", "gw", {"round": rnd, "included": included, "reason": "x"}, 0)


def final(rnd: int, mh: str) -> P.Appended:
    payload = {"round": rnd, "model_hash": mh, "state_hash": S, "attesters": []}
    return P.Appended("model_final", "gw", payload, 0)


def test_participant_full_round() -> None:
    p = P.Participant("a", H0)
    assert p.handle(opened()) == [P.Train(1, H0)]
    assert p.handle(P.Tick(10)) == []  # trains once
    (sub,) = p.handle(P.TrainingDone(1, "e" * 64, 50, {"loss": 1.0}))
    assert sub.kind == "delta_commit" and sub.payload["envelope_sha256"] == "e" * 64
    p.handle(commit("a", 1, "e" * 64))
    p.handle(commit("b", 1, "f" * 64))
    p.handle(P.EnvelopeStored(1, "a", "e" * 64))
    assert p.handle(closed(1, ["a", "b"])) == []  # b's envelope is not here yet
    (merge,) = p.handle(P.EnvelopeStored(1, "b", "f" * 64))
    assert merge == P.Merge(1, (("a", "e" * 64), ("b", "f" * 64)), (("a", 10), ("b", 10)))
    (att,) = p.handle(P.MergeDone(1, H1, S))
    assert att.kind == "model_attest" and att.payload["model_hash"] == H1
    assert p.handle(final(1, H1)) == [P.Commit(1, H1)]
    assert p.model_hash == H1
    assert p.handle(opened(2, H1)) == [P.Train(2, H1)]


def test_participant_with_the_wrong_bytes_adopts_the_checkpoint() -> None:
    p = P.Participant("a", H0)
    p.handle(opened())
    p.handle(commit("a", 1, "e" * 64))
    p.handle(P.EnvelopeStored(1, "a", "e" * 64))
    p.handle(closed(1, ["a"]))
    p.handle(P.MergeDone(1, H2, S))
    assert p.handle(final(1, H1)) == [P.AdoptCheckpoint(1, H1)]
    assert p.handle(opened(2, H1)) == []  # no training until the checkpoint is in
    assert p.handle(P.CheckpointAdopted(1, H1)) == [P.Train(2, H1)]


def test_participant_does_not_train_on_another_base_or_past_its_window() -> None:
    p = P.Participant("a", H0)
    assert p.handle(opened(base=H1)) == []
    # A device's clock reads whatever it reads (here: far past the deadline on the
    # coordinator's clock); the window is measured from when the device saw round_open.
    p = P.Participant("a", H0)
    p.handle(P.Tick(2_000_000))
    assert p.handle(opened(deadline=1000)) == [P.Train(1, H0)]
    # A round whose budget is spent when it opens (deadline at its own ts) is not trained.
    p = P.Participant("a", H0)
    assert p.handle(opened(deadline=0)) == []


def test_late_joiner_replays_then_adopts_and_trains() -> None:
    p = P.Participant("late", H0)
    p.replaying = True
    history = [opened(1), commit("a", 1), closed(1, ["a"]), final(1, H1), opened(2, H1, 5000)]
    for ev in history:
        assert p.handle(ev) == []
    assert p.catch_up(0) == [P.AdoptCheckpoint(1, H1)]
    assert p.handle(P.CheckpointAdopted(1, H1)) == [P.Train(2, H1)]


def test_checkpoint_for_a_round_not_final_is_ignored() -> None:
    p = P.Participant("a", H0)
    assert p.handle(P.CheckpointAdopted(3, H2)) == []
    assert p.model_hash == H0


def test_start_grace_delays_only_the_first_round() -> None:
    c = coordinator(["a", "b", "c"], rounds=3)
    _closed(c, ["a", "b", "c"])
    c.handle(attest("a", 1, H1))
    (final,) = c.handle(attest("b", 1, H1))
    append(c, final, 20)
    c.handle(P.PeerSeen("c", False))
    (op,) = c.handle(P.Tick(30))  # long before the grace of 10 s is over
    assert op.payload["round"] == 2


def test_a_second_open_of_the_same_round_is_ignored_by_both_machines() -> None:
    # Two leaders a moment apart can both open round 1; the first open counts.
    c = coordinator(["a", "b"])
    (op,) = c.handle(P.Tick(0))
    append(c, op, 0)
    c.handle(commit("a", 1))
    again = {"round": 1, "base_model_hash": H0, "deadline_ms": 99_999}
    assert c.handle(P.Appended("round_open", "gw2", again, 5)) == []
    assert c.current is not None and set(c.current.commits) == {"a"}

    p = P.Participant("a", H0)
    assert p.handle(opened()) == [P.Train(1, H0)]
    assert p.handle(P.Appended("round_open", "gw2", again, 5)) == []
    assert p.open is not None and p.open.deadline_ms == 1000


# ------------------------------------------------ participant: no wall clock on the device

T0 = 1_700_000_000_000  # the coordinator's (the gateway's) clock, ms


def adopting(p: P.Participant) -> None:
    """Bring ``p`` to: round 1 final with bytes it does not hold, adopting the checkpoint."""
    p.handle(opened())
    p.handle(commit("a", 1, "e" * 64))
    p.handle(P.EnvelopeStored(1, "a", "e" * 64))
    p.handle(closed(1, ["a"]))
    p.handle(P.MergeDone(1, H2, S))
    assert p.handle(final(1, H1)) == [P.AdoptCheckpoint(1, H1)]


@pytest.mark.parametrize(
    ("ledger_at_seen", "window_ms"),
    [(None, 1000), (T0, 1000), (T0 - 5000, 1000), (T0 + 400, 600), (T0 + 1000, 0)],
    ids=["no-ledger-clock", "seen-at-once", "clock-behind", "seen-400-ms-late", "seen-too-late"],
)
def test_the_window_runs_on_the_monotonic_clock_from_when_round_open_was_seen(
    ledger_at_seen: int | None, window_ms: int
) -> None:
    """Budget = deadline - ts of round_open (1000 ms here), from the monotonic time the
    device saw it; a device whose ledger clock says it saw the entry late has that much less
    (never more). The window matters to a device that cannot train at once (adopting)."""
    seen = 123_456  # the device's monotonic clock: since boot, unrelated to any wall clock
    last = [(seen + window_ms - 1, True)] if window_ms > 0 else []  # the last ms it may
    for now, trains in [*last, (seen + window_ms, False)]:
        p = P.Participant("a", H0)
        adopting(p)
        p.handle(P.Tick(seen, ledger_at_seen))
        assert p.handle(opened(2, H1, deadline=T0 + 1000, ts=T0)) == []  # still adopting
        p.handle(P.Tick(now))
        expected = [P.Train(2, H1)] if trains else []
        assert p.handle(P.CheckpointAdopted(1, H1)) == expected, (now, seen + window_ms)


def test_a_round_left_open_by_the_history_starts_its_window_when_catch_up_ends() -> None:
    history = [opened(1), commit("a", 1), closed(1, ["a"]), final(1, H1)]
    history.append(opened(2, H1, deadline=T0 + 1000, ts=T0))
    # However late the device catches up (its clocks read anything), it trains at once...
    p = P.Participant("late", H1)
    p.replaying = True
    for ev in [*history, P.Tick(9_999_999, T0 + 86_400_000)]:
        assert p.handle(ev) == []  # folded from history: no seen time, no action
    assert p.catch_up(10_000_000) == [P.Train(2, H1)]
    # ... and one that must adopt first has the round's budget counted from the catch-up.
    for adopted_at, trains in ((10_000_999, True), (10_001_000, False)):
        p = P.Participant("late", H0)
        p.replaying = True
        for ev in history:
            p.handle(ev)
        assert p.catch_up(10_000_000) == [P.AdoptCheckpoint(1, H1)]
        p.handle(P.Tick(adopted_at))
        expected = [P.Train(2, H1)] if trains else []
        assert p.handle(P.CheckpointAdopted(1, H1)) == expected


def test_a_round_seen_live_during_the_sync_waits_for_catch_up() -> None:
    p = P.Participant("a", H0)
    p.replaying = True  # the wiring is still copying the ledger when round_open arrives
    assert p.handle(opened(1, H0, deadline=T0 + 1000, ts=T0)) == []
    p.handle(P.Tick(50_000))
    assert p.catch_up(60_000, T0 + 200) == [P.Train(1, H0)]  # 800 ms of window are left


@pytest.mark.parametrize(
    "wall_skew_ms", [10 * 60_000, -86_400_000], ids=["10-min-fast", "1-day-slow"]
)
def test_a_device_whose_wall_clock_is_off_trains_and_is_admitted_every_round(
    wall_skew_ms: int,
) -> None:
    """A coordinator and a participant run three rounds; the device's monotonic clock
    started at boot, its wall clock is off by ``wall_skew_ms``. It trains every round, and
    what it signs, stamped by its ledger clock, passes the coordinator's skew bound."""
    c = P.Coordinator(policy(rounds=3, round_deadline_ms=60_000), H0, started_ms=T0)
    for n in ("a", "b"):
        c.handle(P.Appended("enroll", "admin", {"node": n, "role": "agent"}, T0))
        c.handle(P.PeerSeen(n, True))
    p, clock = P.Participant("a", H0), LedgerClock()
    t = T0  # the coordinator's clock; the device's clocks derive from it
    mono = lambda: 4_321 + (t - T0)  # noqa: E731 - booted 4.3 s before the gateway started
    wall = lambda: t + wall_skew_ms  # noqa: E731

    def to_both(action: P.Action, author: str = "gw", ts: int | None = None) -> tuple[list, list]:
        """Append ``action`` to the ledger; the device sees the entry 5 ms later. Returns
        what the coordinator and the participant do then."""
        nonlocal t
        assert isinstance(action, P.Append)
        entry = P.Appended(action.kind, author, action.payload, t if ts is None else ts)
        from_c = c.handle(entry)
        t += 5
        if author == "gw":
            clock.observe(entry.ts, mono())  # what the agent does for a gateway's entry
        return from_c, p.handle(entry)

    def from_device(action: P.Append) -> tuple[list, list]:
        stamp = clock.stamp(mono(), wall())
        assert c.admit(action.kind, "a", action.payload, stamp, t) is None
        return to_both(action, "a", stamp)

    for rnd in range(1, 4):
        t += 1000
        p.handle(P.Tick(mono(), clock.read(mono())))
        (op,) = c.handle(P.Tick(t))
        assert to_both(op)[1] == [P.Train(rnd, p.model_hash)], f"round {rnd} not trained"
        done = P.TrainingDone(rnd, "e" * 64, 10, {})
        (sub,) = [a for a in p.handle(done) if isinstance(a, P.Append)]
        from_device(sub)
        p.handle(P.EnvelopeStored(rnd, "a", "e" * 64))
        p.handle(P.EnvelopeStored(rnd, "b", "f" * 64))
        (close,), _ = to_both(P.Append("delta_commit", commit("b", rnd, "f" * 64).payload), "b")
        _, (merge,) = to_both(close)
        assert isinstance(merge, P.Merge)
        model = str(rnd) * 64
        (att,) = p.handle(P.MergeDone(rnd, model, S))
        from_device(att)
        (fin,), _ = to_both(P.Append("model_attest", attest("b", rnd, model).payload), "b")
        assert to_both(fin)[1] == [P.Commit(rnd, model)]
    assert p.model_round == 3 and c.finished_rounds == 3  # trained in each: asserted above
    skew = clock.skew_ms(mono(), wall())
    assert skew is not None and abs(skew - wall_skew_ms) <= 5  # the delivery delay


def test_a_participant_that_committed_before_a_restart_never_trains_that_round_again() -> None:
    """Its delta is on the ledger already: a second one would be refused, and its bytes
    would not be the ones the commit names (the wiring sends the kept delta instead)."""
    p = P.Participant("a", H0)
    p.replaying = True
    for ev in (opened(1, deadline=60_000), commit("a", 1, "e" * 64)):
        assert p.handle(ev) == []
    assert p.catch_up(0) == []  # the round is open, on our base, but we committed
    assert p.handle(P.Tick(10)) == []
    p.handle(commit("b", 1, "f" * 64))
    p.handle(P.EnvelopeStored(1, "a", "e" * 64))  # the kept delta, back from disk
    p.handle(P.EnvelopeStored(1, "b", "f" * 64))
    (merge,) = p.handle(closed(1, ["a", "b"]))
    assert merge.included == (("a", "e" * 64), ("b", "f" * 64))


def _abandonable(started_ms: int = 0) -> P.Coordinator:
    c = P.Coordinator(policy(), H0, started_ms=started_ms, initial_state_hash=S)
    for a in ("a", "b", "c"):
        c.handle(P.Appended("enroll", "admin", {"node": a, "role": "agent"}, 0))
        c.handle(P.PeerSeen(a, True))
    return c


def test_a_closed_round_nobody_can_merge_is_finalised_on_its_base_model() -> None:
    c = _abandonable()
    _closed(c, ["a", "b", "c"])  # closed at ts 10; the deltas never reach anyone
    assert c.handle(attest("a", 1, H1)) == []  # one agent merged: no majority
    # Past the attest timeout without a merge of its own the coordinator still waits (it is
    # asking the authors for their deltas), until a deadline plus an attest timeout.
    assert c.handle(P.Tick(10 + 1000 + 500 - 1)) == []
    (final,) = c.handle(P.Tick(10 + 1000 + 500))
    assert final == P.Append(
        "model_final",
        {
            "round": 1,
            "model_hash": H0,
            "state_hash": S,
            "attesters": [],
            "abandoned": "no merge in time: the deltas round_close named are gone",
        },
    )
    assert c.handle(P.Tick(2000)) == []  # in flight: once
    (publish,) = append(c, final, 2001)
    assert publish == P.PublishCheckpoint(1, H0)
    assert (c.model_hash, c.state_hash, c.last_final_round) == (H0, S, 1)
    assert c.handle(P.Tick(2002))[0].kind == "round_open"  # the site goes on


def test_a_round_with_a_merge_is_never_abandoned_and_a_restart_gives_a_merge_its_time() -> None:
    c = _abandonable()
    _closed(c, ["a", "b", "c"])
    c.handle(P.MergeDone(1, H2, S))  # the coordinator's own merge: it decides at the timeout
    (final,) = c.handle(P.Tick(5000))
    assert final.payload["model_hash"] == H2 and "abandoned" not in final.payload
    # A coordinator that starts (or starts leading) long after the close waits from then:
    # the authors' kept deltas still have time to reach it.
    late = _abandonable(started_ms=100_000)
    _closed(late, ["a", "b", "c"])
    assert late.handle(P.Tick(100_000 + 1499)) == []
    assert late.handle(P.Tick(100_000 + 1500))[0].payload["abandoned"]
    # Without the state hash of its base model it cannot say what the round ends on: it waits.
    blind = coordinator(["a", "b", "c"])
    _closed(blind, ["a", "b", "c"])
    assert blind.handle(P.Tick(10**9)) == []


def test_participant_goes_on_after_a_round_finalised_on_its_base_model() -> None:
    p = P.Participant("a", H0)
    p.handle(opened())
    (sub,) = p.handle(P.TrainingDone(1, "e" * 64, 50, {}))
    p.handle(commit("a", 1, "e" * 64))
    p.handle(commit("b", 1, "f" * 64))
    p.handle(P.EnvelopeStored(1, "a", "e" * 64))
    assert p.handle(closed(1, ["a", "b"])) == []  # b's delta is gone: no merge here either
    # The coordinator abandons the round: the model stays, nothing to adopt, and the next
    # round trains on it.
    assert p.handle(final(1, H0)) == []
    assert p.handle(opened(2, H0)) == [P.Train(2, H0)]
