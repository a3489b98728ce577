"""Faults at a clinic site, each against a clean twin (same seed and settings, no fault).

The real swarm (Mosquitto, gateway and agent processes, the standard workload: 8 agents,
20 rounds) is run once clean per site shape, then once per fault:

- gateway: the gateway SIGKILLed at a random moment of a random round (right after one of
  the round's steps: its open, a commit, its close, its final), started again 5 s later; ten
  trials, one run each, moments drawn from a printed seed;
- power cut: broker, gateway and every agent SIGKILLed at round 8 once a commit is in, all
  started again 5 s later (the broker on its port);
- broker: Mosquitto SIGKILLed at round 8 once a commit is in, started again 5 s later;
- link: one agent runs in a network namespace (tests/netns.py) and reaches the broker over
  a veth link through a relay; the link is cut for 20 s from round 8 (root only: skipped
  with a note otherwise). Its twin runs the same namespace agent without the cut;
- flood: garbage on every topic of the swarm (tests/test_e2e_hostile_flood.py's payloads,
  each on every topic) for rounds 5, 6 and 7;
- raft leader: three gateways replicating the ledger; the Raft leader (the author of the
  newest round_open) SIGKILLed at a random moment of round 8, started again 5 s later.

For each: rounds lost (void rounds, rounds opened beyond the twin's, rounds with fewer
agents than the twin's same round), seconds from the fault and from recovery (restart, link
back, flood over) to the next model_final, whether every ledger file verifies from genesis
and extends both its anchor and the head acknowledged before the fault, and whether the
final model's hash is the twin's (it should be after a flood and a broker kill). Prints the
tables and writes ``benchmarks/results/faults.json``.

    .venv/bin/python benchmarks/bench_faults.py [--trials 10] [--only gateway flood ...]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine  # noqa: E402

from edge_swarm.io.broker import find_mosquitto  # noqa: E402
from edge_swarm.io.mqtt import MqttClient  # noqa: E402
from edge_swarm.node.config import dump_config, load_config  # noqa: E402
from edge_swarm.node.observer import SwarmObserver  # noqa: E402
from edge_swarm.site.demo import RunConfig, _finished, run_swarm  # noqa: E402
from edge_swarm.site.launch import SwarmProcesses, Wrapper  # noqa: E402
from edge_swarm.site.report import print_table, write_json  # noqa: E402
from ledger_lite import Anchor, anchor_path_for  # noqa: E402
from ledger_lite.anchor import read_anchor  # noqa: E402
from tests.netns import Lan, netns_available  # noqa: E402
from tests.test_e2e_faults import (  # noqa: E402
    DOWNTIME_S,
    GatewayKill,
    PowerCut,
    RoundFacts,
    agent_logs,
    kill_gateway,
    ledger_entries,
    ledger_problem,
    lost_commits,
    now_ms,
    pause,
    phase_of,
    power_cut,
    reached,
    refusals,
    round_facts,
    steps_of_a_round,
)
from tests.test_e2e_hostile_flood import garbage, hostile_topics  # noqa: E402
from tests.waiting import ledger_paths, settle  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FAULT_ROUND = 8  # "at round 8 of 20"
LINK_CUT_S = 20.0
FLOOD_ROUNDS = (5, 6, 7)  # every topic of each, with every garbage payload
CHECKPOINT_WAIT_S = 30.0  # the last round final on the ledger -> its checkpoint published
LATE = "agent-08"  # the agent behind the link that is cut

log = logging.getLogger("bench_faults")


class Stuck(RuntimeError):
    """The run did not finish: the reason is reported, the record still read."""


@dataclass
class Fault:
    """What a scenario did, for the reading of the record afterwards."""

    kind: str
    fault_ms: int = 0  # when the fault struck
    recovery_ms: int = 0  # when it ended (restart, link back, flood over)
    phase: str = ""  # what the observer had seen then
    held: dict[str, Anchor | None] = field(default_factory=dict)  # anchors read at the fault
    detail: dict[str, Any] = field(default_factory=dict)


Scenario = Callable[[SwarmProcesses, SwarmObserver], Fault | None]


def base_config(workdir: Path, **kw: Any) -> RunConfig:
    """The standard workload through Mosquitto; every wait of the run bounded."""
    return replace(RunConfig(workdir=workdir, broker="mosquitto", timeout_s=150.0), **kw)


# --------------------------------------------------------------------------- one run


def run_case(cfg: RunConfig, scenario: Scenario | None) -> dict[str, Any]:
    """`run_once`, run again (once) in a fresh directory if a gateway could not start at all
    because its Raft port was taken meanwhile: the harness picks free ports before the
    processes bind them, and an outgoing connection can take one in between."""
    out = run_once(cfg, scenario)
    if not out["finished"] and _port_taken(cfg):
        print(f"    a Raft port was taken before its gateway bound it: run again ({out['error']})")
        out = run_once(
            replace(cfg, workdir=cfg.workdir.with_name(cfg.workdir.name + "-again")), scenario
        )
        out["ran_again"] = "a gateway's Raft port was taken at its first start"
    return out


def _port_taken(cfg: RunConfig) -> bool:
    logs = sorted((cfg.workdir / "logs").glob("gateway-*.log"))
    return any("cannot start: cannot listen on" in p.read_text(errors="replace") for p in logs)


def run_once(cfg: RunConfig, scenario: Scenario | None) -> dict[str, Any]:
    """Run the swarm with `scenario` (None: clean), stop it once settled (or stuck), and
    read the record: every gateway's ledger file and the agents' logs."""
    fault: list[Fault | None] = [None]

    def during(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        if scenario is not None:
            fault[0] = scenario(procs, obs)
        last = cfg.rounds
        if not obs.wait_for(lambda: _ledger_done(obs, last) or bool(procs.failed()), cfg.timeout_s):
            raise Stuck(f"the ledger did not finish round {last} within {cfg.timeout_s:g} s")
        if not obs.wait_for(lambda: _finished(obs, last), CHECKPOINT_WAIT_S):
            raise Stuck(
                f"round {last} is final on the ledger but its checkpoint was not published "
                f"within {CHECKPOINT_WAIT_S:g} s"
            )
        settle(cfg, procs, obs, timeout=60.0)

    t0 = time.monotonic()
    error = None
    try:
        run_swarm(cfg, during=during)
    except (RuntimeError, AssertionError) as exc:
        error = str(exc).splitlines()[0]
    out = read_record(cfg)
    out.update(wall_s=round(time.monotonic() - t0, 1), finished=error is None, error=error)
    f = fault[0]
    if f is not None:
        out["fault"] = {k: v for k, v in asdict(f).items() if k != "held"}
        out["ledger_problems"] = [
            p
            for gw, path in _ledger_files(cfg).items()
            if (p := ledger_problem(path, f.held.get(gw))) is not None
        ]
    return out


def _ledger_done(obs: SwarmObserver, last: int) -> bool:
    rec = obs.rounds.get(last)
    return rec is not None and rec.final_ms > 0


def _ledger_files(cfg: RunConfig) -> dict[str, Path]:
    return {f"gateway-{i}": _ledger_path(cfg, f"gateway-{i}") for i in range(1, cfg.n_gateways + 1)}


def _ledger_path(cfg: RunConfig, gateway: str) -> Path:
    path = load_config(cfg.workdir / "config" / f"{gateway}.toml").ledger_path
    assert path is not None
    return path


def read_record(cfg: RunConfig) -> dict[str, Any]:
    files = _ledger_files(cfg)
    facts = round_facts(ledger_entries(files["gateway-1"]))
    finals = [f for _, f in sorted(facts.items()) if f.model_hash]
    logs = agent_logs(cfg)
    return {
        "facts": facts,
        "opened": sum(1 for f in facts.values() if f.opens),
        "reopened": sorted(r for r, f in facts.items() if f.opens > 1),
        "void": sorted(r for r, f in facts.items() if f.void),
        "finals": len(finals),
        "last_hash": finals[-1].model_hash if finals else None,
        "last_final_ms": finals[-1].final_ms if finals else None,
        "first_open_ms": min((f.opened_ms for f in facts.values() if f.opened_ms), default=None),
        "ledger_problems": [p for path in files.values() if (p := ledger_problem(path))],
        "refusals": refusals(logs),
    }


def compare(run: dict[str, Any], twin: dict[str, Any]) -> dict[str, Any]:
    """A faulty run against its clean twin: rounds lost, recovery, ledger, final model."""
    facts: dict[int, RoundFacts] = run["facts"]
    twin_facts: dict[int, RoundFacts] = twin["facts"]
    short = [
        r
        for r, f in sorted(facts.items())
        if f.included is not None
        and r in twin_facts
        and len(f.included) < len(twin_facts[r].included or [])
    ]
    fault = run.get("fault") or {}

    def next_final_s(since_ms: int) -> float | None:
        after = [f.final_ms for f in facts.values() if f.final_ms and f.final_ms >= since_ms]
        return round((min(after) - since_ms) / 1000, 2) if after else None

    def span(rec: dict[str, Any]) -> float | None:
        if rec["first_open_ms"] is None or rec["last_final_ms"] is None:
            return None
        return (rec["last_final_ms"] - rec["first_open_ms"]) / 1000

    own, clean = span(run), span(twin)
    lost, copies = lost_commits(run["refusals"], facts)
    return {
        "finished": run["finished"],
        "error": run["error"],
        "void_rounds": run["void"],
        "extra_rounds": max(0, run["opened"] - twin["opened"]),
        "reopened_rounds": run["reopened"],
        "short_rounds": short,
        "rounds_lost": len(run["void"]) + max(0, run["opened"] - twin["opened"]),
        "fault_to_final_s": next_final_s(fault["fault_ms"]) if fault else None,
        "recovery_to_final_s": next_final_s(fault["recovery_ms"]) if fault else None,
        "ledger_verifies": not run["ledger_problems"],
        "ledger_problems": run["ledger_problems"],
        "final_hash_equal": run["last_hash"] is not None and run["last_hash"] == twin["last_hash"],
        "extra_seconds": None if own is None or clean is None else round(own - clean, 1),
        "refusals": run["refusals"],
        "refused_lost": lost,
        "refused_copies": copies,
        "fault": fault,
        "wall_s": run["wall_s"],
        "ran_again": run.get("ran_again"),
    }


# --------------------------------------------------------------------------- scenarios


def gateway_kill(kill: GatewayKill, rounds: int) -> Scenario:
    def scenario(procs: SwarmProcesses, obs: SwarmObserver) -> Fault:
        kill_gateway(procs, obs, kill, rounds)
        return Fault(
            "gateway",
            kill.killed_ms,
            kill.restarted_ms,
            kill.phase,
            {kill.gateway: kill.held},
            {"round": kill.round, "step": kill.step},
        )

    return scenario


def site_power_cut() -> Scenario:
    def scenario(procs: SwarmProcesses, obs: SwarmObserver) -> Fault:
        cut = PowerCut(FAULT_ROUND, commits=1)
        power_cut(procs, obs, cut)
        return Fault("power cut", cut.cut_ms, cut.restored_ms, cut.phase, cut.held)

    return scenario


def broker_kill() -> Scenario:
    def scenario(procs: SwarmProcesses, obs: SwarmObserver) -> Fault:
        _wait_step(obs, FAULT_ROUND, "commit 1")
        phase = phase_of(obs)
        procs.broker.kill()
        fault_ms = now_ms()
        held = {gw: read_anchor(anchor_path_for(p)) for gw, p in ledger_paths(procs).items()}
        pause(obs, DOWNTIME_S)  # the broker is down
        procs.broker.start()
        return Fault("broker", fault_ms, now_ms(), phase, held)

    return scenario


def raft_leader_kill(step: str, rounds: int) -> Scenario:
    def scenario(procs: SwarmProcesses, obs: SwarmObserver) -> Fault:
        _wait_step(obs, FAULT_ROUND, step)
        # The coordinator signs round_open: its author is the leader of the moment.
        leader = [e.author for e in list(obs.entries) if e.kind == "round_open"][-1]
        kill = GatewayKill(FAULT_ROUND, step, gateway=leader)
        kill_gateway(procs, obs, kill, rounds)
        held = {gw: read_anchor(anchor_path_for(p)) for gw, p in ledger_paths(procs).items()}
        held[leader] = kill.held
        detail = {"leader": leader, "step": step}
        return Fault("raft leader", kill.killed_ms, kill.restarted_ms, kill.phase, held, detail)

    return scenario


def flood(cfg: RunConfig) -> Scenario:
    def scenario(procs: SwarmProcesses, obs: SwarmObserver) -> Fault:
        _wait_step(obs, FLOOD_ROUNDS[0], "open")
        phase = phase_of(obs)
        held = {gw: read_anchor(anchor_path_for(p)) for gw, p in ledger_paths(procs).items()}
        client = MqttClient("hostile-flood", "127.0.0.1", obs.mqtt.port, on_message=lambda m: 0)
        client.start()
        sent, size, start = 0, 0, now_ms()
        try:
            if not client.wait_connected(10):
                raise Stuck("the hostile client could not connect")
            # Mosquitto drops a client whose packet is over the site's limit (and paho sends
            # it again on reconnect, for ever): what is larger never reaches a node anyway.
            payloads = [g for g in garbage() if len(g) + 1024 < cfg.max_packet]
            for rnd in FLOOD_ROUNDS:  # each round's topics, its deltas and resends too
                _wait_step(obs, rnd, "open")
                for topic in hostile_topics(obs, cfg, rnd):
                    for payload in payloads:
                        # QoS 1, waiting for each PUBACK: the broker has taken it
                        if not client.publish(topic, payload, qos=1, wait=10):
                            raise Stuck(f"the broker did not take a flood message on {topic}")
                        sent, size = sent + 1, size + len(payload)
        finally:
            client.stop()
        detail = {
            "messages": sent,
            "mib": round(size / 2**20, 1),
            "rounds": list(FLOOD_ROUNDS),
            "payloads": len(payloads),
        }
        return Fault("flood", start, now_ms(), phase, held, detail)

    return scenario


def _wait_step(obs: SwarmObserver, rnd: int, step: str, timeout: float = 120.0) -> None:
    if not obs.wait_for(lambda: reached(obs, rnd, step), timeout):
        raise Stuck(f"round {rnd} did not reach {step} within {timeout:g} s")


# --------------------------------------------------------------------------- the link cut


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=15)


class Relay:
    """A TCP relay in this process from (host, port) to the broker on 127.0.0.1:port: the
    agent in its namespace reaches the loopback broker through it, over the veth link that
    is cut. Cut, the relay's side towards the broker stays up, as a switch port going dark
    leaves the broker's own link up: Mosquitto notices only by the agent's keepalive."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self.server = socket.create_server((host, port))
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                return
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


@contextlib.contextmanager
def namespace_link() -> Iterator[tuple[Lan, str]]:
    """A one-host LAN (tests/netns.py) whose bridge also has a port into this namespace,
    with address ``root_ip``; deleting the LAN's namespaces removes that link too."""
    with Lan(1) as lan:
        root_ip = str(lan.subnet[200])
        here = f"esr{abs(hash(lan.prefix)) % 10**6}"
        # Made here with its peer straight in the hub: deleting the hub deletes both ends.
        ip("link", "add", "name", here, "type", "veth", "peer", "name", "pr", "netns", lan.hub)
        ip("-n", lan.hub, "link", "set", "pr", "master", "br0", "up")
        ip("addr", "add", f"{root_ip}/{lan.subnet.prefixlen}", "dev", here)
        ip("link", "set", here, "up")
        yield lan, root_ip


def link_scenario(lan: Lan, root_ip: str, relays: list[Relay], cut: bool) -> Scenario:
    host = lan.hosts[0]

    def scenario(procs: SwarmProcesses, obs: SwarmObserver) -> Fault | None:
        relays.append(Relay(root_ip, obs.mqtt.port))
        node = procs.agents[LATE]
        cfg = load_config(node.config)
        node.config.write_text(dump_config(replace(cfg, broker=replace(cfg.broker, host=root_ip))))
        node.wrapper = Wrapper(prefix=("ip", "netns", "exec", host.ns))
        node.start("agent")
        if not obs.wait_for(lambda: obs.status.get(LATE) == "online", 60):
            raise Stuck(f"{LATE} in its namespace did not come online")
        if not cut:
            return None
        _wait_step(obs, FAULT_ROUND, "commit 1")
        phase = phase_of(obs)
        held = {gw: read_anchor(anchor_path_for(p)) for gw, p in ledger_paths(procs).items()}
        ip("-n", lan.hub, "link", "set", "p0", "down")  # the agent's switch port goes dark
        fault_ms = now_ms()
        pause(obs, LINK_CUT_S)  # the link is cut
        ip("-n", lan.hub, "link", "set", "p0", "up")
        return Fault("link", fault_ms, now_ms(), phase, held, {"cut_s": LINK_CUT_S})

    return scenario


BIG = (512, 128)  # the link runs' model: rounds of seconds, so that the swarm outlasts the cut


def run_link_pair(workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The twin and the cut, each with agent-08 started in its namespace after round 1
    opened (the others' first round waits a short grace for it, not the default minute).
    A 100k-parameter model: with the standard one the other seven finish all 20 rounds in
    the 20 s the link is down, and nobody is left to rejoin."""
    out = []
    for name, cut in (("link-twin", False), ("link", True)):
        cfg = base_config(
            workdir / name,
            hidden=BIG,
            start_agents=tuple(f"agent-{i:02d}" for i in range(1, 8)),
            start_grace_s=5.0,
            timeout_s=300.0,
        )
        relays: list[Relay] = []
        with namespace_link() as (lan, root_ip):
            try:
                out.append(run_case(cfg, link_scenario(lan, root_ip, relays, cut)))
            finally:
                for r in relays:
                    r.close()
    return out[0], out[1]


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="gateway kills (default 10)")
    ap.add_argument("--seed", type=int, help="of the kill moments (default: fresh, printed)")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=["gateway", "power", "broker", "link", "flood", "raft"],
        help="run only these scenarios",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (logs)")
    args = ap.parse_args()
    # Killed, stop the swarm's processes on the way out (run_swarm's finally), not orphan them.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    # The observer's drops under the flood and its lost connections under the broker kill
    # are the faults themselves: the record below says what they did.
    logging.getLogger("edge_swarm").setLevel(logging.ERROR)
    if find_mosquitto() is None:
        print("mosquitto not found (apt-get install mosquitto): every scenario needs it")
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"fault seed {seed} (--seed {seed} replays the moments)")
    only = set(args.only or ["gateway", "power", "broker", "link", "flood", "raft"])
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-faults-")))
        rows, runs = bench(root, seed, args.trials, only)
    report(rows, runs, seed, args.out)
    return 0


def bench(
    root: Path, seed: int, trials: int, only: set[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    std = base_config(root / "twin")
    shape = f"{std.n_agents}x{std.rounds}"
    twin = None
    if only & {"gateway", "power", "broker", "flood"}:
        twin = _timed("clean twin", lambda: run_case(std, None))
        runs["twin"] = _summary(twin)
    if "gateway" in only:
        assert twin is not None
        steps = steps_of_a_round(std.n_agents)
        results = []
        for i in range(trials):
            kill = GatewayKill(rng.randrange(2, std.rounds), rng.choice(steps))
            cfg = replace(std, workdir=root / f"gateway-{i + 1}")
            run = _timed(
                f"gateway kill {i + 1}/{trials} (round {kill.round}, after {kill.step})",
                lambda cfg=cfg, kill=kill: run_case(cfg, gateway_kill(kill, cfg.rounds)),
            )
            results.append(compare(run, twin))
        runs["gateway"] = results
        rows.append(_row(f"gateway kill x{trials}", shape, results, False))
    if "power" in only:
        assert twin is not None
        cfg = replace(std, workdir=root / "power")
        run = _timed("power cut", lambda: run_case(cfg, site_power_cut()))
        runs["power"] = [compare(run, twin)]
        rows.append(_row("power cut", shape, runs["power"], False))
    if "broker" in only:
        assert twin is not None
        cfg = replace(std, workdir=root / "broker")
        run = _timed("broker kill", lambda: run_case(cfg, broker_kill()))
        runs["broker"] = [compare(run, twin)]
        rows.append(_row("broker kill", shape, runs["broker"], True))
    if "link" in only:
        reason = netns_available()
        if reason is not None:
            rows.append(_skipped("link cut 20 s", shape, f"skipped: {reason}"))
        else:
            ltwin, cut = _timed("link twin + cut", lambda: run_link_pair(root))
            runs["link_twin"] = _summary(ltwin)
            runs["link"] = [compare(cut, ltwin) | {"rejoined": _rejoined(cut)}]
            rows.append(_row("link cut 20 s", f"{shape}, 100k model", runs["link"], False))
    if "flood" in only:
        assert twin is not None
        cfg = replace(std, workdir=root / "flood")
        run = _timed("flood", lambda: run_case(cfg, flood(cfg)))
        runs["flood"] = [compare(run, twin)]
        rows.append(_row("garbage flood", shape, runs["flood"], True))
    if "raft" in only:
        raft = base_config(root / "raft-twin", n_gateways=3)
        rtwin = _timed("raft twin", lambda: run_case(raft, None))
        runs["raft_twin"] = _summary(rtwin)
        step = rng.choice(steps_of_a_round(raft.n_agents))
        cfg = replace(raft, workdir=root / "raft")
        run = _timed(
            f"raft leader kill (after {step})",
            lambda: run_case(cfg, raft_leader_kill(step, cfg.rounds)),
        )
        runs["raft"] = [compare(run, rtwin)]
        rows.append(_row("Raft leader kill", f"{shape}, 3 gateways", runs["raft"], False))
    return rows, runs


def _rejoined(run: dict[str, Any]) -> dict[str, Any] | None:
    """The first round the cut agent is in again after its link came back, and how long
    after that the round closed."""
    back = run.get("fault", {}).get("recovery_ms")
    for rnd, f in sorted(run["facts"].items()):
        if back and f.closed_ms and f.closed_ms >= back and LATE in (f.included or []):
            return {"round": rnd, "s": round((f.closed_ms - back) / 1000, 2)}
    return None


NOTES = [
    "gateway kill: SIGKILL right after a random step (open, a commit, close, final) of a "
    "random round, started again 5 s later; one run per trial.",
    "power cut: broker, gateway and agents SIGKILLed at round 8 once a commit is in; all "
    "started again 5 s later (the broker first, on its port).",
    "broker kill: Mosquitto SIGKILLed at round 8 once a commit is in, started again 5 s "
    "later on its port; the final model should be the twin's.",
    "link cut: agent-08 in a network namespace behind a veth link and a relay, started "
    "after round 1 in the twin too; its switch port down 20 s from round 8. A 100k-parameter "
    "model (rounds of seconds), so that the swarm outlasts the cut.",
    "garbage flood: every payload of tests/test_e2e_hostile_flood.py under the broker's "
    "256 KiB packet limit (Mosquitto drops a client over it) on every topic of rounds 5, 6 "
    "and 7 (QoS 1, each acknowledged); the final model should be the twin's.",
    "Raft leader kill: three gateways; the author of the newest round_open SIGKILLed right "
    "after a random step of round 8, started again 5 s later; every replica checked.",
    "rounds lost: void rounds + rounds opened beyond the twin's; short: rounds with fewer "
    "agents than the twin's same round; recovery: the restart, the link back, the flood's "
    "end; ledger: every file verifies from genesis and extends its anchor and the head "
    "acknowledged before the fault; refused: commits the ledger refused as 'round N is not "
    "open for commits' (agents' logs), lost (the round closed without that agent) / copies "
    "(a re-sent commit of a round that did include it).",
]


def _timed(what: str, fn: Callable[[], Any]) -> Any:
    print(f"... {what}", flush=True)
    t0 = time.monotonic()
    out = fn()
    print(f"    done in {time.monotonic() - t0:.0f} s", flush=True)
    return out


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "facts"}


def _row(name: str, shape: str, results: list[dict[str, Any]], same_model: bool) -> dict[str, Any]:
    def spread(key: str) -> str:
        got = [r[key] for r in results if r[key] is not None]
        missing = len(results) - len(got)
        if not got:
            return "none"
        text = (
            f"{got[0]:.1f}"
            if len(got) == 1
            else f"{statistics.median(got):.1f} ({min(got):.1f}-{max(got):.1f})"
        )
        return text + (f", {missing} none" if missing else "")

    n = len(results)
    return {
        "scenario": name,
        "config": shape,
        "finished": f"{sum(r['finished'] for r in results)}/{n}",
        "lost": str(sum(r["rounds_lost"] for r in results)),
        "short": str(sum(len(r["short_rounds"]) for r in results)),
        "fault->final s": spread("fault_to_final_s"),
        "recovery->final s": spread("recovery_to_final_s"),
        "ledger ok": f"{sum(r['ledger_verifies'] for r in results)}/{n}",
        "final = twin": f"{sum(r['final_hash_equal'] for r in results)}/{n}"
        + (" (should)" if same_model else ""),
        "refused lost / copies": f"{sum(len(r['refused_lost']) for r in results)}"
        f" / {sum(len(r['refused_copies']) for r in results)}",
    }


def _skipped(name: str, shape: str, reason: str) -> dict[str, Any]:
    return {"scenario": name, "config": shape, "finished": reason}


COLUMNS = [
    "scenario",
    "config",
    "finished",
    "lost",
    "short",
    "fault->final s",
    "recovery->final s",
    "ledger ok",
    "final = twin",
    "refused lost / copies",
]


def report(rows: list[dict[str, Any]], runs: dict[str, Any], seed: int, out: Path) -> None:
    print_table(
        "Faults against a clean twin (Mosquitto, standard workload)",
        COLUMNS,
        [[r.get(c, "") for c in COLUMNS] for r in rows],
    )
    detail = [
        [
            i + 1,
            r["fault"].get("detail", {}).get("round"),
            r["fault"].get("detail", {}).get("step"),
            r["fault"].get("phase"),
            "yes" if r["finished"] else f"no: {r['error']}",
            r["rounds_lost"],
            len(r["short_rounds"]),
            r["recovery_to_final_s"],
            "yes" if r["ledger_verifies"] else "no",
            "yes" if r["final_hash_equal"] else "no",
        ]
        for i, r in enumerate(runs.get("gateway", []))
    ]
    if detail:
        print_table(
            "Gateway SIGKILL trials",
            [
                "trial",
                "round",
                "after",
                "seen at the kill",
                "finished",
                "lost",
                "short",
                "recovery->final s",
                "ledger",
                "final = twin",
            ],
            detail,
        )
    for name, results in runs.items():
        for r in results if isinstance(results, list) else []:
            found = [*r["ledger_problems"], *r["refused_lost"][:3], *r["refused_copies"][:3]]
            found += [r["error"]] if r["error"] else []
            found += [f"ran again: {r['ran_again']}"] if r.get("ran_again") else []
            found += [f"rejoined: {r['rejoined']}"] if "rejoined" in r else []
            for p in found:
                print(f"  {name}: {p}")
    meta = {
        "machine": machine(None),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seed": seed,
        "settings": {
            "workload": "digits, 8 agents, Dirichlet 0.5, MLP 64-32-10, 20 rounds, the demo's "
            "training and merge, sealed deltas, RunConfig defaults (deadline 60 s, attest 20 s)",
            "broker": "mosquitto",
            "downtime_s": DOWNTIME_S,
            "fault_round": FAULT_ROUND,
            "link_cut_s": LINK_CUT_S,
            "flood": f"every topic x every payload for rounds {list(FLOOD_ROUNDS)}",
        },
    }
    for note in NOTES:
        print(f"- {note}")
    path = write_json(out, {"meta": meta, "notes": NOTES, "table": rows, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
