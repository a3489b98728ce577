"""A swarm with an emulated aarch64 device in it, set up as a site would set it up.

    with Device(cached_root().path, tmp / "pi") as pi:
        run = run_with_devices(cfg, [Emulated(pi)])   # cfg: the x86 side (n_agents agents)

What ``run_with_devices`` does, in order, each step with the project's own commands:
1. starts the run's broker on the host's loopback and provisions the x86 side exactly as
   ``run_swarm`` does (``site.demo.prepare``: genesis, gateway, ``cfg.n_agents`` agents);
2. ``edge-swarm bundle --profile rpi4 --broker 127.0.0.1:PORT`` (wheels from the registry,
   cached in ``$EDGE_SWARM_CACHE/wheels``), copied to the device's boot partition;
3. the bundle's ``install.sh`` on the device, with no network (only loopback), which prints
   the enrolment request; the operator's ``edge-swarm enroll --bootstrap`` takes it;
4. the device's data goes where its config says; the gateway, the x86 agents (host
   processes) and the device's agent start, the latter as its systemd unit would start it
   (ExecStart, User, WorkingDirectory, Environment), chrooted and emulated, on the host's
   loopback;
5. the rounds run to ``cfg.rounds`` and the ledger settles (``tests.waiting.settle``); the
   gateway's ledger file is read back.

The device is one agent more than ``cfg.n_agents``: give ``min_peers`` that count so that
no round opens or closes without it. Emulated code is slow; the timeouts here are generous
and every wait is on a condition.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_swarm.learn.data import Workload, write_partitions
from edge_swarm.learn.train import evaluate
from edge_swarm.node.config import load_config
from edge_swarm.node.observer import RoundRecord, SwarmObserver
from edge_swarm.site.demo import (
    RunConfig,
    _failure,
    _observer_reader,
    _test_features,
    prepare,
    start_broker,
)
from edge_swarm.site.launch import NodeProcess, SwarmProcesses
from edge_swarm.site.operator import EnrollRequest
from edge_swarm.site.provision import SwarmLayout
from ledger_lite import Entry, SqliteStore

from .arm_root import Device, cache_dir
from .waiting import settle, wait_until

DEVICE_ID = "pi-arm-01"
BOOT_DIR = "/boot/firmware/edge-swarm"  # where a Pi's bundle sits (cloud-init's first choice)
BUNDLE_TIMEOUT_S = 900.0  # a cold download of the wheels
INSTALL_TIMEOUT_S = 1800.0  # about a minute emulated on an idle machine; far more when loaded
FIRST_ROUND_S = 600.0  # the device's agent starts emulated: imports, ledger copy, features


def wheelhouse() -> Path:
    """The wheel cache every bundle build of the tests and the benchmark shares."""
    return cache_dir() / "wheels"


@dataclass(frozen=True)
class Bundle:
    path: Path
    profile: str
    size_bytes: int
    build_s: float

    @property
    def size_mib(self) -> float:
        return self.size_bytes / 2**20


def make_bundle(
    profile: str,
    layout: SwarmLayout,
    device_id: str,
    out: Path,
    *,
    broker: str | None = None,
    backbone: Path | None = None,
    python: str | None = None,
) -> Bundle:
    """``edge-swarm bundle`` for ``device_id`` of the provisioned site (RuntimeError naming
    what the command said if it fails)."""
    argv = [
        sys.executable, "-m", "edge_swarm", "bundle", "--profile", profile,
        "--swarm", layout.swarm, "--device-id", device_id, "--out", str(out),
        "--bootstrap", str(layout.root / "bootstrap.jsonl"), "--wheelhouse", str(wheelhouse()),
    ]  # fmt: skip
    argv += ["--broker", broker] if broker else []
    argv += ["--backbone", str(backbone)] if backbone else []
    argv += ["--python", python] if python else []
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUNDLE_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"edge-swarm bundle failed ({proc.returncode}):\n{proc.stderr}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return Bundle(out, profile, size, time.monotonic() - t0)


@dataclass(frozen=True)
class Installed:
    request: EnrollRequest
    seconds: float
    log: str  # what install.sh said on stderr


def install(
    dev: Device, bundle: Path, *, args: tuple[str, ...] = (), timeout: float = INSTALL_TIMEOUT_S
) -> Installed:
    """Copy the bundle to the device's boot partition and run its install.sh there with no
    network; RuntimeError with the script's last words if it fails."""
    target = dev.path(BOOT_DIR)
    if target.exists():
        shutil.rmtree(target)
    dev.copy_in(bundle, BOOT_DIR)
    t0 = time.monotonic()
    proc = dev.run(["sh", f"{BOOT_DIR}/install.sh", *args], network=False, timeout=timeout)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        raise RuntimeError(f"install.sh failed ({proc.returncode}):\n{tail}")
    return Installed(EnrollRequest.from_json(proc.stdout), seconds, proc.stderr)


def enroll(layout: SwarmLayout, request: EnrollRequest, workdir: Path) -> None:
    """The operator enrols the device's request into the site's bootstrap (before start)."""
    path = workdir / f"{request.node}.request.json"
    path.write_text(request.to_json())
    argv = [
        sys.executable, "-m", "edge_swarm", "enroll",
        "--admin-key", str(layout.root / "keys" / "admin.key"), "--swarm", layout.swarm,
        "--bootstrap", str(layout.root / "bootstrap.jsonl"), "--request", str(path),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"edge-swarm enroll failed ({proc.returncode}):\n{proc.stderr}")


def unit_of(text: str) -> dict[str, str]:
    """``Key=Value`` lines of a systemd unit (the last wins)."""
    return dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln and ln[0].isalpha())


@dataclass
class DeviceAgent(NodeProcess):
    """The device's agent, started as its systemd unit starts it: the unit's ExecStart, as
    its User, in its WorkingDirectory, with its Environment, chrooted into the device and
    run by qemu-aarch64. Signals reach it as they reach any node (its own session)."""

    device: Device | None = None
    unit: Mapping[str, str] = field(default_factory=dict)

    def start(self, role: str = "agent", extra_env: dict[str, str] | None = None) -> None:
        assert self.device is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(v.split("=", 1) for v in shlex.split(self.unit.get("Environment", "")))
        cwd = self.unit.get("WorkingDirectory", "/")
        self.proc = self.device.popen(
            shlex.split(self.unit["ExecStart"]),
            self._log,
            user=self.unit.get("User"),
            cwd=cwd,
            env={"HOME": cwd, **env, **(extra_env or {})},
        )


@dataclass(frozen=True)
class Emulated:
    """One emulated device of a run: where it is, its profile, its node id, and its Python
    when it is not the profile's (``edge-swarm bundle --python``)."""

    dev: Device
    profile: str = "rpi4"
    device_id: str = DEVICE_ID
    python: str | None = None


@dataclass(frozen=True)
class DeviceSide:
    """What setting one device up gave, and what its agent said."""

    device_id: str
    profile: str
    bundle: Bundle
    installed: Installed
    log: str

    def adopted_rounds(self) -> set[int]:
        """Rounds whose final model the agent took as a checkpoint instead of merging it.
        An agent attests a round either with its own merge's result or, when it adopts the
        checkpoint, with that checkpoint's hash (node/adopting.py), and it logs only the
        latter: a round not named here was attested from the agent's own merge."""
        return {int(m) for m in re.findall(r"adopted checkpoint of round (\d+)", self.log)}


@dataclass
class ArmRun:
    """What a run with emulated devices left: the ledger, the rounds seen, each device."""

    config: RunConfig
    layout: SwarmLayout
    devices: dict[str, DeviceSide]
    entries: list[Entry]
    rounds: list[RoundRecord]
    peak_rss_kb: dict[str, int]
    wall_s: float

    @property
    def x86_agents(self) -> list[str]:
        return sorted(self.layout.agent_configs)

    def attests(self) -> dict[int, dict[str, tuple[str, str]]]:
        """round -> node -> (model hash, merge-state hash) it attested."""
        out: dict[int, dict[str, tuple[str, str]]] = {}
        for e in self.entries:
            if e.kind == "model_attest":
                p = e.payload
                out.setdefault(p["round"], {})[e.author] = (p["model_hash"], p.get("state_hash"))
        return out

    def finals(self) -> dict[int, str]:
        return {
            e.payload["round"]: e.payload["model_hash"]
            for e in self.entries
            if e.kind == "model_final"
        }

    def train_s(self, node: str) -> list[float]:
        """The node's local training time of each round, from its signed commit metrics."""
        return [
            float(r.commits[node]["train_s"])
            for r in self.rounds
            if isinstance(r.commits.get(node, {}).get("train_s"), (int, float))
        ]


def device_data(cfg: RunConfig, workload: Workload, index: int, dev: Device, to: Path) -> Path:
    """The device's own records, written into its data directory ``to``: part ``index``
    beyond the x86 agents' of the workload split over one agent more per device."""
    parts = write_partitions(
        workload, cfg.n_agents + index + 1, cfg.alpha, cfg.seed, cfg.workdir / f"part-{index}"
    )
    mine = [p for p in parts if p.name.startswith("agent-")][-1]
    target = dev.path(to) / "local.npz"
    shutil.copy2(mine, target)
    return target


def _set_up(
    cfg: RunConfig, layout: SwarmLayout, broker: str, workload: Workload, index: int, em: Emulated
) -> tuple[DeviceAgent, Bundle, Installed]:
    """Bundle, install offline, enrol, give it data: the device, ready to start."""
    bundle = make_bundle(
        em.profile,
        layout,
        em.device_id,
        cfg.workdir / f"bundle-{em.device_id}",
        broker=broker,
        backbone=cfg.backbone,
        python=em.python,
    )
    installed = install(em.dev, bundle.path)
    enroll(layout, installed.request, cfg.workdir)
    # The unit install.sh put where systemd reads it (the bundle's, if it had no systemd).
    name = "edge-swarm-agent.service"
    enabled = em.dev.path(f"/etc/systemd/system/{name}")
    unit = unit_of((enabled if enabled.is_file() else bundle.path / "systemd" / name).read_text())
    config = shlex.split(unit["ExecStart"])[-1]
    node_cfg = load_config(em.dev.path(config))
    assert node_cfg.data_path is not None
    data = device_data(cfg, workload, index, em.dev, node_cfg.data_path)
    os.chown(data, *em.dev.user_ids(unit["User"]))  # the service's user reads it
    log = cfg.workdir / "logs" / f"{em.device_id}.log"
    agent = DeviceAgent(em.device_id, em.dev.path(config), log, device=em.dev, unit=unit)
    return agent, bundle, installed


def run_with_devices(cfg: RunConfig, devices: list[Emulated]) -> ArmRun:
    """Run ``cfg``'s swarm with the devices as agents beside its x86 ones (module docstring).

    The devices start first, with the gateway; the x86 agents only once every device has
    copied the ledger. Otherwise round 1 could open (every agent online) while a device is
    still catching up, and the x86 agents' deltas, published before it subscribed, would
    reach it too late to merge: it would take the round's checkpoint, correctly, but then
    its attestation of round 1 would prove nothing about its own merge.
    """
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    sides: dict[str, DeviceSide] = {}
    with start_broker(cfg, cfg.workdir) as site:
        workload, _, layout, _ = prepare(cfg, site)
        broker = f"{site.config.host}:{site.config.port}"
        agents, made = {}, {}
        for i, em in enumerate(devices):
            agent, bundle, installed = _set_up(cfg, layout, broker, workload, i, em)
            agents[em.device_id], made[em.device_id] = agent, (em, bundle, installed)
        X_test = workload.X_test if cfg.backbone is None else _test_features(cfg, workload)
        observer = SwarmObserver(
            cfg.swarm,
            site.config.host,
            site.config.port,
            lambda spec, params: evaluate(spec, params, X_test, workload.y_test)["accuracy"],
            mqtt_options=site.client_options("operator"),
            reader=_observer_reader(layout),
        )
        observer.start()
        logs = cfg.workdir / "logs"
        procs = SwarmProcesses.from_layout(layout.gateway_configs, layout.agent_configs, logs)
        x86 = list(procs.agents)
        procs.agents.update(agents)
        t0 = time.monotonic()
        try:
            procs.start(list(agents))  # the gateway, then the devices
            for agent in agents.values():
                _wait_synced(agent, procs)
            for name in x86:
                procs.agents[name].start("agent")
            if not observer.wait_for(lambda: 1 in observer.rounds, timeout=FIRST_ROUND_S):
                raise RuntimeError(_failure(f"no round opened within {FIRST_ROUND_S} s", procs))
            settle(cfg, procs, observer)
            wall = time.monotonic() - t0
        finally:
            procs.stop()
            observer.stop()
    for name, (em, bundle, installed) in made.items():
        text = agents[name].log_path.read_text(errors="replace")
        sides[name] = DeviceSide(name, em.profile, bundle, installed, text)
    with SqliteStore(layout.ledger_path, verify_only=True) as store:
        entries = store.load()
    return ArmRun(
        config=cfg,
        layout=layout,
        devices=sides,
        entries=entries,
        rounds=[observer.rounds[r] for r in sorted(observer.rounds)],
        peak_rss_kb=observer.peak_rss_kb(),
        wall_s=wall,
    )


def _wait_synced(agent: DeviceAgent, procs: SwarmProcesses) -> None:
    """Until the device's agent says it holds the ledger (its log; it is another process)."""

    def synced() -> bool:
        if not agent.alive:
            raise RuntimeError(_failure(f"{agent.node} exited", procs))
        return "ledger synced to height" in agent.log_path.read_text(errors="replace")

    try:
        wait_until(synced, FIRST_ROUND_S, f"{agent.node} to copy the ledger", poll=0.2)
    except TimeoutError as exc:
        raise RuntimeError(_failure(str(exc), procs)) from None


def summary(run: ArmRun) -> dict[str, object]:
    """The figures of a run, for a test's failure message or the benchmark's JSON."""
    return {
        "finals": run.finals(),
        "attests": run.attests(),
        "adopted": {n: sorted(d.adopted_rounds()) for n, d in run.devices.items()},
        "install_s": {n: round(d.installed.seconds, 1) for n, d in run.devices.items()},
        "bundle_mib": {n: round(d.bundle.size_mib, 1) for n, d in run.devices.items()},
        "peak_rss_kb": run.peak_rss_kb,
    }


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
