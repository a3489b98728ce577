"""Starting and stopping a swarm's processes on one machine: a broker, a gateway, agents.

Used by ``edge-swarm demo``, the benchmarks and the end-to-end tests, so that all three run
the swarm exactly as a site would: separate processes started with the project's own
command line, talking only through the broker.

Big swarms on one machine may run their agents in groups (``agents_per_process`` K > 1):
one ``edge-swarm agents`` process per group of K, a thread per agent, each agent still
with its own MQTT connection, keys, state and data. ``SwarmProcesses.agents`` then holds a
``GroupMember`` per agent, with the same handle a ``NodeProcess`` offers (its config, its
own log file, ``alive``, ``kill()``...), except that whatever it does to the process it
does to the whole group: killing agent-03 kills the agents that share its process, and
``alive`` is the group's. Tests that kill, freeze or restart single agents use K = 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edge_swarm.site.runtime_env import AGENT_ENV, AGENT_ROLES

STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Wrapper:
    """How to start one node differently: a command in front of it and extra environment,
    e.g. ``Wrapper(("faketime", "-f", "+10m"), (("FAKETIME_DONT_FAKE_MONOTONIC", "1"),))``
    for a device whose wall clock is ten minutes fast (the clock tests)."""

    prefix: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class NodeProcess:
    """One running node started from its config file; its output goes to a log file."""

    node: str
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    wrapper: Wrapper = Wrapper()
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, role: str, extra_env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        args = self._args(role)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            **(AGENT_ENV if args[0] in AGENT_ROLES else {}),  # as its unit runs it (-OO)
            **dict(self.wrapper.env),
            **(extra_env or {}),
        }
        cmd = [*self.wrapper.prefix, sys.executable, "-m", "edge_swarm", *args]
        # A session (and process group) of its own: a wrapper such as faketime forks the node
        # and waits, so signals go to the whole group, or the node would outlive its wrapper.
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def _args(self, role: str) -> list[str]:
        return [role, "--config", str(self.config)]

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes this process runs."""
        return (self.node,)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node and whatever wraps it (its process group)."""
        if self.proc is not None and self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP: the node hangs with its connection open, as a wedged device does."""
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen node carries on where it stopped."""
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no clean disconnect; the broker sends the node's last will."""
        if self.proc is not None and self.alive:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_log()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None:
            return None
        if self.alive:
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)  # a frozen (SIGSTOPped) node must see it too
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class AgentGroup(NodeProcess):
    """One process running several agents (``edge-swarm agents``), a thread each.

    ``node`` names the group (``group-01``), ``config`` is its first agent's, ``log_path``
    holds what the process itself says (start-up, signals, an agent that failed); each
    agent writes its own ``{node}.log`` beside it. Signals go to the whole process: every
    agent of the group stops, freezes or dies together.
    """

    members: dict[str, Path] = field(default_factory=dict)  # agent -> its config

    def _args(self, role: str) -> list[str]:
        configs = [a for c in self.members.values() for a in ("--config", str(c))]
        return ["agents", "--log-dir", str(self.log_path.parent), *configs]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self.members)


@dataclass
class GroupMember:
    """One agent of an ``AgentGroup``, with a ``NodeProcess``'s handle: its own config and
    log file; the process (``proc``, ``alive``, signals) is its group's. ``kill()``,
    ``stop()``, ``freeze()``... act on the whole group, and ``start()`` starts the group
    (all its agents) unless it is running."""

    node: str
    config: Path
    log_path: Path
    group: AgentGroup

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.group.proc

    @property
    def alive(self) -> bool:
        return self.group.alive

    def start(self, role: str = "agent", extra_env: dict[str, str] | None = None) -> None:
        if not self.group.alive:
            self.group.start(role, extra_env)

    def signal(self, sig: int) -> None:
        self.group.signal(sig)

    def freeze(self) -> None:
        self.group.freeze()

    def thaw(self) -> None:
        self.group.thaw()

    def kill(self) -> None:
        self.group.kill()

    def stop(self) -> int | None:
        return self.group.stop()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


AgentHandle = NodeProcess | GroupMember


def group_agents(
    names: Iterable[str], per_process: int, first: Collection[str] | None = None
) -> list[list[str]]:
    """``names`` in processes of up to ``per_process``, in order. The agents of ``first``
    (those a run starts at once; None: all) are grouped apart from the others, so that
    each group can start as a whole. Raises ValueError unless ``per_process`` >= 1."""
    if per_process < 1:
        raise ValueError(f"agents per process must be at least 1, got {per_process}")
    names = list(names)
    batches = (
        [names]
        if first is None
        else [
            [n for n in names if n in first],
            [n for n in names if n not in first],
        ]
    )
    return [b[i : i + per_process] for b in batches for i in range(0, len(b), per_process)]


@dataclass
class SwarmProcesses:
    """The gateways and agents of one provisioned swarm. ``agents``: a handle per agent,
    its ``NodeProcess``, or its ``GroupMember`` when agents share processes."""

    gateways: dict[str, NodeProcess]
    agents: dict[str, AgentHandle]
    broker: Any = None  # the broker the run started, when it started one (fault tests)

    @classmethod
    def from_layout(
        cls,
        gateway_configs: dict[str, Path],
        agent_configs: dict[str, Path],
        logs: Path,
        wrappers: dict[str, Wrapper] | None = None,
        agents_per_process: int = 1,
        first: Collection[str] | None = None,
    ) -> SwarmProcesses:
        """Processes for the layout's configs; ``wrappers``: node -> how to start it.

        ``agents_per_process`` K > 1 runs the agents in groups of K (``group_agents``;
        ``first``: the agents started at once, grouped apart from later ones). A wrapped
        agent always gets a process of its own (a wrapper such as faketime acts on a whole
        process), and so does the last agent of a batch when it is alone.
        """
        how = wrappers or {}

        def proc(n: str, c: Path) -> NodeProcess:
            return NodeProcess(n, c, logs / f"{n}.log", wrapper=how.get(n, Wrapper()))

        gws = {n: proc(n, c) for n, c in gateway_configs.items()}
        alone = agents_per_process == 1
        agents: dict[str, AgentHandle] = {
            n: proc(n, c) for n, c in agent_configs.items() if alone or n in how
        }
        pooled = [] if alone else [n for n in agent_configs if n not in how]
        batches = group_agents(pooled, agents_per_process, first)
        for i, batch in enumerate([b for b in batches if len(b) > 1], start=1):
            members = {n: agent_configs[n] for n in batch}
            name = f"group-{i:02d}"
            group = AgentGroup(name, members[batch[0]], logs / f"{name}.log", members=members)
            agents |= {n: GroupMember(n, c, logs / f"{n}.log", group) for n, c in members.items()}
        for batch in batches:
            if len(batch) == 1:
                agents[batch[0]] = proc(batch[0], agent_configs[batch[0]])
        return cls(gws, {n: agents[n] for n in agent_configs})

    @property
    def agent_processes(self) -> list[NodeProcess]:
        """Each agent process once (a group once, however many agents it runs)."""
        procs = (a.group if isinstance(a, GroupMember) else a for a in self.agents.values())
        return list({id(p): p for p in procs}.values())

    @property
    def groups(self) -> list[AgentGroup]:
        return [p for p in self.agent_processes if isinstance(p, AgentGroup)]

    @property
    def gateway(self) -> NodeProcess:
        return self.gateways["gateway-1"]

    def start(self, agents: list[str] | None = None) -> None:
        """Start the gateways, then the processes of ``agents`` (None: all of them). A group
        starts as a whole: ValueError if ``agents`` names only part of one."""
        names = list(agents if agents is not None else self.agents)
        unknown = [n for n in names if n not in self.agents]
        if unknown:
            raise KeyError(f"no such agents: {', '.join(unknown)}")
        procs: list[NodeProcess] = []
        for p in self.agent_processes:
            inside = [n for n in p.nodes if n in names]
            if inside and len(inside) < len(p.nodes):
                raise ValueError(
                    f"{', '.join(inside)} share a process ({p.node}) with "
                    f"{', '.join(n for n in p.nodes if n not in inside)}: start all of them"
                )
            if inside:
                procs.append(p)
        order = {n: i for i, n in enumerate(names)}  # in the order asked, as before
        procs.sort(key=lambda p: min(order[n] for n in p.nodes))
        for gw in self.gateways.values():
            gw.start("gateway")
        for p in procs:
            p.start("agent")

    def stop(self) -> None:
        for p in self.agent_processes:
            p.stop()
        for gw in self.gateways.values():
            gw.stop()

    def kill(self) -> None:
        """SIGKILL every node, as a power cut does: all are signalled before any is reaped,
        so that no node sees another one go first. Each can be started again."""
        for p in self.all:
            p.signal(signal.SIGKILL)
        for p in self.all:
            p.kill()

    @property
    def all(self) -> list[NodeProcess]:
        """Every process: the gateways, then the agents' (a group once)."""
        return [*self.gateways.values(), *self.agent_processes]

    def failed(self) -> list[NodeProcess]:
        """Processes that exited on their own with an error."""
        return [
            p for p in self.all if p.proc is not None and p.proc.poll() not in (None, 0, -9, -15)
        ]
