"""A swarm whose agents know only their swarm id and genesis hash: built for the discovery tests.

``make_site`` writes partitions, keys, the genesis and configs the way ``edge-swarm demo``
does, except that the agents' configs carry no broker address (they find it by zeroconf)
and, optionally, neither does the gateway's. ``BrokerProcess`` runs ``edge-swarm broker``
advertising itself on the LAN, as a site's broker host does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_swarm.io.mqtt import MqttClient
from edge_swarm.learn.data import WORKLOADS, write_partitions
from edge_swarm.node.config import BrokerConfig, DiscoveryConfig, Timing
from edge_swarm.site.demo import DEFAULT_LOCAL, DEFAULT_MERGE, model_spec
from edge_swarm.site.provision import SwarmLayout, SwarmParams, provision_swarm
from edge_swarm.swarm.quantize import CodecSpec

STOP_TIMEOUT_S = 10.0


@dataclass
class Site:
    layout: SwarmLayout
    swarm: str

    @property
    def genesis(self) -> str:
        return self.layout.genesis_hash


def make_site(
    root: Path,
    swarm: str,
    *,
    n_agents: int = 2,
    rounds: int = 3,
    broker: BrokerConfig,
    interfaces: tuple[str, ...] = ("127.0.0.1",),
    gateway_finds_broker: bool = False,
    seed: int = 0,
    min_peers: int | None = None,
    start_grace_s: float = 60.0,
) -> Site:
    """Provision a small swarm (digits, MLP 64-32-10) whose agents discover their broker."""
    workload = WORKLOADS["digits"]()
    parts = write_partitions(workload, n_agents, 0.5, seed, root / "data")
    agent_parts = [p for p in parts if p.name.startswith("agent-")]
    params = SwarmParams(
        model=model_spec(64, 10, (32,)),
        local=DEFAULT_LOCAL,
        merge=DEFAULT_MERGE,
        rounds=rounds,
        min_peers=n_agents if min_peers is None else min_peers,
        round_deadline_s=30.0,
        attest_timeout_s=15.0,
        start_grace_s=start_grace_s,
        init_seed=seed,
        codec=CodecSpec("int8"),
    )
    layout = provision_swarm(
        root,
        swarm,
        params,
        agent_parts,
        broker,
        Timing(connect_timeout_s=30.0),
        discovery=DiscoveryConfig(True, True, interfaces),
        gateway_discovery=DiscoveryConfig(True, gateway_finds_broker, interfaces),
    )
    return Site(layout, swarm)


class BrokerProcess:
    """``edge-swarm broker`` on ``host:port``, advertised for ``swarm`` on ``interface``."""

    def __init__(
        self,
        host: str,
        port: int,
        swarm: str,
        genesis: str,
        interface: str = "127.0.0.1",
        log_path: Path | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.host, self.port = host, port
        cmd = [
            *(prefix or []),
            sys.executable,
            "-m",
            "edge_swarm",
            "broker",
            "--host",
            host,
            "--port",
            str(port),
            "--swarm",
            swarm,
            "--genesis",
            genesis,
            "--interface",
            interface,
        ]
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until a client can connect (an MQTT CONNACK, not a sleep)."""
        probe = MqttClient("probe", self.host, self.port, on_message=lambda m: None)
        probe.start()
        try:
            assert probe.wait_connected(timeout), f"broker {self.host}:{self.port} never came up"
        finally:
            probe.stop()

    def stop(self) -> None:
        """SIGTERM (the broker withdraws its advert), SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]
