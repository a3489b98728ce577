"""What a benchmark watches beside a real swarm (``run_swarm``'s ``during`` hook on): CPU of
the gateway and of Mosquitto and the gateway's peak memory from /proc, Mosquitto's ``$SYS``
delivery counters; and how such sampled counters become per-round figures.

Mosquitto publishes ``$SYS`` every ``sys_interval`` seconds (10 by default; its check is
"more than sys_interval seconds since the last update" on whole seconds, so 1 gives a value
every 2 s). ``run_swarm``'s broker cannot be given extra config lines, so ``Probe.attach``
adds ``sys_interval 1`` to the config file the broker was started with and sends Mosquitto
SIGHUP (the option is reloaded on it). Mosquitto counts the ``$SYS`` messages it sends the
probe among its deliveries: ``own_sys_messages`` says how many to subtract.

A sampled counter becomes a per-round figure by the swarm's progress between two samples:
progress is i at round i+1's open (and R at round R's final), linear in between.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.io.mqtt import Message, MqttClient
from edge_swarm.node.observer import RoundRecord, SwarmObserver
from edge_swarm.site.launch import SwarmProcesses

SYS_INTERVAL_S = 1  # Mosquitto's $SYS period once lowered (a value every 2 s in practice)
CPU_SAMPLE_S = 0.05
CONNECT_TIMEOUT_S = 10.0
SYS_SENT = "$SYS/broker/publish/messages/sent"  # PUBLISH packets delivered to subscribers
SYS_RECEIVED = "$SYS/broker/publish/messages/received"  # PUBLISH packets taken in
SYS_PACKETS = "$SYS/broker/messages/sent"  # every packet sent: the fallback
SYS_TOPICS = (SYS_SENT, SYS_RECEIVED, SYS_PACKETS)


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of ``pid`` (all its threads) from /proc, or None if unreadable."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()  # fields 3.. ; the name may hold spaces
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kb(pid: int | None) -> int | None:
    """VmHWM of ``pid`` from /proc (the gateway sends no telemetry), or None."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return int(next(ln for ln in lines if ln.startswith("VmHWM:")).split()[1])
    return None


@dataclass
class Probe:
    """What the bench watches beside the swarm, from ``run_swarm``'s ``during`` hook on: CPU
    of the gateway and of Mosquitto, the broker's ``$SYS`` counters, the agent processes."""

    last_round: int
    cpu: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    sys: list[tuple[float, str, int]] = field(default_factory=list)  # live values only
    processes: list[tuple[str, ...]] = field(default_factory=list)  # agents of each process
    # (time, CPU seconds summed over the agent processes): what the agents pay per round
    agent_cpu: list[tuple[float, float]] = field(default_factory=list)
    gateway_rss_kb: int | None = None
    observer: SwarmObserver | None = None
    sys_note: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _client: MqttClient | None = None

    def attach(self, procs: SwarmProcesses, observer: SwarmObserver) -> None:
        self.observer = observer
        self.processes = [p.nodes for p in procs.agent_processes]
        gw = procs.gateway.proc.pid if procs.gateway.proc is not None else None
        agents = [p.proc.pid for p in procs.agent_processes if p.proc is not None]
        broker = procs.broker
        self._thread = threading.Thread(
            target=self._sample, args=(gw, broker.pid, agents), name="bench-cpu", daemon=True
        )
        self._thread.start()
        self._watch_sys(broker.port)
        self.sys_note = lower_sys_interval(broker)

    def _sample(self, gateway_pid: int | None, broker_pid: int | None, agents: list[int]) -> None:
        while not self._stop.wait(CPU_SAMPLE_S):
            self.cpu.append((time.time(), cpu_seconds(gateway_pid), cpu_seconds(broker_pid)))
            spent = [cpu_seconds(pid) for pid in agents]
            if agents and all(c is not None for c in spent):
                self.agent_cpu.append((time.time(), float(sum(c for c in spent if c))))
            self.gateway_rss_kb = peak_rss_kb(gateway_pid) or self.gateway_rss_kb

    def _watch_sys(self, port: int) -> None:
        def on_message(msg: Message) -> None:
            if not msg.retain:  # a retained value is from an earlier tick: its time is unknown
                self.sys.append((time.time(), msg.topic, int(msg.payload)))

        self._client = MqttClient("bench-scale-sys", "127.0.0.1", port, on_message=on_message)
        self._client.start()
        if not self._client.wait_connected(CONNECT_TIMEOUT_S):
            raise RuntimeError("the bench's $SYS client could not reach the broker")
        for topic in SYS_TOPICS:
            self._client.subscribe(topic, qos=0)

    def on_round(self, rec: RoundRecord) -> None:
        """After the last round, the $SYS client leaves before run_swarm stops the broker."""
        if rec.round >= self.last_round:
            self._stop_client()

    def _stop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.stop()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._stop_client()

    def series(self, topic: str) -> list[tuple[float, float]]:
        return [(t, v) for t, tp, v in self.sys if tp == topic]

    def own_sys_messages(self, t0: float, t1: float) -> int:
        """$SYS messages sent to the bench from the tick at ``t0`` up to the one before ``t1``:
        the broker counts them in the tick after (ticks are a second or more apart)."""
        return sum(1 for t, _, _ in self.sys if t0 - 0.5 <= t < t1 - 0.5)


def lower_sys_interval(broker: Any) -> str:
    """``sys_interval`` 1 s on the running Mosquitto: the line added to the config file it was
    started with (``MosquittoBroker`` writes ``workdir/mosquitto.conf``), then SIGHUP. Run as
    root, Mosquitto reads the file as the user it dropped to: the path must be readable."""
    conf = Path(broker.workdir) / "mosquitto.conf"
    broker.extra_conf += f"sys_interval {SYS_INTERVAL_S}\n"
    conf.write_text(broker.render_conf())
    conf.chmod(0o644)
    conf.parent.chmod(0o755)
    os.kill(broker.pid, signal.SIGHUP)
    return f"sys_interval {SYS_INTERVAL_S} set by SIGHUP once round 1 was open"


def progress_marks(rounds: list[RoundRecord], last: int) -> list[float]:
    """Seconds (wall clock) of round 1's open, 2's open, ..., ``last``'s open and final: the
    swarm is at progress i at mark i, linearly in between."""
    by = {r.round: r for r in rounds}
    if any(r not in by for r in range(1, last + 1)):
        return []
    marks = [by[r].opened_ms / 1000 for r in range(1, last + 1)] + [by[last].final_ms / 1000]
    return marks if all(b > a for a, b in zip(marks, marks[1:], strict=False)) else []


@dataclass(frozen=True)
class PerRound:
    """A counter's change per round, the rounds its samples spanned, and when they were."""

    value: float | None = None
    covered: float = 0.0
    span: tuple[float, float] | None = None  # wall-clock seconds of the two samples used
    from_round: int = 2  # 1: the samples of rounds 2..R spanned too little; round 1's used


def per_round(samples: list[tuple[float, float]], marks: list[float]) -> PerRound:
    """A growing counter's change per round, between its first and last sample in rounds
    2..R, over the rounds progressed in between; in rounds 1..R instead if those samples
    span less than half of rounds 2..R (the broker's $SYS comes every 2 s, short rounds)."""
    steps = np.arange(len(marks), dtype=float)
    best = PerRound()
    for first in (2, 1):
        if len(marks) < first + 1:
            continue
        inside = [(t, v) for t, v in samples if marks[first - 1] <= t <= marks[-1]]
        if len(inside) < 2:
            continue
        (t0, v0), (t1, v1) = inside[0], inside[-1]
        covered = float(np.interp(t1, marks, steps) - np.interp(t0, marks, steps))
        if covered > best.covered:
            best = PerRound((v1 - v0) / covered, covered, (t0, t1), first)
        if best.covered >= (len(marks) - first) / 2:
            break
    return best


def window(pr: PerRound, marks: list[float]) -> dict[str, Any]:
    """Where the samples used fell, in seconds from round 1's open (marks: the opens, then
    the last round's final)."""
    rel = None if pr.span is None else [round(t - marks[0], 3) for t in pr.span]
    return {
        "rounds_covered": round(pr.covered, 3),
        "from_round": pr.from_round,
        "samples_at_s": rel,
    }
