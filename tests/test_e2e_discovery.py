"""End to end on loopback: agents that know only their swarm id and genesis hash find the
broker by zeroconf, ignore a rogue advert and a second swarm on the same LAN, and follow the
broker when it moves. Real processes, real multicast on 127.0.0.1 (python-zeroconf);
``test_netns_discovery.py`` does the same across network namespaces.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_swarm.io.broker import EmbeddedBroker, free_ports
from edge_swarm.io.discovery import Discovery
from edge_swarm.io.mqtt import MqttClient
from edge_swarm.node.config import BrokerConfig
from edge_swarm.node.observer import SwarmObserver
from edge_swarm.site.demo import _failure
from edge_swarm.site.launch import SwarmProcesses
from edge_swarm.swarm.adverts import SERVICE_MQTT, broker_txt
from ledger_lite import SqliteStore

from .lan_site import BrokerProcess, Site, make_site
from .side_runs import side_by_side
from .waiting import poll_until

pytestmark = pytest.mark.network

ROUNDS = 3
LOG_WAIT_S = 30.0  # bound on a running node writing a line it owes to its log


def finished(obs: SwarmObserver, rounds: int) -> bool:
    rec = obs.rounds.get(rounds)
    return rec is not None and rec.final_ms > 0


def ledger_of(site: Site) -> list:
    return SqliteStore(site.layout.ledger_path).load()


def final_rounds(site: Site) -> list[int]:
    """Rounds with a model_final in the gateway's ledger file, read without writing."""
    if not site.layout.ledger_path.exists():
        return []
    with SqliteStore(site.layout.ledger_path, verify_only=True) as store:
        return [e.payload["round"] for e in store.load() if e.kind == "model_final"]


def procs_of(site: Site, root: Path) -> SwarmProcesses:
    return SwarmProcesses.from_layout(
        site.layout.gateway_configs, site.layout.agent_configs, root / "logs"
    )


def log_of(root: Path, node: str) -> str:
    return (root / "logs" / f"{node}.log").read_text()


def rogue_run(tmp_path: Path) -> tuple[Site, Site, int, list[str]]:
    """Two swarms and a rogue broker on the LAN, to the end of their rounds: the sites, the
    port of clinic-a's broker, and the topics the rogue's broker saw."""
    port_a, port_b = free_ports(2)
    a = make_site(tmp_path / "a", "clinic-a", broker=BrokerConfig("127.0.0.1", port_a))
    b = make_site(tmp_path / "b", "clinic-b", broker=BrokerConfig("127.0.0.1", port_b), seed=1)
    # A rogue on the LAN: same swarm id as clinic-a, a genesis of its own, its own broker.
    rogue_broker = EmbeddedBroker(host="127.0.0.1", port=0)
    rogue_broker.start()
    seen_by_rogue: list[str] = []
    rogue_tap = MqttClient(
        "tap", "127.0.0.1", rogue_broker.port, on_message=lambda m: seen_by_rogue.append(m.topic)
    )
    rogue_ad = Discovery(["127.0.0.1"])
    brokers = [
        BrokerProcess("127.0.0.1", port_a, a.swarm, a.genesis, log_path=tmp_path / "ba.log"),
        BrokerProcess("127.0.0.1", port_b, b.swarm, b.genesis, log_path=tmp_path / "bb.log"),
    ]
    procs = [procs_of(a, tmp_path / "a"), procs_of(b, tmp_path / "b")]
    observers = [
        SwarmObserver(a.swarm, "127.0.0.1", port_a),
        SwarmObserver(b.swarm, "127.0.0.1", port_b),
    ]
    try:
        rogue_tap.start()
        assert rogue_tap.wait_connected(10) and rogue_tap.subscribe("#")
        rogue_ad.advertise(
            SERVICE_MQTT,
            "clinic-a-broker-rogue",
            rogue_broker.port,
            ["127.0.0.1"],
            broker_txt(a.swarm, "f" * 64),
        )
        for broker in brokers:
            broker.wait_ready()
        for obs in observers:
            obs.start()
        for p in procs:
            p.start()
        for obs in observers:
            assert obs.wait_for(lambda obs=obs: finished(obs, ROUNDS), timeout=120), obs.rounds
        # An agent rejects the rogue's advert (and says so) whenever it resolves it, which
        # need not be before it found its own broker and trained: wait for the lines while
        # the agents still run, rather than assume them once the rounds are done.
        for node in a.layout.agent_configs:
            lines = (
                "ignoring clinic-a-broker-rogue._mqtt._tcp.local. (wrong genesis)",
                f"found the broker of swarm clinic-a at 127.0.0.1:{port_a}",
            )
            logged = poll_until(
                lambda node=node, lines=lines: all(
                    ln in log_of(tmp_path / "a", node) for ln in lines
                ),
                LOG_WAIT_S,
            )
            assert logged, f"{node} never logged {lines}:\n{log_of(tmp_path / 'a', node)[-2000:]}"
    finally:
        for p in procs:
            p.stop()
        for obs in observers:
            obs.stop()
        for broker in brokers:
            broker.stop()
        rogue_ad.close()
        rogue_tap.stop()
        rogue_broker.stop()
    return a, b, port_a, seen_by_rogue


# Made beside the site of the next test (tests/side_runs.py): each one's nodes see the other's
# adverts on the LAN too, another swarm, ignored as such.
@side_by_side(rogue_run)
def test_agents_find_their_broker_and_ignore_a_rogue_and_another_swarm(
    side_run: tuple[Site, Site, int, list[str]],
) -> None:
    a, b, port_a, seen_by_rogue = side_run
    # Each swarm trained with its own agents only, every round.
    for site in (a, b):
        entries = ledger_of(site)
        agents = sorted(site.layout.agent_configs)
        closes = [e.payload["included"] for e in entries if e.kind == "round_close"]
        assert closes == [agents] * ROUNDS, (site.swarm, closes)
        assert {e.author for e in entries if e.kind == "delta_commit"} == set(agents)
    # Nobody of clinic-a spoke to the rogue's broker, and the agents said why they ignored it.
    assert not [t for t in seen_by_rogue if "clinic" in t], seen_by_rogue[:5]
    for node in a.layout.agent_configs:
        text = log_of(a.layout.root, node)
        assert "ignoring clinic-a-broker-rogue._mqtt._tcp.local. (wrong genesis)" in text, node
        assert f"found the broker of swarm clinic-a at 127.0.0.1:{port_a}" in text


def moving_broker_run(tmp_path: Path) -> tuple[Site, int, int]:
    """A site whose broker host is replaced after round 2, to the end of its rounds: the
    site, and the broker's old and new ports."""
    port_1, port_2 = free_ports(2)
    # The gateway too finds the broker by discovery, so that it can follow it.
    site = make_site(
        tmp_path,
        "clinic",
        rounds=5,
        broker=BrokerConfig("127.0.0.1", port_1),
        gateway_finds_broker=True,
    )
    first = BrokerProcess(
        "127.0.0.1", port_1, site.swarm, site.genesis, log_path=tmp_path / "b1.log"
    )
    procs = procs_of(site, tmp_path)
    second: BrokerProcess | None = None
    before = SwarmObserver(site.swarm, "127.0.0.1", port_1)
    after: SwarmObserver | None = None
    try:
        first.wait_ready()
        before.start()
        procs.start()
        assert before.wait_for(lambda: finished(before, 2), timeout=120), before.rounds
        before.stop()
        # The broker host is replaced: the old one says goodbye, the new one listens on
        # another address (127.0.0.2 is this host too) and advertises itself there.
        first.stop()
        second = BrokerProcess(
            "127.0.0.2", port_2, site.swarm, site.genesis, log_path=tmp_path / "b2.log"
        )
        second.wait_ready()
        after = SwarmObserver(site.swarm, "127.0.0.2", port_2)
        after.start()
        # The rounds after the move can all end before this observer subscribes (they take
        # a fraction of a second): the gateway's ledger file is the other witness.
        done = after.wait_for(
            lambda: finished(after, 5) or 5 in final_rounds(site) or bool(procs.failed()), 120
        )
        assert done, _failure(f"rounds after the move: {sorted(after.rounds)}", procs)
        assert 5 in final_rounds(site)
    finally:
        procs.stop()
        if after is not None:
            after.stop()
        before.stop()
        first.stop()
        if second is not None:
            second.stop()
    return site, port_1, port_2


@side_by_side(moving_broker_run)
def test_agents_follow_the_broker_to_a_new_address(side_run: tuple[Site, int, int]) -> None:
    site, port_1, port_2 = side_run
    finals = [e.payload["round"] for e in ledger_of(site) if e.kind == "model_final"]
    assert finals == [1, 2, 3, 4, 5]
    for node in (*site.layout.agent_configs, "gateway-1"):
        text = log_of(site.layout.root, node)
        assert f"broker moved: 127.0.0.1:{port_1} -> 127.0.0.2:{port_2}" in text, node
