"""``edge-swarm agents``: several agent runtimes in one process, a thread each.

For big swarms on one machine (tests, benchmarks, ``edge-swarm demo --agents-per-process``):
each agent keeps its own MQTT connection, keys, config, state and data; the process shares
only the interpreter, its imports and the logging set-up, where each line is stamped with
the agent that logged it and, with a log directory, routed to that agent's own file.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_swarm.cli.main import LOG_DATEFMT

log = logging.getLogger("edge_swarm")

# Several agents in one process: each line says whose it is.
AGENTS_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(node)s %(name)s: %(message)s"
NO_AGENT = "-"  # the node field of a line no agent of the process logged


class _AgentThreads:
    """Which agent of this process a log record is about, from the thread that logged it:
    the agent's loop thread (named after the agent), paho's network thread of its MQTT
    client (``paho-mqtt-client-{client id}``), or any thread while it builds that agent
    (``acting_as``). Other threads (zeroconf's, the main thread) belong to no agent."""

    def __init__(self) -> None:
        self._by_thread: dict[str, str] = {}
        self._local = threading.local()

    def add(self, node_id: str, mqtt_client_id: str) -> None:
        self._by_thread[node_id] = node_id
        self._by_thread[f"paho-mqtt-client-{mqtt_client_id}"] = node_id

    @contextlib.contextmanager
    def acting_as(self, node_id: str) -> Iterator[None]:
        self._local.node = node_id
        try:
            yield
        finally:
            self._local.node = None

    def node_of(self, thread_name: str) -> str:
        return getattr(self._local, "node", None) or self._by_thread.get(thread_name, NO_AGENT)


class _NodeFilter(logging.Filter):
    """Stamps a record with ``node`` (the agent that logged it, or ``-``) and, given
    ``only``, passes only that agent's records. A handler filter, not a logger one: a
    logger's filters never see the records its children propagate to it."""

    def __init__(self, threads: _AgentThreads, only: str | None = None) -> None:
        super().__init__()
        self.threads = threads
        self.only = only

    def filter(self, record: logging.LogRecord) -> bool:
        node = getattr(record, "node", None)
        if node is None:
            node = self.threads.node_of(record.threadName or "")
            record.node = node
        return self.only is None or node == self.only


def _route_logs(threads: _AgentThreads, nodes: list[str], log_dir: Path | None) -> None:
    """Each line says whose it is. With ``log_dir``, each agent's lines go to its own
    ``log_dir/{node}.log`` (as ``edge-swarm agent``'s output does when a site or the demo
    sends it to that file) and standard error keeps only the lines no agent logged;
    without it, every line goes to standard error."""
    root = logging.getLogger()
    fmt = logging.Formatter(AGENTS_LOG_FORMAT, LOG_DATEFMT)
    for h in root.handlers:  # the standard-error handler of _setup_logging
        h.setFormatter(fmt)
        h.addFilter(_NodeFilter(threads, NO_AGENT if log_dir is not None else None))
    if log_dir is None:
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        h = logging.FileHandler(log_dir / f"{node}.log", encoding="utf-8")
        h.setFormatter(fmt)
        h.addFilter(_NodeFilter(threads, node))
        root.addHandler(h)


def _load_agent_configs(paths: list[Path]) -> list[Any] | str:
    """The agents' configs, or why they cannot run together in this process."""
    from edge_swarm.node.config import ConfigError, load_config

    cfgs = []
    for path in paths:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            return str(exc)
        if cfg.role != "agent":
            return f"{path} configures a {cfg.role}, not an agent"
        cfgs.append(cfg)
    for what, values in (
        ("agent (swarm.node)", [f"{c.swarm}.{c.node_id}" for c in cfgs]),  # its MQTT client id
        ("state_dir", [str(c.state_dir.resolve()) for c in cfgs]),  # its residual, its delta
    ):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            return f"each {what} once: {', '.join(twice)} given twice"
    return cfgs


def run_agents(config_paths: list[Path], log_dir: Path | None) -> int:
    """``edge-swarm agents``: several agent runtimes in this one process, a thread each.

    Each agent is the one ``edge-swarm agent`` runs (its own MQTT connection, keys, config,
    state directory and data); only the process is shared: imports, the interpreter and
    the logging set-up (see ``_route_logs``). Every config is loaded and every agent built
    before any starts; one that cannot be is refused with exit code 2 and none runs.
    SIGTERM and SIGINT stop them all. An agent that ends with an error (it cannot reach
    its broker, its swarm needs a key it lacks, a bug) stops the others too, and the exit
    code is 1: a process that silently lost one of its agents would look healthy to
    whoever watches it. An agent told to stop by a fleet command just ends; the process
    exits (0) when the last one has.
    """
    from edge_swarm.cli.main import why_not
    from edge_swarm.node.agent import Agent
    from ledger_lite.errors import LedgerError

    cfgs = _load_agent_configs(config_paths)
    if isinstance(cfgs, str):
        print(f"edge-swarm agents: {cfgs}", file=sys.stderr)
        return 2
    threads = _AgentThreads()
    _route_logs(threads, [c.node_id for c in cfgs], log_dir)
    nodes: dict[str, Agent] = {}
    for cfg in cfgs:
        try:
            with threads.acting_as(cfg.node_id):
                node = Agent(cfg)
        except (OSError, ValueError, LedgerError) as exc:
            why = why_not(exc, cfg)
            print(f"edge-swarm agents: {cfg.node_id} cannot start: {why}", file=sys.stderr)
            return 2
        threads.add(cfg.node_id, node.mqtt.client_id)
        # Agent puts a ring of recent lines (the `logs` fleet command) on the root logger:
        # it would collect every agent's lines here.
        node.log_ring.addFilter(_NodeFilter(threads, cfg.node_id))
        nodes[cfg.node_id] = node
    return _run_agent_threads(nodes)


def _run_agent_threads(nodes: dict[str, Any]) -> int:
    """Run each node on a thread named after it until all have ended (see run_agents)."""
    ended: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def run(node_id: str, node: Any) -> None:
        error = None
        try:
            node.run()
        except RuntimeError as exc:  # the broker cannot be reached, as `edge-swarm agent` says
            error = str(exc)
            log.error("%s", exc)
        except SystemExit as exc:  # NodeRuntime's word that this node cannot work
            error = str(exc.code)
            log.error("%s", exc.code)
        except BaseException as exc:  # noqa: BLE001 - a thread's end must reach the main one
            error = f"{type(exc).__name__}: {exc}"
            log.exception("the agent's loop ended with an error")
        finally:
            ended.put((node_id, error))

    def stop_all() -> None:
        for node in nodes.values():
            node.stop()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping %d agents", signum, len(nodes))
        stop_all()

    # Only the main thread may install signal handlers: it does, for all the agents.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for node_id, node in nodes.items():
        threading.Thread(target=run, args=(node_id, node), name=node_id, daemon=True).start()
    log.info("running %d agents: %s", len(nodes), ", ".join(nodes))
    failed: dict[str, str] = {}
    for _ in nodes:
        node_id, error = ended.get()  # signal handlers run while this waits
        if error is None:
            continue
        failed[node_id] = error
        if len(failed) == 1 and len(nodes) > 1:
            print(
                f"edge-swarm agents: {node_id}: {error}; stopping the other agents",
                file=sys.stderr,
                flush=True,
            )
            stop_all()
        else:
            print(f"edge-swarm agents: {node_id}: {error}", file=sys.stderr, flush=True)
    return 1 if failed else 0
