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
            # Its commit, folded into the compact round_close, proven against the signed rows.
            assert result.telemetry_of(a).get("commits_proven", 0) >= 1, a
            assert "the round closed without our commit" not in logs[a]
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


def test_with_three_gateways_one_lying_the_honest_majority_finalises(tmp_path: Path) -> None:
    """Three gateways replicating the ledger (Raft) and k = 2: a committee of 5, quorum 3.
    Followers attest too (every gateway is a member), so a round finalises with the votes
    of gateways that do not coordinate; and gateway-1's merge is spoiled (its change times
    10, tests only): its vote never counts, the other four decide every round, and every
    agent ends every round on the final bytes (a light agent refuses the liar's update, if
    it leads and publishes one, and takes the checkpoint)."""
    cfg = small(tmp_path, "embedded", n_agents=4, rounds=2, merge_by="committee", committee_k=2)
    liar = {"name": "scale", "strength": 10.0}
    result = run_settled(replace(cfg, n_gateways=3, attacks=(("gateway-1", liar),)))
    entries = entries_of(result)
    gateways = {"gateway-1", "gateway-2", "gateway-3"}
    fin = finals(result)
    assert sorted(fin) == [1, 2]
    for e in entries:
        if e.kind != "model_final":
            continue
        members, voters = set(e.payload["committee"]), set(e.payload["attesters"])
        assert gateways <= members and len(members) == 5, members
        assert len(voters) >= 3 and voters <= members and "gateway-1" not in voters
        assert "abandoned" not in e.payload
    votes = {x.author for x in entries if x.kind == "model_attest" and x.author in gateways}
    assert {"gateway-2", "gateway-3"} <= votes, f"only {votes} attested: followers do not vote"
    lies = [
        x.payload["model_hash"]
        for x in entries
        if x.kind == "model_attest" and x.author == "gateway-1" and x.payload["round"] in fin
    ]
    assert lies and not set(lies) & set(fin.values()), "gateway-1's merge was not spoiled?"
    agents = sorted(result.layout.agent_configs)
    logs = {a: (cfg.workdir / "logs" / f"{a}.log").read_text(errors="replace") for a in agents}
    for rnd, model_hash in fin.items():
        for a in agents:
            held = (
                f"adopted checkpoint of round {rnd} ({model_hash[:12]})",
                f"round {rnd}: applied the committee's update ({model_hash[:12]})",
            )
            attested = any(
                x.kind == "model_attest"
                and x.author == a
                and x.payload["round"] == rnd
                and x.payload["model_hash"] == model_hash
                for x in entries
            )
            assert attested or any(h in logs[a] for h in held), f"{a} lacks round {rnd}"


def _entries_per_round(entries: list, rounds: list[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {r: {} for r in rounds}
    for e in entries:
        rnd = e.payload.get("round") if isinstance(e.payload, dict) else None
        if rnd in out:
            out[rnd][e.kind] = out[rnd].get(e.kind, 0) + 1
    return out


def test_the_ledger_grows_by_the_same_entries_per_round_at_8_and_32_agents(
    tmp_path: Path,
) -> None:
    """Agents' commits are folded into round_close (each row its agent's own signature), so
    a round adds the same entries whatever the fleet size; the audit still lists every
    contributor of every round with its samples and merge weight."""
    from edge_swarm.swarm.audit import audit_rounds
    from ledger_lite.commits import row_tx
    from ledger_lite.keys import verify

    counts = {}
    for n in (8, 32):
        cfg = small(
            tmp_path / f"n{n}",
            "embedded",
            n_agents=n,
            agents_per_process=1 if n == 8 else 8,
            rounds=2,
            merge_by="committee",
            committee_k=2,
        )
        result = run_settled(cfg)
        entries = entries_of(result)
        agents = sorted(result.layout.agent_configs)
        assert not [e for e in entries if e.kind == "delta_commit"]  # none of its own
        per_round = _entries_per_round(entries, [1, 2])
        counts[n] = per_round
        keys = {e.payload["node"]: e.payload["pubkey"] for e in entries if e.kind == "enroll"}
        audit = audit_rounds(entries)
        for rnd in (1, 2):
            close = next(
                e for e in entries if e.kind == "round_close" and e.payload["round"] == rnd
            )
            assert close.payload["included"] == agents  # everyone, in one entry
            for row in close.payload["commits"]:  # each row verifies as its agent's own
                tx = row_tx(cfg.swarm, rnd, row)
                assert verify(keys[row[0]], tx.signing_bytes(), bytes.fromhex(tx.sig))
            record = audit[rnd].to_dict()
            assert [c["node"] for c in record["contributors"]] == agents
            assert all(c["n_samples"] and c["envelope_sha256"] for c in record["contributors"])
            assert sorted(audit[rnd].merge_weights()) == agents  # each one's merge weight
    # Per round: open, close, final, and the committee's attestations: its 3 members (the
    # gateway and 2 drawn agents) attest, a quorum of 2 before the final; a member slowed
    # down may attest too late to count (after the next final): 2 or 3, at either size.
    for n, per_round in counts.items():
        for rnd, kinds in per_round.items():
            attests = kinds.pop("model_attest", 0)
            assert kinds == {"round_open": 1, "round_close": 1, "model_final": 1}, (n, rnd)
            assert 2 <= attests <= 3, (n, rnd, attests)


def _kept_delta(agent_state: Path) -> tuple[int, str] | None:
    """(round, sha256) of the delta an agent keeps on disk before committing it, or None."""
    import hashlib
    import struct

    try:
        data = (agent_state / "delta.bin").read_bytes()
    except OSError:
        return None
    if len(data) < 8:
        return None
    return struct.unpack(">I", data[4:8])[0], hashlib.sha256(data[8:]).hexdigest()


def test_a_power_cut_after_commits_of_an_open_round_recommits_the_kept_deltas(
    tmp_path: Path,
) -> None:
    """Commits are held by the coordinator until round_close (folded), so a power cut
    while a round is open loses them on the gateway's side. Each agent that had committed
    commits again, after the restart, the very bytes it kept on disk (members may already
    hold them), instead of training a second delta; the round closes with every agent."""
    from .test_e2e import BIG
    from .test_e2e_faults import (
        DOWNTIME_S,
        agent_logs,
        gateway_ledger,
        ledger_entries,
        need_mosquitto,
        pause,
        run_with_fault,
    )
    from .test_e2e_faults import small as faults_small

    need_mosquitto()
    cfg = faults_small(tmp_path, hidden=BIG, rounds=3, round_deadline_s=40.0, merge_by="committee")
    states = {a: cfg.workdir / "state" / a for a in [f"agent-{i:02d}" for i in range(1, 5)]}
    at_cut: dict[str, str] = {}

    def cut(procs, obs) -> None:  # noqa: ANN001 - run_with_fault's hook
        def committed_in_open_round_2() -> bool:
            rec = obs.rounds.get(2)
            if rec is None or rec.opened_ms == 0 or rec.closed_ms > 0:
                return False
            return any((_kept_delta(s) or (0, ""))[0] == 2 for s in states.values())

        assert obs.wait_for(committed_in_open_round_2, 120.0), "no agent kept a round-2 delta"
        procs.broker.kill()  # first: from here on no message moves
        procs.kill()
        for a, s in states.items():
            kept = _kept_delta(s)
            if kept is not None and kept[0] == 2:
                at_cut[a] = kept[1]
        pause(obs, DOWNTIME_S)
        procs.broker.start()
        procs.start()

    problems = run_with_fault(cfg, cut)
    assert not problems, "\n".join(problems)
    assert at_cut, "the cut came before any agent kept its delta"
    (close,) = [
        e
        for e in ledger_entries(gateway_ledger(cfg))
        if e.kind == "round_close" and e.payload["round"] == 2
    ]
    rows = {row[0]: row[1] for row in close.payload["commits"]}
    logs = agent_logs(cfg)
    for agent, sha in at_cut.items():
        assert rows[agent] == sha, f"{agent} trained round 2 again instead of re-committing"
        assert "round 2: our delta kept on disk is committed again" in logs[agent]
