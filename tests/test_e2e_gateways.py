"""Three gateways replicating the ledger by Raft, as separate processes on loopback, while a
swarm trains; the leader is killed without warning mid-training."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_swarm.node.observer import SwarmObserver
from edge_swarm.site.demo import RunConfig
from edge_swarm.site.launch import SwarmProcesses
from ledger_lite import SqliteStore
from ledger_lite.verify import verify_file

from .waiting import run_settled

pytestmark = pytest.mark.network


def test_swarm_survives_sigkill_of_the_raft_leader_and_replicas_agree(tmp_path: Path) -> None:
    cfg = RunConfig(
        workdir=tmp_path,
        n_agents=4,
        rounds=6,
        n_gateways=3,
        round_deadline_s=20.0,
        attest_timeout_s=10.0,
        start_grace_s=20.0,
        timeout_s=150.0,
    )
    seen: dict[str, str] = {}

    def kill_the_leader(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        assert obs.wait_for(lambda: obs.final_round() >= 2, timeout=60)
        # The coordinator signs round_open: its author is the leader of the moment.
        leader = [e.author for e in obs.entries if e.kind == "round_open"][-1]
        seen["killed"] = leader
        procs.gateways[leader].kill()
        assert obs.wait_for(lambda: obs.final_round() >= 4, timeout=60), "no progress after kill"
        new = [e.author for e in obs.entries if e.kind == "round_open"][-1]
        seen["new"] = new
        procs.gateways[leader].start("gateway")  # it must catch up from the others

    # The site is stopped only once the ledger is quiet (every agent's attestation of the
    # last round is in) and all three replicas end on the same entry: the restarted one
    # catches up from the others, which takes a while on a loaded machine.
    agents = [f"agent-{i:02d}" for i in range(1, cfg.n_agents + 1)]
    result = run_settled(cfg, during=kill_the_leader, attesters=agents)
    assert seen["new"] != seen["killed"]
    assert [r.round for r in result.rounds] == [1, 2, 3, 4, 5, 6]
    assert all(r.accuracy is not None for r in result.rounds)

    chains = {}
    for gw, path in result.layout.ledger_paths.items():
        with SqliteStore(path, verify_only=True) as store:
            chains[gw] = store.load()
    tips = {gw: (len(chain) - 1, chain[-1].hash[:12]) for gw, chain in chains.items()}
    assert len(set(tips.values())) == 1, tips  # the restarted one caught up too
    for path in result.layout.ledger_paths.values():
        assert verify_file(path).ok
    # No entry anyone saw acknowledged (published on ledger/events) was lost.
    chain = chains["gateway-1"]
    assert len(result.events) > 50
    for e in result.events:
        assert chain[e.height].hash == e.hash
