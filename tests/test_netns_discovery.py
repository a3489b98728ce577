"""Discovery across hosts: network namespaces joined by a bridge, real multicast, real processes.

Host 0 runs the broker (``edge-swarm broker``, advertising itself) and the gateway; hosts 1
and 2 run one agent each, whose config names only the swarm id and the genesis hash (no
broker address, no interface: zeroconf on every interface, as a Pi from a bundle would).
They must find the broker, join, and finish every round.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_swarm.node.config import BrokerConfig
from ledger_lite import SqliteStore

from .lan_site import make_site
from .netns import Lan, LineReader, require_netns

pytestmark = [pytest.mark.netns, pytest.mark.network]

ROUNDS = 3
PORT = 1883  # each namespace has its own stack: the standard port is free there


def _node(host, role: str, config: Path, log: Path) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    out = open(log, "wb")  # noqa: SIM115 - the child holds it; closed when the test ends
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "edge_swarm", role, "--config", str(config)]
    return host.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def test_agents_on_other_hosts_discover_the_broker_and_finish_the_rounds(tmp_path: Path) -> None:
    require_netns()
    with Lan(3) as lan:
        hub, h1, h2 = lan.hosts
        site = make_site(
            tmp_path,
            "ward-3",
            rounds=ROUNDS,
            broker=BrokerConfig(hub.ip, PORT),  # the gateway's static address of its broker
            interfaces=(),  # every interface: what a device does out of the box
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        broker = hub.run(
            [
                sys.executable,
                "-m",
                "edge_swarm",
                "broker",
                "--host",
                "0.0.0.0",
                "--port",
                str(PORT),
                "--swarm",
                site.swarm,
                "--genesis",
                site.genesis,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        LineReader(broker.stdout).expect(lambda ln: "advertising" in ln, timeout=30)
        gateway = hub.run(
            [
                sys.executable,
                "-m",
                "edge_swarm",
                "gateway",
                "--config",
                str(site.layout.gateway_config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        logs = tmp_path / "logs"
        logs.mkdir()
        for host, node in zip((h1, h2), sorted(site.layout.agent_configs), strict=True):
            _node(host, "agent", site.layout.agent_configs[node], logs / f"{node}.log")
        LineReader(gateway.stdout).expect(lambda ln: f"swarm finished: {ROUNDS}" in ln, timeout=150)
    entries = SqliteStore(site.layout.ledger_path).load()
    agents = sorted(site.layout.agent_configs)
    assert [e.payload["round"] for e in entries if e.kind == "model_final"] == [1, 2, 3]
    assert [e.payload["included"] for e in entries if e.kind == "round_close"] == [agents] * 3
    for node, host in zip(agents, (h1, h2), strict=True):
        text = (logs / f"{node}.log").read_text()
        # The broker's own advert or the gateway's: both name the hub's address.
        assert f"found the broker of swarm ward-3 at {hub.ip}:{PORT}" in text, text[-2000:]
        assert host.ip != hub.ip
