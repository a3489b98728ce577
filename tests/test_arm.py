"""Proof on ARM: bundles installed offline on an emulated aarch64 device that then trains in
a swarm of x86 processes and ends every round on exactly their bytes.

The device is a Debian 12 arm64 root (Python 3.11, as Raspberry Pi OS bookworm) run by
qemu-aarch64 (tests/arm_root.py); tests/arm_site.py makes its bundle with ``edge-swarm
bundle``, runs the bundle's install.sh on it with no network, enrols its request, and starts
its agent as the unit would, beside a broker, a gateway and 3 agents on the host (x86 processes,
this checkout) over the shared loopback. Both swarms merge with ``merge_by = "all"``, so that
every agent, the device too, merges each round itself and attests what it got.

What is compared, per round: the ``model_attest`` entries on the gateway's ledger. Each
carries the sha256 of the merged parameters (``model_hash``) and of the merge's server state
(``state_hash``: FedAvgM's momentum). The device's must equal every x86 agent's and the
round's ``model_final``, and the device must have merged every round itself: an agent that
takes a round's checkpoint instead also attests (with the checkpoint's hash), and says so in
its log, which therefore names no round.

- the rpi4 bundle, the default codec (int8, the profile's too), the standard merge, and a
  frozen backbone the device runs with TFLite (ai-edge-litert's aarch64 wheel); the model the
  gateway exports gives the same logits in the device's TFLite as in x86 numpy, within 1e-5;
- ``nnm+median``, with the rpi4 device and a Jetson one (the jetson-orin-nano bundle, made
  for the root's Python 3.11: JetPack's is 3.10 and Debian has none; its onnxruntime-gpu
  comes from JetPack, so install.sh says it is missing, and the swarm has no backbone).

Marked ``arm``: `make test-arm` runs these (CI after `make test`), not `make test`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_swarm.learn.backbone import pretrain, write_backbone
from edge_swarm.learn.data import PUBLIC_FRACTION, WORKLOADS, public_private
from edge_swarm.learn.runtimes import load_model
from edge_swarm.site.demo import RunConfig
from edge_swarm.swarm.merge import MergeRule
from edge_swarm.swarm.quantize import CodecSpec

from .arm_root import Device, cached_root, require_arm
from .arm_site import ArmRun, Emulated, dumps, run_with_devices, summary

pytestmark = [pytest.mark.arm, pytest.mark.network, pytest.mark.timeout(3600)]

ROUNDS = 5
NNM_MEDIAN = MergeRule("fedavgm", momentum=0.5, aggregator="median", f=1, mix="nnm")
LOGITS_TOL = 1e-5
CHECK_TIMEOUT_S = 600.0  # one emulated Python run: imports and a TFLite interpreter

# Run on the device by its installed venv: the exported model's logits with TFLite.
TFLITE_LOGITS = """
import platform, sys
import numpy as np
from edge_swarm.learn.runtimes import load_model
model = load_model(sys.argv[1], engine="tflite")
np.save(sys.argv[3], model.predict_logits(np.load(sys.argv[2])))
print(platform.machine(), model.backend)
"""


@pytest.fixture(scope="module")
def root() -> Path:
    require_arm()
    return cached_root().path


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backbone pretrained on the public part of the digits, as ``demo --backbone auto``."""
    public, _ = public_private(WORKLOADS["digits"](), PUBLIC_FRACTION, 0)
    layers, _ = pretrain(public)
    out = tmp_path_factory.mktemp("backbone")
    write_backbone(layers, out)
    return out


def arm_config(workdir: Path, devices: int, **kw: object) -> RunConfig:
    """3 x86 agents, the devices beside them; no round without every one of them."""
    base = RunConfig(
        workdir=workdir,
        n_agents=3,
        rounds=ROUNDS,
        min_peers=3 + devices,
        merge_by="all",
        codec=CodecSpec("int8"),  # `edge-swarm admin init`'s and `demo`'s default
        # Emulated code is slow, and slower on a loaded machine: deadlines that a device
        # does not miss, so that every round waits for it (nothing here waits on them).
        round_deadline_s=600.0,
        attest_timeout_s=300.0,
        start_grace_s=900.0,
        timeout_s=2400.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def default_run(
    root: Path, backbone: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ArmRun, Device]]:
    work = tmp_path_factory.mktemp("arm-default")
    with Device(root, work / "pi") as pi:
        cfg = arm_config(work / "swarm", 1, backbone=backbone)
        yield run_with_devices(cfg, [Emulated(pi)]), pi


@pytest.fixture(scope="module")
def robust_run(root: Path, tmp_path_factory: pytest.TempPathFactory) -> ArmRun:
    work = tmp_path_factory.mktemp("arm-robust")
    with Device(root, work / "pi") as pi, Device(root, work / "jetson") as jetson:
        devices = [
            Emulated(pi, "rpi4", "pi-arm-02"),
            Emulated(jetson, "jetson-orin-nano", "jetson-arm-01", python="3.11"),
        ]
        return run_with_devices(arm_config(work / "swarm", 2, merge=NNM_MEDIAN), devices)


def assert_same_bytes_every_round(run: ArmRun) -> None:
    why = dumps(summary(run))
    finals, attests = run.finals(), run.attests()
    assert sorted(finals) == list(range(1, ROUNDS + 1)), why
    everyone = sorted([*run.x86_agents, *run.devices])
    for rec in run.rounds:
        assert sorted(rec.included) == everyone, f"round {rec.round}: {why}"
    for rnd, final in finals.items():
        got = {node: attests.get(rnd, {}).get(node) for node in everyone}
        hashes = {h for h, _ in filter(None, got.values())}
        states = {s for _, s in filter(None, got.values())}
        assert None not in got.values() and hashes == {final}, f"round {rnd}: {got}\n{why}"
        assert len(states) == 1, f"round {rnd}: merge states differ: {got}"
    for side in run.devices.values():
        # Every attestation of the device is its own merge's, not a checkpoint it took.
        assert side.adopted_rounds() == set(), f"{side.device_id} adopted: {why}"


# --------------------------------------------------------------------------- rpi4, default


def test_the_pi_ends_every_round_on_the_x86_bytes(default_run: tuple[ArmRun, Device]) -> None:
    run, _ = default_run
    assert_same_bytes_every_round(run)
    assert run.config.merge.aggregation == "mean" and run.config.codec == CodecSpec("int8")
    assert run.rounds[-1].accuracy is not None and run.rounds[-1].accuracy > 0.8


def test_the_pi_installed_offline_and_runs_the_backbone_with_tflite(
    default_run: tuple[ArmRun, Device],
) -> None:
    run, _ = default_run
    (side,) = run.devices.values()
    assert side.installed.request.node == side.device_id
    assert "Successfully installed" in side.installed.log and "ai-edge-litert" in side.installed.log
    # The profile's engine loaded the genesis's backbone file and computed the features.
    assert "backbone features of" in side.log and "with tflite in" in side.log, side.log[-2000:]
    assert "Traceback" not in side.log, side.log[-2000:]


def test_install_enabled_the_unit_and_systemd_accepts_it(
    default_run: tuple[ArmRun, Device],
) -> None:
    run, pi = default_run
    (side,) = run.devices.values()
    name = "edge-swarm-agent.service"
    # systemd does not run in the device (as in an SD card's image being made): install.sh
    # installs and enables the unit, which starts at boot; the agent above ran as it says.
    assert "enabled edge-swarm-agent.service, which start at boot" in side.installed.log
    unit = pi.path(f"/etc/systemd/system/{name}")
    assert unit.read_text() == (side.bundle.path / "systemd" / name).read_text()
    assert pi.path(f"/etc/systemd/system/multi-user.target.wants/{name}").is_symlink()
    proc = pi.run(["systemd-analyze", "verify", f"/etc/systemd/system/{name}"], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_exported_model_gives_the_same_logits_on_the_pi(
    default_run: tuple[ArmRun, Device], tmp_path: Path
) -> None:
    run, pi = default_run
    exports = run.layout.root / "state" / "gateway-1" / "exports"
    X = run.config.workdir / "x_test.npy"
    workload = public_private(WORKLOADS["digits"](), PUBLIC_FRACTION, 0)[1]
    np.save(X, workload.X_test)
    pi.copy_in(exports / "latest.tflite", "/tmp/check/model.tflite")
    pi.copy_in(X, "/tmp/check/x.npy")
    python = "/opt/edge-swarm/venv/bin/python"
    argv = [python, "-c", TFLITE_LOGITS, "/tmp/check/model.tflite", "/tmp/check/x.npy"]
    proc = pi.run([*argv, "/tmp/check/logits.npy"], timeout=CHECK_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    machine, backend = proc.stdout.split(maxsplit=1)
    assert machine == "aarch64" and backend.startswith("ai-edge-litert"), proc.stdout
    on_pi = np.load(pi.path("/tmp/check/logits.npy"))
    on_x86 = load_model(exports / "latest.npz", engine="numpy").predict_logits(workload.X_test)
    assert on_pi.shape == on_x86.shape == (len(workload.X_test), 10)
    assert float(np.max(np.abs(on_pi - on_x86))) <= LOGITS_TOL


# --------------------------------------------------------------------------- nnm+median


def test_with_nnm_median_the_pi_and_the_jetson_end_every_round_on_the_x86_bytes(
    robust_run: ArmRun,
) -> None:
    assert_same_bytes_every_round(robust_run)
    finals = [e for e in robust_run.entries if e.kind == "model_final"]
    assert all(e.payload["merge"]["rule"] == "nnm+median" for e in finals)


def test_the_jetson_bundle_installs_offline_and_says_what_it_lacks(robust_run: ArmRun) -> None:
    jetson = robust_run.devices["jetson-arm-01"]
    assert jetson.profile == "jetson-orin-nano"
    # onnxruntime-gpu is JetPack's: the bundle does not carry it, and install.sh says so.
    assert "install the image's onnxruntime-gpu system-wide" in jetson.installed.log
    assert "Successfully installed" in jetson.installed.log
    assert "Traceback" not in jetson.log, jetson.log[-2000:]
