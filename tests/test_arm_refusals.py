"""Every refusal an operator may meet putting a device on ARM ends with what to do.

On the emulated Debian 12 arm64 device (tests/arm_root.py), with bundles made by ``edge-swarm
bundle`` for a site whose genesis names a backbone:

- a bundle for another Python (the Jetson's, 3.10, on Python 3.11) and a bundle for another
  machine (x86-64) are refused by install.sh before it changes anything, naming the bundle
  to make instead; so is a 32-bit system, whose Python is stood in for by a script (the
  root is 64-bit);
- ``edge-swarm bundle`` for a device on which PyPI has no TFLite wheel (glibc 2.24) names
  the two ways out;
- on the installed rpi4 device: the agent refuses a device key others may read (chmod 600),
  and, with the TFLite interpreter gone from its venv, the agent's own backbone step says
  to install a bundle carrying it or to use the numpy engine.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_swarm.learn.backbone import pretrain, read_ref, write_backbone
from edge_swarm.learn.data import PUBLIC_FRACTION, WORKLOADS, public_private
from edge_swarm.node.config import BrokerConfig
from edge_swarm.site.demo import DEFAULT_LOCAL, DEFAULT_MERGE, model_spec
from edge_swarm.site.provision import SwarmLayout, SwarmParams, provision_swarm

from .arm_root import Device, cached_root, require_arm
from .arm_site import BOOT_DIR, Bundle, install, make_bundle, unit_of, wheelhouse

pytestmark = [pytest.mark.arm, pytest.mark.timeout(3600)]

SWARM = "clinic-arm"
BROKER = "127.0.0.1:1883"  # named in the bundles; no broker runs in these tests
REFUSE_TIMEOUT_S = 300.0  # install.sh stops within its first two Python runs
AGENT_TIMEOUT_S = 600.0  # the agent's imports, emulated, then its refusal

# The agent's own backbone step (node/serving.py), as the agent runs it at start.
BACKBONE_STEP = """
import json
import numpy as np
from edge_swarm.learn.model import ModelSpec
from edge_swarm.node.config import load_config
from edge_swarm.node.serving import DeviceModel
cfg = load_config("/etc/edge-swarm/agent.toml")
ref = json.loads((cfg.backbone_dir / "backbone.json").read_text())
spec = ModelSpec((ref["sizes"][-1], 10))
x = np.zeros((4, ref["sizes"][0]), np.float32)
print(DeviceModel(cfg).backbone_features(ref, spec, x).shape, cfg.runtime.engine)
"""
VENV_PYTHON = "/opt/edge-swarm/venv/bin/python"


@pytest.fixture(scope="module")
def root() -> Path:
    require_arm()
    return cached_root().path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[SwarmLayout, Path]:
    """A provisioned site whose genesis names a backbone, and the backbone's directory."""
    work = tmp_path_factory.mktemp("refusal-site")
    public, _ = public_private(WORKLOADS["digits"](), PUBLIC_FRACTION, 0)
    layers, _ = pretrain(public)
    ref = write_backbone(layers, work / "backbone")
    params = SwarmParams(
        model=model_spec(ref.n_features, 10, (32,)),
        local=DEFAULT_LOCAL,
        merge=DEFAULT_MERGE,
        rounds=2,
        backbone=read_ref(work / "backbone").to_dict(),
    )
    layout = provision_swarm(work / "site", SWARM, params, [], BrokerConfig("127.0.0.1", 1883))
    return layout, work / "backbone"


def bundle(
    site: tuple[SwarmLayout, Path], profile: str, out: Path, python: str | None = None
) -> Bundle:
    layout, backbone = site
    return make_bundle(
        profile, layout, "pi-refusals", out, broker=BROKER, backbone=backbone, python=python
    )


def run_install(dev: Device, path: Path, env: str = "") -> subprocess.CompletedProcess[str]:
    """install.sh of the bundle at ``path`` on the device, no network; not checked."""
    dev.copy_in(path, BOOT_DIR)
    argv = ["sh", "-c", f'{env} sh "{BOOT_DIR}/install.sh"']
    return dev.run(argv, network=False, timeout=REFUSE_TIMEOUT_S)


def refused_untouched(dev: Device, proc: subprocess.CompletedProcess[str], says: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert says in " ".join(proc.stderr.split()), proc.stderr
    assert proc.stdout == ""  # no enrolment request
    for path in ("/opt/edge-swarm", "/etc/edge-swarm", "/var/lib/edge-swarm"):
        assert not dev.path(path).exists(), f"{path} made before the refusal"


# --------------------------------------------------------------------------- install.sh


def test_a_bundle_for_another_python_is_refused_naming_the_bundle_to_make(
    root: Path, site: tuple[SwarmLayout, Path], tmp_path: Path
) -> None:
    jetson = bundle(site, "jetson-orin-nano", tmp_path / "jetson")  # JetPack 6: Python 3.10
    with Device(root, tmp_path / "dev") as dev:
        proc = run_install(dev, jetson.path)
        refused_untouched(
            dev,
            proc,
            "python3 is Python 3.11; this bundle's wheels are for 3.10 "
            "(make one for 3.11: edge-swarm bundle --python 3.11)",
        )


def test_a_bundle_for_another_machine_is_refused_naming_the_profile_to_use(
    root: Path, site: tuple[SwarmLayout, Path], tmp_path: Path
) -> None:
    x86 = bundle(site, "x86-agent", tmp_path / "x86", python="3.11")
    with Device(root, tmp_path / "dev") as dev:
        proc = run_install(dev, x86.path)
        refused_untouched(
            dev,
            proc,
            "this device is aarch64; the bundle's wheels are for x86_64 (profile x86-agent): "
            "make one with a profile for aarch64",
        )


def test_a_32_bit_system_is_refused_naming_the_image_to_flash(
    root: Path, site: tuple[SwarmLayout, Path], tmp_path: Path
) -> None:
    pi = bundle(site, "rpi4", tmp_path / "pi")
    with Device(root, tmp_path / "dev") as dev:
        # Raspberry Pi OS 32-bit on a Pi 4: a 64-bit kernel, an armhf Python (pip's armv8l).
        fake = dev.path("/usr/local/bin/python3-armhf")
        fake.write_text('#!/bin/sh\ncase "$2" in *struct*) echo armv8l ;; *) echo 3.11 ;; esac\n')
        fake.chmod(0o755)
        proc = run_install(dev, pi.path, env="EDGE_SWARM_PYTHON=/usr/local/bin/python3-armhf")
        refused_untouched(
            dev, proc, "install the 64-bit image (Raspberry Pi OS 64-bit), then run this again"
        )


# --------------------------------------------------------------------------- edge-swarm bundle


def test_a_device_without_tflite_wheels_is_refused_at_bundle_time_saying_what_to_do(
    site: tuple[SwarmLayout, Path], tmp_path: Path
) -> None:
    # A board image with glibc 2.24 (Debian 9): PyPI's ai-edge-litert needs 2.27.
    text = (Path(__file__).parents[1] / "firmware_configs" / "rpi4.toml").read_text()
    old = tmp_path / "old-pi.toml"
    old.write_text(
        text.replace('name = "rpi4"', 'name = "old-pi"').replace("2_36_aarch64", "2_24_aarch64")
    )
    layout, backbone = site
    argv = [
        sys.executable, "-m", "edge_swarm", "bundle", "--profile", str(old), "--swarm", SWARM,
        "--device-id", "old-pi-1", "--out", str(tmp_path / "out"), "--backbone", str(backbone),
        "--bootstrap", str(layout.root / "bootstrap.jsonl"), "--wheelhouse", str(wheelhouse()),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr
    said = " ".join(proc.stderr.split())
    assert "ai-edge-litert has no wheel for Python 3.11 on manylinux_2_24_aarch64" in said
    assert "Use another Python (--python 3.10 to 3.13" in said
    assert 'engine is "numpy"' in said
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the installed device


@pytest.fixture(scope="module")
def installed(
    root: Path, site: tuple[SwarmLayout, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Device, dict[str, str]]]:
    """A device with the rpi4 bundle installed, and its agent's unit."""
    work = tmp_path_factory.mktemp("refusal-pi")
    pi = bundle(site, "rpi4", work / "bundle")
    with Device(root, work / "dev") as dev:
        install(dev, pi.path)
        yield dev, unit_of((pi.path / "systemd" / "edge-swarm-agent.service").read_text())


def test_the_agent_refuses_a_key_others_may_read_saying_chmod_600(
    installed: tuple[Device, dict[str, str]],
) -> None:
    dev, unit = installed
    key = dev.path("/etc/edge-swarm/device.key")
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    try:
        argv = unit["ExecStart"].split()
        home = unit["WorkingDirectory"]
        proc = dev.run(
            argv, user=unit["User"], cwd=home, env={"HOME": home}, timeout=AGENT_TIMEOUT_S
        )
    finally:
        key.chmod(0o600)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0, said
    assert "chmod 600" in said and "/etc/edge-swarm/device.key" in said, said
    assert "Traceback" not in said, said


def test_without_its_tflite_interpreter_the_agent_says_what_to_do(
    installed: tuple[Device, dict[str, str]],
) -> None:
    dev, unit = installed
    as_agent = {"user": unit["User"], "timeout": AGENT_TIMEOUT_S}
    ok = dev.run([VENV_PYTHON, "-c", BACKBONE_STEP], **as_agent)
    assert ok.returncode == 0 and ok.stdout.split() == ["(4,", "32)", "tflite"], ok.stderr
    # The wheel is gone from the venv (a device whose bundle did not carry it).
    gone = dev.run(
        [VENV_PYTHON, "-m", "pip", "uninstall", "-y", "ai-edge-litert"],
        network=False,
        timeout=AGENT_TIMEOUT_S,
    )
    assert gone.returncode == 0, gone.stderr
    proc = dev.run([VENV_PYTHON, "-c", BACKBONE_STEP], **as_agent)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stderr
    assert "run by tflite, which this device cannot load" in said, said
    assert 'set [runtime] engine = "numpy" in this node\'s config' in said, said
    assert "Traceback" not in said, said
    # What the agent is told to do works: the numpy engine needs nothing more.
    config = dev.path("/etc/edge-swarm/agent.toml")
    config.write_text(config.read_text().replace('engine = "tflite"', 'engine = "numpy"'))
    fixed = dev.run([VENV_PYTHON, "-c", BACKBONE_STEP], **as_agent)
    assert fixed.returncode == 0 and fixed.stdout.split()[-1] == "numpy", fixed.stderr
