"""Several agents in one process (``--agents-per-process K``, ``edge-swarm agents``), so that
a big swarm fits on one machine: each agent keeps its own MQTT connection, keys, config,
state and data, and speaks the real protocol over the real broker; only the process (its
imports, its interpreter) is shared.

- ``SwarmProcesses.from_layout`` groups the agents in processes of K and keeps a handle
  per agent; a group starts as a whole.
- A swarm of 6 agents in 2 processes of 3 finishes its rounds with every agent in every
  round, on one model, each agent's lines in its own log file.
- SIGKILL of one group process takes down exactly its agents; the swarm goes on with the
  others.
- An agent that cannot start (a bad config: nothing runs) or cannot reach its broker (the
  others are stopped) makes the process exit non-zero, saying which agent and why.
- ``edge-swarm demo --agents-per-process 0`` is refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edge_swarm.cli.main import main
from edge_swarm.io.broker import EmbeddedBroker, free_port
from edge_swarm.node.config import BrokerConfig
from edge_swarm.node.observer import SwarmObserver
from edge_swarm.site.demo import RunConfig, RunResult, SiteBroker, prepare, run_swarm
from edge_swarm.site.launch import (
    GroupMember,
    NodeProcess,
    SwarmProcesses,
    Wrapper,
)
from ledger_lite import SqliteStore

from .side_runs import side_by_side
from .waiting import run_settled

AGENTS = [f"agent-{i:02d}" for i in range(1, 7)]
LINE = re.compile(r"^\d\d:\d\d:\d\d (\w+) +(\S+) (\S+): ")  # time, level, node, logger
EXIT_TIMEOUT_S = 60.0  # bound on one `edge-swarm agents` process that should end by itself


def small(workdir: Path, **kw: object) -> RunConfig:
    base = RunConfig(
        workdir=workdir,
        n_agents=6,
        agents_per_process=3,
        rounds=3,
        broker="embedded",
        round_deadline_s=20.0,
        attest_timeout_s=10.0,
        start_grace_s=20.0,
        timeout_s=150.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def own_lines(log: Path, node: str) -> list[str]:
    """The log lines of ``log`` (tracebacks aside), checking each says it is ``node``'s."""
    lines = [m for m in map(LINE.match, log.read_text(errors="replace").splitlines()) if m]
    strangers = [m.group(0) for m in lines if m.group(2) != node]
    assert not strangers, f"{log.name} holds lines of other agents: {strangers[:3]}"
    return [m.string for m in lines]


# --------------------------------------------------------------------------- grouping


def test_agents_are_grouped_k_to_a_process_and_a_group_starts_whole(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    configs = {f"agent-{i:02d}": tmp_path / f"agent-{i:02d}.toml" for i in range(1, 8)}
    gateways = {"gateway-1": tmp_path / "gateway-1.toml"}

    one = SwarmProcesses.from_layout(gateways, configs, logs)
    assert all(type(p) is NodeProcess for p in one.agents.values())
    assert one.agent_processes == list(one.agents.values())

    procs = SwarmProcesses.from_layout(gateways, configs, logs, agents_per_process=3)
    assert list(procs.agents) == list(configs)
    assert [p.nodes for p in procs.agent_processes] == [
        ("agent-01", "agent-02", "agent-03"),
        ("agent-04", "agent-05", "agent-06"),
        ("agent-07",),  # alone: a plain `edge-swarm agent` process
    ]
    assert [g.node for g in procs.groups] == ["group-01", "group-02"]
    member = procs.agents["agent-02"]
    assert isinstance(member, GroupMember) and member.group is procs.groups[0]
    assert (member.config, member.log_path) == (configs["agent-02"], logs / "agent-02.log")
    assert type(procs.agents["agent-07"]) is NodeProcess
    assert procs.all == [procs.gateway, *procs.agent_processes]

    # Agents started later are grouped apart from the first ones; a wrapped agent (faketime
    # acts on a whole process) runs alone.
    later = SwarmProcesses.from_layout(
        gateways,
        configs,
        logs,
        {"agent-02": Wrapper(("faketime", "-f", "+1m"))},
        agents_per_process=2,
        first=["agent-01", "agent-02", "agent-03", "agent-04"],
    )
    assert sorted(p.nodes for p in later.agent_processes) == [
        ("agent-01", "agent-03"),
        ("agent-02",),
        ("agent-04",),
        ("agent-05", "agent-06"),
        ("agent-07",),
    ]
    with pytest.raises(ValueError, match="agent-01 share a process .* with agent-03"):
        later.start(["agent-01"])
    assert later.gateway.proc is None  # refused before anything started
    with pytest.raises(ValueError, match="at least 1"):
        SwarmProcesses.from_layout(gateways, configs, logs, agents_per_process=0)


def test_the_demo_refuses_fewer_than_one_agent_per_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "run"
    assert main(["demo", "--workdir", str(workdir), "--agents-per-process", "0"]) == 2
    assert "--agents-per-process must be at least 1" in capsys.readouterr().err
    assert not workdir.exists()


# --------------------------------------------------------------------------- swarms


def grouped_run(workdir: Path) -> tuple[RunResult, SwarmProcesses]:
    """Six agents in two processes of three, to the end; the run and its processes."""
    seen: dict[str, SwarmProcesses] = {}

    def look(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        seen["procs"] = procs

    return run_settled(small(workdir), look), seen["procs"]


@side_by_side(grouped_run)
@pytest.mark.network
def test_six_agents_in_two_processes_train_together_each_with_its_own_log(
    side_run: tuple[RunResult, SwarmProcesses],
) -> None:
    result, procs = side_run
    cfg = result.config
    assert [g.nodes for g in procs.groups] == [tuple(AGENTS[:3]), tuple(AGENTS[3:])]
    pids = {n: h.proc.pid for n, h in procs.agents.items() if h.proc is not None}
    assert len(set(pids.values())) == 2 and pids["agent-01"] == pids["agent-03"]
    # Both groups were running until the end and stopped cleanly on SIGTERM.
    assert [g.proc.returncode for g in procs.groups if g.proc] == [0, 0]

    with SqliteStore(result.layout.ledger_path, verify_only=True) as store:
        entries = store.load()
    finals = {
        e.payload["round"]: e.payload["model_hash"] for e in entries if e.kind == "model_final"
    }
    assert sorted(finals) == [1, 2, 3]
    for rnd, model_hash in finals.items():
        close = next(e for e in entries if e.kind == "round_close" and e.payload["round"] == rnd)
        assert close.payload["included"] == AGENTS, f"round {rnd}"
        attests = {
            e.author: e.payload["model_hash"]
            for e in entries
            if e.kind == "model_attest" and e.payload["round"] == rnd and e.author in AGENTS
        }
        assert attests == dict.fromkeys(AGENTS, model_hash), f"round {rnd}"
    assert all(r.accuracy is not None for r in result.rounds)

    logs = cfg.workdir / "logs"
    for node in AGENTS:
        lines = own_lines(logs / f"{node}.log", node)
        text = "\n".join(lines)
        assert f"as demo.{node}" in text  # its own MQTT connection
        assert all(f"round {r}: trained" in text for r in (1, 2, 3)), node
    assert "running 3 agents: agent-04, agent-05, agent-06" in (logs / "group-02.log").read_text()


def killed_group_run(workdir: Path) -> tuple[RunResult, SwarmProcesses, int]:
    """agent-05's process SIGKILLed while round 1 is open; the run, its processes, and when
    the kill came (ms, the gateways' clock)."""
    seen: dict[str, SwarmProcesses] = {}
    killed_ms: list[int] = []

    def kill_group(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        seen["procs"] = procs  # round 1 is open
        procs.agents["agent-05"].kill()  # SIGKILL: agent-04 and agent-06 share its process
        killed_ms.append(int(time.time() * 1000))  # the gateways' clock (ledger ts), here
        assert [n for n, h in procs.agents.items() if h.alive] == AGENTS[:3]

    result = run_swarm(small(workdir, rounds=5), during=kill_group)
    return result, seen["procs"], killed_ms[0]


@side_by_side(killed_group_run)
@pytest.mark.network
def test_killing_one_group_takes_down_exactly_its_agents(
    side_run: tuple[RunResult, SwarmProcesses, int],
) -> None:
    result, procs, killed_ms = side_run
    assert [r.round for r in result.rounds] == [1, 2, 3, 4, 5]
    after = [r for r in result.rounds if r.opened_ms > killed_ms]
    assert len(after) >= 2, [(r.round, r.opened_ms) for r in result.rounds]
    for rec in after:  # the other group trains on, without the killed agents
        assert rec.included == AGENTS[:3], rec.round
        assert rec.accuracy is not None
    first, second = procs.groups
    assert first.proc is not None and first.proc.returncode == 0  # ran to the end
    assert second.proc is not None and second.proc.returncode == -9


@pytest.mark.network
def test_an_agent_that_cannot_run_makes_its_process_fail_and_says_which(
    tmp_path: Path, embedded_broker: EmbeddedBroker
) -> None:
    site = SiteBroker(BrokerConfig("127.0.0.1", embedded_broker.port))
    layout = prepare(RunConfig(workdir=tmp_path, n_agents=2, rounds=2), site)[2]
    one, two = layout.agent_configs["agent-01"], layout.agent_configs["agent-02"]
    logs = tmp_path / "logs"

    def agents(*configs: Path) -> subprocess.CompletedProcess[str]:
        args = [a for c in configs for a in ("--config", str(c))]
        cmd = [sys.executable, "-m", "edge_swarm", "agents", "--log-dir", str(logs), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)

    # Refused before any agent starts: a gateway's config, the same agent twice.
    gateway = layout.gateway_configs["gateway-1"]
    for configs, says in (
        ((one, gateway), "configures a gateway, not an agent"),
        ((one, one), "each agent (swarm.node) once: demo.agent-01 given twice"),
    ):
        done = agents(*configs)
        assert (done.returncode, says in done.stderr) == (2, True), done.stderr

    # agent-02 cannot reach its broker: it says so in its own log, and agent-01, which had
    # connected, is stopped with it.
    dead = two.read_text().replace(f"port = {embedded_broker.port}", f"port = {free_port()}")
    two.write_text(dead.replace("connect_timeout_s = 15.0", "connect_timeout_s = 1.0"))
    done = agents(one, two)
    assert done.returncode == 1, done.stderr
    assert "agent-02: could not connect to the MQTT broker" in done.stderr
    assert "stopping the other agents" in done.stderr
    assert "as demo.agent-01" in "\n".join(own_lines(logs / "agent-01.log", "agent-01"))
    failed = "\n".join(own_lines(logs / "agent-02.log", "agent-02"))
    assert "ERROR" in failed and "could not connect" in failed
