"""A merge committee in a real swarm (merge_by = "committee" at genesis; issue 16).

Agent processes, a gateway, a real broker, sealed deltas. Each round the gateway and
committee_k agents drawn from the round_open entry's hash merge and attest; model_final
needs a quorum of them and names the committee; every other agent never receives a peer's
delta (counted by the agent itself, in its telemetry) and takes the final model from the
committee's downlink update, which it applies only if a quorum of the committee attested it
and the result hashes to the ledger's model_final (the retained checkpoint is its fallback).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge_swarm.swarm.merge import MergeRule

from .test_e2e import entries_of, finals, small
from .waiting import run_settled

pytestmark = pytest.mark.network


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(None, id="mean"),  # the demo's FedAvgM over the sample-weighted mean
        pytest.param(
            MergeRule("fedavgm", momentum=0.5, aggregator="median", f=2, mix="nnm"),
            id="nnm+median",
        ),
    ],
)
def test_a_committee_round_ends_every_agent_on_the_final_bytes_and_light_agents_take_no_delta(
    tmp_path: Path, rule: MergeRule | None
) -> None:
    # k = 1 over 8 agents and 3 rounds: at least 5 agents are never drawn (light throughout).
    cfg = small(tmp_path, "embedded", n_agents=8, rounds=3, merge_by="committee", committee_k=1)
    if rule is not None:
        cfg = replace(cfg, merge=rule)
    result = run_settled(cfg)
    entries = entries_of(result)
    agents = sorted(result.layout.agent_configs)
    fin = finals(result)
    assert sorted(fin) == [1, 2, 3]
    rules = {e.payload["merge"]["rule"] for e in entries if e.kind == "model_final"}
    assert rules == {cfg.merge.aggregation}
    drawn: set[str] = set()
    for e in entries:
        if e.kind != "model_final":
            continue
        p, rnd = e.payload, e.payload["round"]
        members = p["committee"]
        assert "abandoned" not in p, p
        assert len(members) == 2 and "gateway-1" in members, members  # 1 gateway + k agents
        assert set(p["attesters"]) <= set(members) and len(p["attesters"]) >= 2  # the quorum
        member_agents = [m for m in members if m in agents]
        drawn |= set(member_agents)
        closes = [x for x in entries if x.kind == "round_close" and x.payload["round"] == rnd]
        assert closes[-1].payload["included"] == agents  # everyone trained and was merged
        # Only the committee attests (the ledger grows by its size, not the fleet's).
        attests = {
            x.author for x in entries if x.kind == "model_attest" and x.payload["round"] == rnd
        }
        assert attests <= set(members), attests
    logs = {a: (cfg.workdir / "logs" / f"{a}.log").read_text(errors="replace") for a in agents}
    for rnd, model_hash in fin.items():
        for a in agents:
            attested = any(
                x.kind == "model_attest"
                and x.author == a
                and x.payload == {**x.payload, "round": rnd, "model_hash": model_hash}
                for x in entries
            )
            adopted = f"adopted checkpoint of round {rnd} ({model_hash[:12]})" in logs[a]
            updated = f"round {rnd}: applied the committee's update ({model_hash[:12]})" in logs[a]
            assert attested or adopted or updated, f"{a} does not hold round {rnd}'s final model"
    light = [a for a in agents if a not in drawn]
    assert len(light) >= 5
    # Light agents follow by the committee's one compact update per round, not the model:
    # the retained checkpoint is their fallback only (an update late under load).
    by_update = sum(logs[a].count("applied the committee's update") for a in light)
    assert by_update >= len(light) * len(fin) // 2, by_update
    for a in agents:
        seen = result.telemetry_of(a).get("peer_deltas")
        assert seen is not None, f"{a} sent no telemetry with peer_deltas"
        if a in light:
            assert seen == 0, f"{a}, never on a committee, received {seen} peers' deltas"
        else:
            assert seen > 0, f"{a} merged a round without receiving its deltas?"


def test_a_gateway_whose_merge_lies_is_outvoted_by_the_drawn_agents(tmp_path: Path) -> None:
    """One gateway and k = 2 drawn agents (quorum 2): the gateway's own merge is spoiled (its
    change multiplied by 10, config [gateway] attack, tests only). Its attestation never
    finalises a round; the two drawn agents' honest merge does, every round; the gateway then
    takes the final model from them (node/model_share.py) and every agent holds it."""
    cfg = small(tmp_path, "embedded", n_agents=6, rounds=3, merge_by="committee", committee_k=2)
    cfg = replace(cfg, attacks=(("gateway-1", {"name": "scale", "strength": 10.0}),))
    result = run_settled(cfg)
    entries = entries_of(result)
    agents = sorted(result.layout.agent_configs)
    fin = finals(result)
    assert sorted(fin) == [1, 2, 3]
    for rnd, model_hash in fin.items():
        final = next(
            e.payload for e in entries if e.kind == "model_final" and e.payload["round"] == rnd
        )
        lie = [
            e.payload["model_hash"]
            for e in entries
            if e.kind == "model_attest" and e.author == "gateway-1" and e.payload["round"] == rnd
        ]
        assert lie and lie[0] != model_hash, "the gateway's merge was not spoiled?"
        assert "gateway-1" not in final["attesters"] and len(final["attesters"]) == 2
        assert set(final["attesters"]) <= set(agents)
    gw_log = (cfg.workdir / "logs" / "gateway-1.log").read_text(errors="replace")
    assert "not this gateway's own merge; getting it from the swarm" in gw_log
    assert "holding the final model of round 3" in gw_log


def test_with_three_gateways_every_gateway_votes_on_the_committee(tmp_path: Path) -> None:
    """Three gateways replicating the ledger (Raft) and k = 2: a committee of 5, quorum 3.
    Followers attest too (every gateway is a member), so a round finalises with the votes
    of gateways that do not coordinate."""
    cfg = small(tmp_path, "embedded", n_agents=4, rounds=2, merge_by="committee", committee_k=2)
    result = run_settled(replace(cfg, n_gateways=3))
    entries = entries_of(result)
    gateways = {"gateway-1", "gateway-2", "gateway-3"}
    for e in entries:
        if e.kind != "model_final":
            continue
        members, voters = set(e.payload["committee"]), set(e.payload["attesters"])
        assert gateways <= members and len(members) == 5, members
        assert len(voters) >= 3 and voters <= members
    votes = {x.author for x in entries if x.kind == "model_attest" and x.author in gateways}
    assert len(votes) >= 2, f"only {votes} attested: followers do not vote"
