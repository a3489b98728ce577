"""The round machines with a merge committee (merge_by = "committee", issue 16), driven by
hand as in test_protocol.py: no network, no clock but the one we pass."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import pytest

from edge_swarm.swarm import protocol as P
from edge_swarm.swarm.committee import draw_committee

from .test_protocol import policy as base_policy

H0, H1, H2 = "0" * 64, "1" * 64, "2" * 64  # model hashes
S = "5" * 64
AGENTS = ["a", "b", "c", "d", "e", "f"]
GW = "gw"


def sha(label: str) -> str:
    """A real entry-like hash (64 lowercase hex) for ``label``."""
    return hashlib.sha256(label.encode()).hexdigest()


OPEN1 = sha("round_open 1")
OPEN2 = sha("round_open 2")


def policy(merge_by: str = "committee", k: int = 2, **kw: Any) -> P.RoundPolicy:
    """test_protocol's policy (its deadlines), in committee mode unless told otherwise."""
    return base_policy(**kw, merge_by=merge_by, committee_k=k)


def enroll(node: str, role: str = "agent", expires_ms: int | None = None) -> P.Appended:
    payload = {"node": node, "role": role, "pubkey": "0" * 64, "expires_ms": expires_ms}
    return P.Appended("enroll", "admin", payload, 0, sha(f"enroll {node}"))


def revoke(node: str) -> P.Appended:
    return P.Appended("revoke", "admin", {"node": node, "reason": "stolen"}, 0, sha(f"rv {node}"))


def roster(agents: Iterable[str] = AGENTS, gateways: Iterable[str] = (GW,)) -> list[P.Appended]:
    return [enroll(g, "gateway") for g in gateways] + [enroll(a) for a in agents]


def commit(node: str, rnd: int, env: str = "e" * 64) -> P.Appended:
    payload = {"round": rnd, "node": node, "envelope_sha256": env, "n_samples": 10, "metrics": {}}
    return P.Appended("delta_commit", node, payload, 0, sha(f"commit {rnd} {node}"))


def received(node: str, rnd: int, env: str = "e" * 64) -> P.CommitReceived:
    """A commit as the coordinator takes it in committee mode (folded into round_close)."""
    return P.CommitReceived(node, rnd, env, 10, (node, env, 10, 0, "ab" * 64))


def attest(node: str, rnd: int, mh: str) -> P.Appended:
    payload = {"round": rnd, "model_hash": mh, "state_hash": S}
    return P.Appended("model_attest", node, payload, 0, sha(f"attest {rnd} {node} {mh}"))


def opened(rnd: int = 1, base: str = H0, h: str = OPEN1, ts: int = 0) -> P.Appended:
    payload = {"round": rnd, "base_model_hash": base, "deadline_ms": ts + 1000}
    return P.Appended("round_open", GW, payload, ts, h)


def closed(rnd: int, included: list[str], ts: int = 10, rows: bool = False) -> P.Appended:
    payload: dict[str, Any] = {"round": rnd, "included": included, "reason": "x"}
    if rows:  # committee mode: the commits folded in (as `received` makes them)
        payload["commits"] = [[n, "e" * 64, 10, 0, "ab" * 64] for n in included]
    return P.Appended("round_close", GW, payload, ts, sha(f"close {rnd}"))


def final(rnd: int, mh: str, abandoned: bool = False) -> P.Appended:
    payload: dict[str, Any] = {"round": rnd, "model_hash": mh, "state_hash": S, "attesters": []}
    if abandoned:
        payload["abandoned"] = "no quorum of the committee agreed in time"
    return P.Appended("model_final", GW, payload, 0, sha(f"final {rnd}"))


def entry(action: P.Action, ts: int, h: str, author: str = GW) -> P.Appended:
    """The entry the ledger makes of a coordinator's (or agent's) ``Append``."""
    assert isinstance(action, P.Append)
    return P.Appended(action.kind, author, action.payload, ts, h)


def coordinator(
    agents: Iterable[str] = AGENTS, k: int = 2, history: Iterable[P.Appended] = (), **kw: Any
) -> P.Coordinator:
    agents = list(agents)
    c = P.Coordinator(policy(k=k, **kw), H0, started_ms=0, initial_state_hash=S)
    for ev in [*roster(agents), *history]:
        c.handle(ev)
    for a in agents:
        c.handle(P.PeerSeen(a, True))
    return c


def closed_round(c: P.Coordinator, nodes: list[str], h: str = OPEN1) -> None:
    """Open round 1 with round_open hash ``h``, have ``nodes`` commit, close it at ts 10."""
    (op,) = c.handle(P.Tick(0))
    c.handle(entry(op, 0, h))
    actions: list[P.Action] = []
    for n in nodes:
        actions = c.handle(received(n, 1))
    (close,) = actions
    assert close.payload["commits"] == [[n, "e" * 64, 10, 0, "ab" * 64] for n in sorted(nodes)]
    (merge,) = c.handle(entry(close, 10, sha("close 1")))
    assert isinstance(merge, P.Merge)  # every gateway merges, as in "all" mode


def drawn_and_not(h: str = OPEN1, agents: list[str] = AGENTS, k: int = 2) -> tuple[list, list]:
    drawn = list(draw_committee(h, agents, [GW], k).agents)
    return drawn, [a for a in agents if a not in drawn]


# ------------------------------------------------------------------------------ policy


def test_policy_reads_merge_by_and_committee_k_from_the_genesis() -> None:
    default = P.RoundPolicy.from_params({})
    assert (default.merge_by, default.committee_k, default.by_committee) == ("all", 2, False)
    assert P.RoundPolicy() == default
    chosen = P.RoundPolicy.from_params({"merge_by": "committee", "committee_k": 3})
    assert (chosen.merge_by, chosen.committee_k, chosen.by_committee) == ("committee", 3, True)
    assert P.RoundPolicy.from_params({"merge_by": "all", "committee_k": 0}).committee_k == 0


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"merge_by": "leader"}, "merge_by must be 'all' or 'committee', not 'leader'"),
        ({"merge_by": "Committee"}, "merge_by must be 'all' or 'committee'"),
        ({"merge_by": None}, "merge_by must be 'all' or 'committee'"),
        ({"merge_by": ["all"]}, "merge_by must be 'all' or 'committee'"),
        ({"committee_k": -1}, "committee_k must be an int >= 0, not -1"),
        ({"committee_k": 1.5}, "committee_k must be an int >= 0"),
        ({"committee_k": "2"}, "committee_k must be an int >= 0"),
        ({"committee_k": True}, "committee_k must be an int >= 0"),
    ],
)
def test_policy_refuses_what_the_genesis_must_not_say(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        P.RoundPolicy.from_params(params)
    with pytest.raises(ValueError, match=match):
        P.RoundPolicy(**params)


# ------------------------------------------------------------------------------ the draw


def test_coordinator_and_participants_draw_the_same_committee_from_the_ledger() -> None:
    expected = draw_committee(OPEN1, AGENTS, [GW], 2)
    drawn, others = drawn_and_not()
    assert len(drawn) == 2 and others
    c = coordinator(k=2)
    c.handle(P.PeerSeen(drawn[0], False))  # who is online never changes the draw
    member, outsider = P.Participant(drawn[0], H0, policy()), P.Participant(others[0], H0, policy())
    history = [*roster(reversed(AGENTS)), opened()]  # any enrolment order draws the same
    for p in (member, outsider):
        for ev in history:
            p.handle(ev)
    (op,) = c.handle(P.Tick(10_000))
    c.handle(entry(op, 0, OPEN1))
    assert c.committees.of(1) == member.committee(1) == outsider.committee(1) == expected
    assert expected.gateways == (GW,) and expected.quorum == 2
    assert member.is_member(1) and not outsider.is_member(1)
    assert not member.is_member(2) and member.committee(2) is None  # not drawn yet
    assert P.Participant("x", H0).committee(1) is None  # "all" mode: no committee at all


def test_a_replaying_gateway_draws_what_the_leader_drew() -> None:
    live = coordinator()
    (op,) = live.handle(P.Tick(0))
    history = [entry(op, 0, OPEN1), commit("a", 1)]
    for ev in history:
        live.handle(ev)
    again = P.Coordinator(policy(), H0, started_ms=5_000, leading=False, initial_state_hash=S)
    again.replaying = True
    for ev in [*roster(), *history]:
        assert again.handle(ev) == []
    again.finish_replay()
    assert again.committees.of(1) == live.committees.of(1)


def test_the_draw_is_of_the_roster_as_of_round_open() -> None:
    drawn, _ = drawn_and_not()
    gone = drawn[0]
    for h in [sha(f"round_open {i}") for i in range(30)]:
        p = P.Participant("z", H0, policy())
        for ev in [*roster(), revoke(gone), opened(h=h)]:
            p.handle(ev)
        assert gone not in p.committee(1)  # revoked: never drawn, whatever the hash
    # Re-admitted (a later enroll replaces the record, as on the ledger): drawn again.
    p = P.Participant("z", H0, policy())
    for ev in [*roster(), revoke(gone), enroll(gone), opened()]:
        p.handle(ev)
    assert gone in p.committee(1)
    # Enrolled after the round_open: not in that round's draw (it was not eligible then).
    p = P.Participant("z", H0, policy(k=10))
    for ev in [*roster(["a", "b"]), opened(), enroll("late")]:
        p.handle(ev)
    assert p.committee(1).agents == ("a", "b")
    # An enrolment expired at the round_open's ts is not drawn (it could not sign).
    p = P.Participant("z", H0, policy(k=10))
    for ev in [*roster(["a", "b"]), enroll("old", expires_ms=99), opened(ts=100)]:
        p.handle(ev)
    assert p.committee(1).agents == ("a", "b")


def test_k_larger_than_the_fleet_draws_every_agent_and_still_needs_a_quorum() -> None:
    c = coordinator(["a", "b"], k=10)
    closed_round(c, ["a", "b"])
    drawn = c.committees.of(1)
    assert drawn is not None and drawn.members == ("a", "b", GW) and drawn.quorum == 2
    assert c.handle(attest("a", 1, H1)) == []
    (fin,) = c.handle(attest("b", 1, H1))
    assert fin.payload["attesters"] == ["a", "b"] and fin.payload["committee"] == ["a", "b", GW]


def test_committee_mode_needs_the_round_open_hash() -> None:
    c = coordinator()
    (op,) = c.handle(P.Tick(0))
    with pytest.raises(ValueError, match="Appended.hash must be the entry's 64 lowercase hex"):
        c.handle(P.Appended("round_open", GW, op.payload, 0))  # the wiring forgot entry.hash
    assert c.current is None  # nothing half-folded
    p = P.Participant("a", H0, policy())
    with pytest.raises(ValueError, match="round_open hash"):
        p.handle(opened(h=""))


# ------------------------------------------------------------------------------ finalising


def test_the_gateways_own_merge_alone_never_finalises() -> None:
    """One gateway and two drawn agents: quorum 2. The gateway's merge and attest are one
    vote; there is no attest-timeout fallback to it, and non-members do not count."""
    drawn, others = drawn_and_not()
    c = coordinator()
    closed_round(c, AGENTS)  # closed at ts 10
    (own,) = c.handle(P.MergeDone(1, H1, S))
    assert own == P.Append("model_attest", {"round": 1, "model_hash": H1, "state_hash": S})
    assert c.handle(entry(own, 11, sha("own attest"))) == []
    assert c.handle(P.Tick(10 + 500)) == []  # the attest timeout: "all" mode would decide here
    for n in others:
        assert (
            c.admit("model_attest", n, {"round": 1}, 0, 0) == f"{n} is not in round 1's committee"
        )
        assert c.handle(attest(n, 1, H1)) == []  # a non-member's attest counts for nothing
    assert c.handle(P.Tick(10 + 1000 + 500 - 1)) == []
    assert c.admit("model_attest", drawn[1], {"round": 1}, 0, 0) is None
    (fin,) = c.handle(attest(drawn[1], 1, H1))
    assert fin == P.Append(
        "model_final",
        {
            "round": 1,
            "model_hash": H1,
            "state_hash": S,
            "attesters": sorted([GW, drawn[1]]),
            "committee": sorted([GW, *drawn]),
            "detached": ["merge"],
        },
    )
    assert c.handle(P.Tick(10 + 1000 + 500)) == []  # in flight: no abandon on top
    (publish,) = c.handle(entry(fin, 20, sha("final 1")))
    assert publish == P.PublishCheckpoint(1, H1)
    assert c.final_holders == tuple(sorted([GW, drawn[1]]))
    assert c.committees.of(1) is None  # forgotten once final


def test_a_lying_member_is_outvoted() -> None:
    drawn, _ = drawn_and_not()
    liar, honest = drawn
    c = coordinator()
    closed_round(c, AGENTS)
    assert c.handle(attest(liar, 1, H2)) == []
    assert c.handle(attest(GW, 1, H1)) == []  # one each: no quorum yet
    (fin,) = c.handle(attest(honest, 1, H1))
    assert fin.payload["model_hash"] == H1
    assert fin.payload["attesters"] == sorted([GW, honest])  # never the liar


def test_no_quorum_in_time_finalises_on_the_base_model_naming_the_committee() -> None:
    drawn, _ = drawn_and_not()
    c = coordinator()
    closed_round(c, AGENTS)  # closed at ts 10
    c.handle(P.MergeDone(1, H1, S))  # the gateway has a merge of its own: still no decision
    c.handle(attest(GW, 1, H1))
    c.handle(attest(drawn[0], 1, H2))  # disagrees; drawn[1] never answers
    assert c.handle(P.Tick(10 + 1000 + 500 - 1)) == []
    (fin,) = c.handle(P.Tick(10 + 1000 + 500))
    assert fin == P.Append(
        "model_final",
        {
            "round": 1,
            "model_hash": H0,
            "state_hash": S,
            "attesters": [],
            "abandoned": "no quorum of the committee agreed in time (2 of 3 members needed)",
            "committee": sorted([GW, *drawn]),
        },
    )
    assert c.handle(P.Tick(3000)) == []  # in flight: once
    assert c.handle(entry(fin, 3001, sha("final 1"))) == [P.PublishCheckpoint(1, H0)]
    (op,) = c.handle(P.Tick(3002))  # the site goes on with a fresh draw
    assert op.payload == {"round": 2, "base_model_hash": H0, "deadline_ms": 4002}


def test_every_gateway_attests_in_committee_mode_but_not_while_replaying() -> None:
    follower = coordinator()
    follower.set_leading(False)
    (op,) = coordinator().handle(P.Tick(0))
    follower.handle(entry(op, 0, OPEN1))
    (merge,) = follower.handle(closed(1, AGENTS, rows=True))  # the commits from the rows
    assert merge == P.Merge(1, tuple((n, "e" * 64) for n in AGENTS), tuple((n, 10) for n in AGENTS))
    (own,) = follower.handle(P.MergeDone(1, H1, S))  # a member: it votes, though it follows
    assert own.kind == "model_attest"
    assert follower.handle(attest(GW, 1, H1)) == []  # ... and never appends model_final
    follower.replaying = True  # folding history: its attest is on the ledger already
    assert follower.handle(P.MergeDone(1, H1, S)) == []


# ------------------------------------------------------------------------------ participants


def test_a_member_does_what_every_participant_does_in_all_mode() -> None:
    drawn, _ = drawn_and_not()
    me, peer = drawn
    p = P.Participant(me, H0, policy())
    for ev in roster():
        assert p.handle(ev) == []
    assert p.handle(opened()) == [P.Train(1, H0)]
    (sub,) = p.handle(P.TrainingDone(1, "e" * 64, 50, {}))
    assert sub.kind == "delta_commit"
    p.handle(commit(me, 1, "e" * 64))
    p.handle(commit(peer, 1, "f" * 64))
    p.handle(P.EnvelopeStored(1, me, "e" * 64))
    p.handle(P.EnvelopeStored(1, peer, "f" * 64))
    (merge,) = p.handle(closed(1, sorted([me, peer])))
    assert isinstance(merge, P.Merge) and {n for n, _ in merge.included} == {me, peer}
    (att,) = p.handle(P.MergeDone(1, H1, S))
    assert att == P.Append("model_attest", {"round": 1, "model_hash": H1, "state_hash": S})
    p.handle(attest(me, 1, H1))  # its attestation on the ledger, and the gateway's: a quorum
    p.handle(attest(GW, 1, H1))
    assert p.handle(final(1, H1)) == [P.Commit(1, H1)]


def test_a_non_member_trains_commits_never_merges_nor_attests_and_adopts() -> None:
    drawn, others = drawn_and_not()
    me = others[0]
    p = P.Participant(me, H0, policy())
    for ev in roster():
        p.handle(ev)
    assert p.handle(opened()) == [P.Train(1, H0)]  # it still trains ...
    (sub,) = p.handle(P.TrainingDone(1, "e" * 64, 50, {}))
    assert sub.kind == "delta_commit"  # ... and commits its delta
    out: list[P.Action] = []
    for n in AGENTS:
        out += p.handle(commit(n, 1, sha(n)))
        out += p.handle(P.EnvelopeStored(1, n, sha(n)))  # even if the wiring stored them
    out += p.handle(closed(1, AGENTS))
    out += p.handle(attest(GW, 1, H1)) + p.handle(attest(drawn[0], 1, H1))
    assert out == []  # no Merge, no model_attest
    assert p.handle(final(1, H1)) == [P.AdoptCheckpoint(1, H1)]
    assert p.handle(opened(2, H1, OPEN2, ts=20)) == []  # not before the model is in
    assert p.handle(P.CheckpointAdopted(1, H1)) == [P.Train(2, H1)]  # trains on the adopted
    assert p.model_hash == H1 and p.model_round == 1
    assert p.committee(2) == draw_committee(OPEN2, AGENTS, [GW], 2)


def test_a_non_member_goes_on_after_a_round_abandoned_on_its_base_model() -> None:
    _, others = drawn_and_not()
    p = P.Participant(others[0], H0, policy())
    for ev in [*roster(), opened(), closed(1, AGENTS)]:
        p.handle(ev)
    assert p.handle(final(1, H0, abandoned=True)) == []  # it holds those bytes: nothing to adopt
    assert p.handle(opened(2, H0, OPEN2, ts=20)) == [P.Train(2, H0)]


def test_a_late_non_member_replays_then_adopts() -> None:
    _, others = drawn_and_not()
    p = P.Participant(others[0], H0, policy())
    p.replaying = True
    drawn, _ = drawn_and_not()
    history = [*roster(), opened(), closed(1, AGENTS), attest(GW, 1, H1), attest(drawn[0], 1, H1)]
    for ev in [*history, final(1, H1), opened(2, H1, OPEN2, 20)]:
        assert p.handle(ev) == []
    assert p.catch_up(0) == [P.AdoptCheckpoint(1, H1)]
    assert p.handle(P.CheckpointAdopted(1, H1)) == [P.Train(2, H1)]
    assert p.committee(2) == draw_committee(OPEN2, AGENTS, [GW], 2)


# ------------------------------------------------------------------------------ "all" mode


def _coordinator_script(pol: P.RoundPolicy, hashes: bool) -> list[list[P.Action]]:
    """Three rounds through the coordinator: a majority final, the own-merge fallback at the
    attest timeout, an abandoned round. Returns what it did at each step."""
    c = P.Coordinator(pol, H0, started_ms=0, initial_state_hash=S)
    n = iter(range(10_000))

    def ev(kind: str, author: str, payload: dict, ts: int) -> P.Appended:
        return P.Appended(kind, author, payload, ts, sha(f"e{next(n)}") if hashes else "")

    out = [c.handle(ev("enroll", "admin", {"node": x, "role": r}, 0)) for x, r in roster_pairs()]
    out += [c.handle(P.PeerSeen(a, True)) for a in "abc"]

    def fold(action: P.Action, ts: int) -> list[P.Action]:
        assert isinstance(action, P.Append)
        return c.handle(ev(action.kind, GW, action.payload, ts))

    t = 0
    for rnd in (1, 2, 3):
        t += 100
        out.append(c.handle(P.Tick(t)))
        out.append(fold(out[-1][0], t))
        for a in "abc":
            out.append(c.handle(ev("delta_commit", a, commit(a, rnd).payload, t)))
        out.append(fold(out[-1][0], t + 10))
        if rnd == 1:
            out.append(c.handle(P.MergeDone(rnd, H1, S)))
            out.append(c.handle(ev("model_attest", "a", attest("a", rnd, H1).payload, t)))
            out.append(c.handle(ev("model_attest", "b", attest("b", rnd, H1).payload, t)))
        elif rnd == 2:
            out.append(c.handle(P.MergeDone(rnd, H2, S)))
            out.append(c.handle(P.Tick(t + 10 + 500)))
        else:
            out.append(c.handle(P.Tick(t + 10 + 1500)))
        t = t + 10 + 1500
        out.append(fold(out[-1][-1], t))
    return out


def roster_pairs() -> list[tuple[str, str]]:
    return [(GW, "gateway"), ("a", "agent"), ("b", "agent"), ("c", "agent")]


def test_all_mode_acts_exactly_as_before_whatever_the_hashes() -> None:
    base = {
        "rounds": 3,
        "min_peers": 2,
        "round_deadline_ms": 1000,
        "attest_timeout_ms": 500,
        "start_grace_ms": 0,
    }
    today = _coordinator_script(P.RoundPolicy(**base), hashes=False)
    assert _coordinator_script(P.RoundPolicy(**base, merge_by="all"), hashes=True) == today
    finals = [a[0].payload for a in today if a and isinstance(a[0], P.Append)]
    finals = [f for f in finals if "attesters" in f]
    assert [f["model_hash"] for f in finals] == [H1, H2, H2]
    assert finals[1]["attesters"] == []  # the own-merge fallback still decides in "all"
    assert finals[2]["abandoned"] == "no merge in time: the deltas round_close named are gone"
    assert not any("committee" in f for f in finals)


def test_all_mode_participant_acts_exactly_as_before() -> None:
    history = [
        *roster(),
        opened(),
        commit("a", 1, "e" * 64),
        commit("b", 1, "f" * 64),
        P.EnvelopeStored(1, "a", "e" * 64),
        P.EnvelopeStored(1, "b", "f" * 64),
        closed(1, ["a", "b"]),
        P.MergeDone(1, H1, S),
        final(1, H1),
        opened(2, H1, OPEN2, 20),
    ]
    unhashed = [
        P.Appended(e.kind, e.author, e.payload, e.ts) if isinstance(e, P.Appended) else e
        for e in history
    ]
    today = P.Participant("a", H0)
    explicit = P.Participant("a", H0, policy("all"))
    did = [today.handle(ev) for ev in unhashed]
    assert [explicit.handle(ev) for ev in history] == did
    assert [a for step in did for a in step if not isinstance(a, P.Append)] == [
        P.Train(1, H0),
        P.Merge(1, (("a", "e" * 64), ("b", "f" * 64)), (("a", 10), ("b", 10))),
        P.Commit(1, H1),
        P.Train(2, H1),
    ]
    assert explicit.is_member(1) and explicit.committee(1) is None


def test_a_member_says_which_deltas_it_still_lacks_once_the_round_closes() -> None:
    drawn, others = drawn_and_not()
    me, peer = drawn
    p = P.Participant(me, H0, policy())
    for ev in roster():
        p.handle(ev)
    p.handle(opened())
    p.handle(P.TrainingDone(1, "e" * 64, 50, {}))
    p.handle(commit(me, 1, "e" * 64))
    p.handle(commit(peer, 1, "f" * 64))
    p.handle(P.EnvelopeStored(1, me, "e" * 64))
    assert p.missing(1) == []  # still open: nothing is late yet
    assert p.handle(closed(1, sorted([me, peer]))) == []  # the peer's came before we listened
    assert p.missing(1) == [(peer, "f" * 64)]
    (merge,) = p.handle(P.EnvelopeStored(1, peer, "f" * 64))  # its author sent it again
    assert isinstance(merge, P.Merge) and p.missing(1) == []
    # A non-member lacks nothing (it merges nothing); "all" mode asks nobody either.
    outsider = P.Participant(others[0], H0, policy())
    for ev in [*roster(), opened(), commit(me, 1), closed(1, [me])]:
        outsider.handle(ev)
    assert outsider.missing(1) == []
    everyone = P.Participant(me, H0, policy("all"))
    for ev in [*roster(), opened(), commit(peer, 1), closed(1, [peer])]:
        everyone.handle(ev)
    assert everyone.missing(1) == []


def test_a_final_without_a_quorum_of_its_committee_is_refused_and_the_model_kept() -> None:
    """A coordinator that appends model_final on its own word (not this code: a patched or
    compromised gateway) moves no agent's model."""
    drawn, others = drawn_and_not()
    p = P.Participant(others[0], H0, policy())
    for ev in [*roster(), opened(), closed(1, AGENTS)]:
        p.handle(ev)
    p.handle(attest(GW, 1, H2))  # the gateway alone vouches for its bytes ...
    p.handle(attest(drawn[0], 1, H1))  # ... the drawn agents for others
    p.handle(attest(drawn[1], 1, H1))
    p.handle(attest(others[1], 1, H2))  # a non-member's word does not count
    (refused,) = p.handle(final(1, H2))
    assert isinstance(refused, P.FinalRefused) and refused.model_hash == H2
    assert "backed by 1 of the 2 attestations" in refused.reason
    assert p.model_hash == H0 and 1 not in p.finals  # keeps its model, adopts nothing
    # A final abandoned on bytes it does not hold is a move too: refused without a quorum.
    (again,) = p.handle(final(1, H2, abandoned=True))
    assert isinstance(again, P.FinalRefused)
    # The honest majority's final is taken.
    assert p.handle(final(1, H1)) == [P.AdoptCheckpoint(1, H1)]


# ------------------------------------------------------------------------ the downlink update

U1, U2 = sha("update 1"), sha("update 2")


def attest_update(node: str, rnd: int, mh: str, update: str) -> P.Appended:
    payload = {"round": rnd, "model_hash": mh, "state_hash": S, "update_sha256": update}
    return P.Appended("model_attest", node, payload, 0, sha(f"attest {rnd} {node} {update}"))


def test_a_member_attests_its_update_and_a_light_agent_counts_a_quorum_on_it() -> None:
    drawn, others = drawn_and_not()
    member = P.Participant(drawn[0], H0, policy())
    for ev in roster():
        member.handle(ev)
    member.handle(opened())
    member.handle(P.TrainingDone(1, "e" * 64, 50, {}))
    member.handle(commit(drawn[0], 1, "e" * 64))
    member.handle(P.EnvelopeStored(1, drawn[0], "e" * 64))
    member.handle(closed(1, [drawn[0]]))
    (att,) = member.handle(P.MergeDone(1, H1, S, U1))
    assert att.payload == {"round": 1, "model_hash": H1, "state_hash": S, "update_sha256": U1}

    light = P.Participant(others[0], H0, policy())
    for ev in [*roster(), opened(), closed(1, AGENTS)]:
        light.handle(ev)
    light.handle(attest_update(GW, 1, H1, U2))  # a gateway whose update is another one
    light.handle(attest_update(drawn[0], 1, H1, U1))
    assert not light.update_backed(1, U1)  # no model_final yet: nothing is backed
    light.handle(final(1, H1))
    assert not light.update_backed(1, U1) and not light.update_backed(1, U2)  # 1 of 3 each
    light.handle(attest_update(drawn[1], 1, H1, U1))
    assert light.update_backed(1, U1) and not light.update_backed(1, U2)
    assert not light.update_backed(2, U1)  # another round: no committee drawn


def test_an_update_for_another_pair_is_not_backed() -> None:
    drawn, others = drawn_and_not()
    light = P.Participant(others[0], H0, policy())
    for ev in [*roster(), opened(), closed(1, AGENTS)]:
        light.handle(ev)
    for node in (GW, *drawn):  # a quorum attested U1 for model H2, but the final is H1
        light.handle(attest_update(node, 1, H2, U1))
    light.handle(attest(GW, 1, H1))
    assert not light.update_backed(1, U1)


def test_an_agent_that_took_an_update_fetches_the_state_when_drawn_and_merges_after() -> None:
    """A light agent holds round 1's model from the update (no merge state). Drawn onto round
    2's committee, it asks for the checkpoint of the model it holds (state=True) while it
    trains, and merges round 2 only once that checkpoint is in."""
    pol = policy()
    # A round 2 open hash that draws `me`, who was not drawn in round 1.
    drawn1, others = drawn_and_not()
    me = others[0]
    h2 = next(
        h
        for h in (sha(f"open2 {i}") for i in range(1000))
        if me in draw_committee(h, AGENTS, [GW], 2).members
    )
    p = P.Participant(me, H0, pol)
    for ev in [*roster(), opened(), closed(1, AGENTS)]:
        p.handle(ev)
    for node in (GW, *drawn1):
        p.handle(attest(node, 1, H1))
    assert p.handle(final(1, H1)) == [P.AdoptCheckpoint(1, H1)]
    assert p.handle(P.CheckpointAdopted(1, H1, with_state=False)) == []
    assert not p.state_known
    out = p.handle(opened(2, H1, h2, ts=20))
    assert out == [P.AdoptCheckpoint(1, H1, state=True), P.Train(2, H1)]
    p.handle(P.TrainingDone(2, "e" * 64, 50, {}))
    p.handle(commit(me, 2, "e" * 64))
    p.handle(P.EnvelopeStored(2, me, "e" * 64))
    assert p.handle(closed(2, [me], ts=30)) == []  # no merge without the state
    (merge,) = p.handle(P.CheckpointAdopted(1, H1))  # the checkpoint brought it
    assert isinstance(merge, P.Merge) and merge.round == 2 and p.state_known


# ------------------------------------------------------------------------ folded commits


def test_the_coordinator_folds_commits_into_round_close_and_ignores_copies() -> None:
    c = coordinator()
    (op,) = c.handle(P.Tick(0))
    c.handle(entry(op, 0, OPEN1))
    assert c.handle(commit("a", 1)) == []  # a delta_commit entry is not how commits come now
    assert c.handle(received("zz", 1)) == []  # not an enrolled agent: not recorded
    c.handle(received("a", 1))
    assert c.holds_commit("a", 1, "ab" * 64) and not c.holds_commit("a", 1, "cd" * 64)
    assert not c.holds_commit("a", 2, "ab" * 64)
    assert c.handle(received("a", 1, "f" * 64)) == []  # a second commit: the first stands
    c.handle(received("b", 1))
    c.handle(revoke("b"))  # revoked before the close: its row would make round_close invalid
    out: list[P.Action] = []
    for n in "cdef":
        out = c.handle(received(n, 1))
    (close,) = out  # every expected agent is in (b is no longer expected)
    assert close.payload["included"] == ["a", "c", "d", "e", "f"]
    assert [r[0] for r in close.payload["commits"]] == close.payload["included"]
    assert close.payload["commits"][0][1] == "e" * 64


def test_a_round_close_without_its_commits_is_not_merged_but_abandoned() -> None:
    """A committee round_close lacking the rows (a coordinator not running this code) names
    deltas nobody can identify: no Merge; the round is abandoned at its timeout."""
    c = coordinator()
    (op,) = c.handle(P.Tick(0))
    c.handle(entry(op, 0, OPEN1))
    assert c.handle(closed(1, ["a", "b"])) == []
