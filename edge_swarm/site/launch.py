"""Starting and stopping a swarm's processes on one machine: a broker, a gateway, agents.

Used by ``edge-swarm demo``, the benchmarks and the end-to-end tests, so that all three run
the swarm exactly as a site would: separate processes started with the project's own
command line, talking only through the broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(self.wrapper.env), **(extra_env or {})}
        cmd = [sys.executable, "-m", "edge_swarm", role, "--config", str(self.config)]
        cmd = [*self.wrapper.prefix, *cmd]
        # A session (and process group) of its own: a wrapper such as faketime forks the node
        # and waits, so signals go to the whole group, or the node would outlive its wrapper.
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

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
class SwarmProcesses:
    """The gateways and agents of one provisioned swarm."""

    gateways: dict[str, NodeProcess]
    agents: dict[str, NodeProcess]
    broker: Any = None  # the broker the run started, when it started one (fault tests)

    @classmethod
    def from_layout(
        cls,
        gateway_configs: dict[str, Path],
        agent_configs: dict[str, Path],
        logs: Path,
        wrappers: dict[str, Wrapper] | None = None,
    ) -> SwarmProcesses:
        """Processes for the layout's configs; ``wrappers``: node -> how to start it."""
        how = wrappers or {}

        def proc(n: str, c: Path) -> NodeProcess:
            return NodeProcess(n, c, logs / f"{n}.log", wrapper=how.get(n, Wrapper()))

        gws = {n: proc(n, c) for n, c in gateway_configs.items()}
        agents = {n: proc(n, c) for n, c in agent_configs.items()}
        return cls(gws, agents)

    @property
    def gateway(self) -> NodeProcess:
        return self.gateways["gateway-1"]

    def start(self, agents: list[str] | None = None) -> None:
        for gw in self.gateways.values():
            gw.start("gateway")
        for node in agents if agents is not None else list(self.agents):
            self.agents[node].start("agent")

    def stop(self) -> None:
        for p in self.agents.values():
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
        return [*self.gateways.values(), *self.agents.values()]

    def failed(self) -> list[NodeProcess]:
        """Processes that exited on their own with an error."""
        return [
            p for p in self.all if p.proc is not None and p.proc.poll() not in (None, 0, -9, -15)
        ]
