"""Device profiles and ``edge-swarm bundle``: schema checks, what a bundle holds, and a real
offline install that joins a swarm.

- Profiles: the shipped files load; every kind of bad field is refused, naming it.
- Bundles are built for real with pip (a session-wide wheelhouse caches the downloads, so
  only the first build of a platform reaches the index).
- x86: the bundle is installed with its install.sh inside a network namespace that has no
  route anywhere (pip --no-index: the wheels must all be there), under a root prefix; the
  device key and enrolment request come out of it; the request is enrolled on a site whose
  broker and gateway run on a second host of the same LAN, and the installed agent, started
  with the systemd unit's ExecStart, finds the broker by zeroconf and is included in a round.
- arm64: the rpi4 and jetson bundles hold aarch64 wheels for their Python only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_swarm.cli.bundle import (
    add_parser,
    fits,
    project_root,
    read_project,
    target_requirements,
    wheel_tags,
)
from edge_swarm.learn.data import standard_workload, write_partitions
from edge_swarm.node.config import BrokerConfig, Timing, load_config
from edge_swarm.site.bundle import (
    BundleError,
    BundleSpec,
    node_config,
    read_bootstrap,
    systemd_units,
    write_files,
)
from edge_swarm.site.bundle_install import install_script
from edge_swarm.site.demo import DEFAULT_LOCAL, DEFAULT_MERGE, model_spec
from edge_swarm.site.operator import EnrollRequest, append_to_bootstrap, enroll_tx
from edge_swarm.site.profiles import (
    PRIVATE_NETS,
    PROFILE_DIR,
    ProfileError,
    TimeService,
    load_profile,
    profile_from_dict,
    profile_names,
)
from edge_swarm.site.provision import SwarmLayout, SwarmParams, provision_swarm
from edge_swarm.swarm.quantize import CodecSpec
from ledger_lite import DEFAULT_POLICY, SigningKey, make_genesis

from .netns import Lan, LineReader, require_netns

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHIPPED = ("rpi4", "rpi5", "jetson-orin-nano", "x86-gateway", "x86-agent")
SWARM = "ward-9"
DEVICE = "pc-ward9-01"
PORT = 1883  # each namespace has its own stack: the standard port is free there
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
INSTALL_TIMEOUT_S = 300.0
JOIN_TIMEOUT_S = 150.0
WHERE = "import edge_swarm; print(edge_swarm.__file__)"


def bundle_cli(*argv: str) -> int:
    """``edge-swarm bundle ARGV`` through the module's own parser (exit status)."""
    parser = argparse.ArgumentParser(prog="edge-swarm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bundle", *argv])
    return int(args.func(args))


# --------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile == load_profile(PROFILE_DIR / f"{name}.toml")
    assert profile.memory_max == f"{profile.memory_budget_mib}M"
    # The newest tag first, and every older manylinux tag of the same machine after it.
    tags = profile.pip_platforms
    assert tags[0] == profile.platform[0]
    assert f"manylinux2014_{profile.machine}" in tags
    assert f"manylinux_2_17_{profile.machine}" in tags
    assert all(t.endswith(profile.machine) for t in tags)


def test_profiles_say_what_each_device_is() -> None:
    assert set(SHIPPED) <= set(profile_names())
    rpi4, jetson, gateway = (load_profile(n) for n in ("rpi4", "jetson-orin-nano", "x86-gateway"))
    assert (rpi4.machine, rpi4.cp_tag, rpi4.extras) == ("aarch64", "cp311", ("tflite",))
    assert (jetson.machine, jetson.cp_tag) == ("aarch64", "cp310")
    # onnxruntime-gpu comes from JetPack: only the TFLite interpreter from the bundle.
    assert jetson.extras == ("tflite",) and jetson.system_site_packages
    assert jetson.runtime.providers[-1] == "CPUExecutionProvider"
    assert (gateway.role, gateway.extras, gateway.machine) == (
        "gateway",
        ("broker", "export"),
        "x86_64",
    )
    assert rpi4.codec == {"name": "int8"} and rpi4.batch_size == 16


def _rpi4() -> dict[str, Any]:
    return tomllib.loads((PROFILE_DIR / "rpi4.toml").read_text())


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *tables, key = dotted.split(".")
    for t in tables:
        raw = raw[t]
    raw[key] = value


def _drop(raw: dict[str, Any], dotted: str) -> None:
    *tables, key = dotted.split(".")
    for t in tables:
        raw = raw[t]
    del raw[key]


BAD_VALUES = [
    ("runtime.threads", 0, "runtime.threads must be a positive integer"),
    ("runtime.threads", "4", "runtime.threads must be a positive integer"),
    ("runtime.engine", "tensorrt", "runtime.engine must be one of"),
    ("runtime.providers", "CPUExecutionProvider", "runtime.providers must be a list"),
    ("python", 3.11, "python must be a version"),
    ("python", "3.9", "python must be at least 3.10"),
    ("platform", "manylinux_2_36_aarch64", "platform must be a list"),
    ("platform", ["manylinux_2_36_aarch64", "manylinux_2_17_x86_64"], "different machines"),
    ("platform", ["win_amd64"], "platform 'win_amd64' is not a Linux platform tag"),
    ("role", "observer", "role must be one of"),
    ("extras", "tflite", "extras must be a list"),
    ("extras", [], "runtime.engine 'tflite' needs one of the extras"),
    ("memory_budget_mib", True, "memory_budget_mib must be a positive integer"),
    ("memory_budget_mib", 16, "memory_budget_mib must be at least 64"),
    ("codec.name", "zip", "codec.name must be one of"),
    ("codec.topk", 2, "codec.topk must be a fraction"),
    ("training.batch_size", -1, "training.batch_size must be a positive integer"),
    ("paths.state_dir", "var/lib/edge-swarm", "paths.state_dir must be an absolute path"),
    ("paths.config_dir", "/opt/edge-swarm", "must differ"),
    ("systemd.nice", 40, "systemd.nice must be an integer from -20 to 19"),
    ("systemd.restart", "sometimes", "systemd.restart must be one of"),
    ("systemd.restart_sec", 0, "systemd.restart_sec must be a positive integer"),
    ("systemd.user", "Edge Swarm", "systemd.user must be a user name"),
    ("system_site_packages", "yes", "system_site_packages must be true or false"),
    ("runtime", "tflite", "[runtime] must be a table"),
    ("colour", "blue", "colour is not a known setting"),
    ("runtime.gpu", True, "runtime.gpu is not a known setting"),
    ("systemd.memory_max", "1G", "systemd.memory_max is not a known setting"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_VALUES)
def test_a_bad_field_is_refused_naming_it(field: str, value: Any, message: str) -> None:
    raw = _rpi4()
    _set(raw, field, value)
    with pytest.raises(ProfileError) as info:
        profile_from_dict(raw, "rpi4.toml")
    assert str(info.value).startswith("rpi4.toml: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("python", "rpi4.toml: python is missing"),
        ("platform", "rpi4.toml: platform is missing"),
        ("runtime.engine", "rpi4.toml: runtime.engine is missing"),
        ("paths.config_dir", "rpi4.toml: paths.config_dir is missing"),
        ("systemd.user", "rpi4.toml: systemd.user is missing"),
        ("systemd", "rpi4.toml: [systemd] table is missing"),
    ],
)
def test_a_missing_field_is_refused_naming_it(field: str, message: str) -> None:
    raw = _rpi4()
    _drop(raw, field)
    with pytest.raises(ProfileError, match=re.escape(message)):
        profile_from_dict(raw, "rpi4.toml")


def test_optional_fields_have_defaults() -> None:
    raw = _rpi4()
    for field in ("codec", "training", "description", "runtime.threads", "systemd.nice"):
        _drop(raw, field)
    profile = profile_from_dict(raw, "rpi4.toml")
    assert profile.codec is None and profile.batch_size is None
    assert profile.runtime.threads is None and profile.systemd.nice == 0
    assert profile.systemd.restart == "on-failure"


def test_profile_files_and_names(tmp_path: Path) -> None:
    bad = tmp_path / "my-pi.toml"
    bad.write_text((PROFILE_DIR / "rpi4.toml").read_text().replace("threads = 4", "threads = 0"))
    with pytest.raises(ProfileError, match=r"^my-pi\.toml: runtime\.threads must be a positive"):
        load_profile(bad)
    (tmp_path / "broken.toml").write_text("name = [\n")
    with pytest.raises(ProfileError, match=r"broken\.toml: not valid TOML"):
        load_profile(tmp_path / "broken.toml")
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "absent.toml")
    with pytest.raises(ProfileError, match=r"no device profile named 'rpi3' \(known: .*rpi4"):
        load_profile("rpi3")


# --------------------------------------------------------------------------- requirements


def test_requirements_are_evaluated_for_the_device() -> None:
    project = read_project(project_root())

    def names(profile: str) -> set[str]:
        reqs = target_requirements(project, load_profile(profile))
        return {re.split(r"[<>=!~\[]", r, maxsplit=1)[0] for r in reqs}

    core = {"numpy", "paho-mqtt", "pycryptodome", "cryptography", "pysyncobj", "zeroconf"}
    assert core | {"ai-edge-litert"} <= names("rpi4")
    assert "onnxruntime" not in names("rpi4")  # tflite, not serve
    assert "tomli" in names("jetson-orin-nano")  # Python 3.10
    assert "tomli" not in names("rpi4")
    assert {"amqtt", "onnx", "tflite", "flatbuffers"} <= names("x86-gateway")
    assert {"onnxruntime", "ai-edge-litert"} <= names("x86-agent")
    bogus = dataclasses.replace(load_profile("rpi4"), extras=("tflite", "gpu"))
    with pytest.raises(BundleError, match=r"extras: 'gpu' is not an extra of edge-swarm"):
        target_requirements(project, bogus)


def test_wheel_tags_decide_what_fits() -> None:
    rpi4, jetson = load_profile("rpi4"), load_profile("jetson-orin-nano")
    numpy = "numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl"
    assert ("cp311", "cp311", "manylinux_2_28_aarch64") in wheel_tags(numpy)
    assert fits(numpy, rpi4) and not fits(numpy, jetson)
    assert fits("cryptography-50.0.2-cp311-abi3-manylinux_2_34_aarch64.whl", rpi4)
    assert not fits("cryptography-50.0.2-cp311-abi3-manylinux_2_34_aarch64.whl", jetson)
    assert not fits("numpy-2.4.6-cp311-cp311-manylinux_2_38_aarch64.whl", rpi4)  # glibc 2.36
    assert not fits("numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", rpi4)
    assert fits("six-1.17.0-py2.py3-none-any.whl", jetson)


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SwarmLayout:
    """A provisioned site (gateway, observer; no agents yet) of the standard workload; the
    gateway reaches its broker on its own host. The join test enrols the device into it."""
    root = tmp_path_factory.mktemp("site")
    w = standard_workload()
    params = SwarmParams(
        model=model_spec(w.n_features, w.n_classes, (32,)),
        local=DEFAULT_LOCAL,
        merge=DEFAULT_MERGE,
        rounds=2,
        min_peers=1,
        round_deadline_s=30.0,
        attest_timeout_s=15.0,
        start_grace_s=60.0,
        codec=CodecSpec("int8"),
    )
    broker = BrokerConfig("127.0.0.1", PORT)
    return provision_swarm(root, SWARM, params, [], broker, Timing(connect_timeout_s=30.0))


def _spec(site: SwarmLayout, profile: str, **kw: Any) -> BundleSpec:
    genesis, lines = read_bootstrap(site.root / "bootstrap.jsonl")
    return BundleSpec(load_profile(profile), SWARM, DEVICE, genesis, lines, **kw)


def test_config_round_trips_and_follows_the_broker_choice(
    site: SwarmLayout, tmp_path: Path
) -> None:
    # No --broker: no host, the device finds the broker on the LAN.
    cfg = node_config(_spec(site, "rpi4"))
    assert cfg.discovery.enabled and cfg.discovery.find_broker
    assert cfg.genesis_hash == site.genesis_hash
    assert cfg.key_path == Path("/etc/edge-swarm/device.key")
    assert cfg.enc_key_path == Path("/etc/edge-swarm/device.key.enc")
    assert cfg.data_path == Path("/var/lib/edge-swarm/data")
    assert cfg.codec_override == {"name": "int8"}
    assert (cfg.runtime.engine, cfg.runtime.threads) == ("tflite", 4)
    # --broker and --ca: a static, TLS broker and no discovery.
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    spec = _spec(site, "rpi4", broker=("10.0.0.2", 8883), ca=ca)
    static = node_config(spec)
    assert (static.broker.host, static.broker.port) == ("10.0.0.2", 8883)
    assert static.broker.tls_ca == Path("/etc/edge-swarm/swarm/ca.crt")
    assert not static.discovery.enabled
    write_files(tmp_path / "b", spec, "edge_swarm-0.1.0-py3-none-any.whl")
    loaded = load_config(tmp_path / "b" / "config" / "agent.toml")
    assert loaded == static
    assert (tmp_path / "b" / "swarm" / "ca.crt").read_text() == ca.read_text()
    genesis_lines = (tmp_path / "b" / "swarm" / "genesis.json").read_text().splitlines()
    assert genesis_lines == [(site.root / "bootstrap.jsonl").read_text().splitlines()[0]]


def test_a_gateway_bundle_hosts_the_broker(site: SwarmLayout, tmp_path: Path) -> None:
    spec = _spec(site, "x86-gateway")
    write_files(tmp_path, spec, "edge_swarm-0.1.0-py3-none-any.whl")
    cfg = load_config(tmp_path / "config" / "gateway.toml")
    assert cfg.role == "gateway" and cfg.ledger_path == Path("/var/lib/edge-swarm/ledger.sqlite")
    assert (cfg.broker.host, cfg.broker.port) == ("127.0.0.1", PORT)
    assert cfg.discovery.enabled and not cfg.discovery.find_broker  # it advertises itself
    # A gateway creates the ledger: it takes the whole bootstrap, enrolments included.
    assert (tmp_path / "swarm" / "bootstrap.jsonl").read_text() == (
        site.root / "bootstrap.jsonl"
    ).read_text()
    units = systemd_units(spec)
    assert set(units) == {"edge-swarm-gateway.service", "edge-swarm-broker.service"}
    broker = _unit(units["edge-swarm-broker.service"])
    assert f"--swarm {SWARM} --genesis {site.genesis_hash}" in broker["ExecStart"]
    gateway = _unit(units["edge-swarm-gateway.service"])
    assert "edge-swarm-broker.service" in gateway["After"]
    assert gateway["MemoryMax"] == "2048M"
    assert "--role gateway" in (tmp_path / "install.sh").read_text()
    subprocess.run(["sh", "-n", str(tmp_path / "install.sh")], check=True, timeout=10)


@pytest.mark.parametrize(
    ("role", "table", "message"),
    [
        ("agent", {"serve": True}, "time.serve is for a gateway"),
        ("gateway", {"serve": "yes"}, "time.serve must be true or false"),
        ("gateway", {"serve": True, "allow": ["the ward"]}, "time.allow must be a list of net"),
        ("gateway", {"serve": True, "peers": []}, "time.peers is not a known setting"),
    ],
)
def test_a_bad_time_table_is_refused_naming_it(role: str, table: dict, message: str) -> None:
    raw = tomllib.loads((PROFILE_DIR / "x86-gateway.toml").read_text())
    raw["role"], raw["time"] = role, table
    with pytest.raises(ProfileError, match=re.escape(message)):
        profile_from_dict(raw, "x86-gateway.toml")


def _time_step(script: str) -> str:
    """Step 7 of an install.sh (the time), runnable on its own."""
    start, end = script.index("# 7. Time"), script.index("# 8. systemd")
    return 'say() { echo "install.sh: $*" >&2; }\n' + script[start:end]


def test_the_gateway_serves_the_time_and_the_devices_take_it(
    site: SwarmLayout, tmp_path: Path
) -> None:
    """A Pi has no hardware clock and a clinic LAN often no internet time: the gateway's
    chrony serves the site's time; a device bundle points chrony at the gateway. Only where
    chrony is installed; it never fails an install."""
    wheel = "edge_swarm-0.1.0-py3-none-any.whl"
    assert load_profile("x86-gateway").time == TimeService(True, PRIVATE_NETS)
    assert not load_profile("rpi4").time.serve
    gateway = install_script(_spec(site, "x86-gateway"), wheel)
    assert "local stratum 10\nallow 10.0.0.0/8\n" in gateway and "allow 192.168.0.0/16\n" in gateway
    agent = install_script(_spec(site, "rpi4", broker=("10.0.0.2", 8883)), wheel)
    assert "server 10.0.0.2 iburst\n" in agent and "local stratum" not in agent
    for text in (gateway, agent):
        assert "command -v chronyd" in text and "chrony is not installed" in text
        assert "systemctl try-restart chrony.service" in text
        (tmp_path / "install.sh").write_text(text)
        subprocess.run(["sh", "-n", str(tmp_path / "install.sh")], check=True, timeout=10)
    # No gateway address (discovery), the broker on the device itself, or no host at all:
    # no time source is written.
    for kw in ({}, {"broker": ("127.0.0.1", 1883)}, {"broker": ("gw\nallow all", 1883)}):
        text = install_script(_spec(site, "rpi4", **kw), wheel)
        assert "EDGE_SWARM_CHRONY" not in text and "allow all" not in text
        assert not re.search(r"^(server|allow) ", text, re.M)
    # Under a root prefix the snippet is staged there, and the step never fails.
    root = tmp_path / "root"
    ran = subprocess.run(
        ["sh", "-euc", f"ROOT={root}\n" + _time_step(agent)],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    conf = (root / "etc" / "chrony" / "conf.d" / "edge-swarm.conf").read_text()
    assert conf.splitlines()[1:] == ["server 10.0.0.2 iburst"]
    # A file that cannot be written (here: a directory in its place, which stops root too)
    # is a warning, not a failed install.
    bad = tmp_path / "bad"
    (bad / "etc" / "chrony" / "conf.d" / "edge-swarm.conf").mkdir(parents=True)
    ran = subprocess.run(
        ["sh", "-euc", f"ROOT={bad}\n" + _time_step(agent)],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert ran.returncode == 0 and "warning: cannot write" in ran.stderr, ran.stderr


def test_a_backbone_travels_with_the_bundle(site: SwarmLayout, tmp_path: Path) -> None:
    admin = SigningKey.generate()
    genesis = make_genesis(admin, "admin", SWARM, DEFAULT_POLICY, {"backbone": {"sizes": [8, 4]}})
    line = json.dumps(genesis.to_dict(), sort_keys=True)
    profile = load_profile("rpi4")
    with pytest.raises(BundleError, match="the genesis names a backbone: give its directory"):
        BundleSpec(profile, SWARM, DEVICE, genesis, (line,))
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    (backbone / "backbone.npz").write_bytes(b"npz")
    with pytest.raises(BundleError, match=r"has no backbone\.tflite, which profile rpi4 runs"):
        BundleSpec(profile, SWARM, DEVICE, genesis, (line,), backbone=backbone)
    (backbone / "backbone.tflite").write_bytes(b"tflite")
    spec = BundleSpec(profile, SWARM, DEVICE, genesis, (line,), backbone=backbone)
    assert node_config(spec).backbone_dir == Path("/etc/edge-swarm/swarm/backbone")
    write_files(tmp_path / "b", spec, "edge_swarm-0.1.0-py3-none-any.whl")
    assert (tmp_path / "b" / "swarm" / "backbone" / "backbone.tflite").read_bytes() == b"tflite"


def test_bad_arguments_are_refused_before_any_download(
    site: SwarmLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boot = str(site.root / "bootstrap.jsonl")
    base = ["--swarm", SWARM, "--device-id", DEVICE, "--out", str(tmp_path / "out")]

    def refused(*argv: str) -> str:
        assert bundle_cli(*argv) == 2
        assert not (tmp_path / "out").exists()
        return capsys.readouterr().err

    assert "no device profile named 'rpi3'" in refused(
        "--profile", "rpi3", *base, "--bootstrap", boot
    )
    bad = tmp_path / "bad.toml"
    bad.write_text((PROFILE_DIR / "rpi4.toml").read_text().replace('role = "agent"', "role = 1"))
    assert "bad.toml: role must be" in refused("--profile", str(bad), *base, "--bootstrap", boot)
    no_genesis = tmp_path / "enrolments.jsonl"
    no_genesis.write_text("\n".join((site.root / "bootstrap.jsonl").read_text().splitlines()[1:]))
    err = refused("--profile", "rpi4", *base, "--bootstrap", str(no_genesis))
    assert f"{no_genesis}: line 1 is a 'enroll' entry at height 1, not the genesis" in err
    (tmp_path / "empty.jsonl").write_text("\n")
    err = refused("--profile", "rpi4", *base, "--bootstrap", str(tmp_path / "empty.jsonl"))
    assert "empty.jsonl: empty, no genesis entry" in err
    err = refused("--profile", "rpi4", *base, "--bootstrap", str(tmp_path / "absent.jsonl"))
    assert "absent.jsonl: no such file" in err
    other = ["--swarm", "ward-1", *base[2:]]
    assert "is not the genesis's swarm" in refused("--profile", "rpi4", *other, "--bootstrap", boot)
    assert "--broker takes HOST:PORT" in refused(
        "--profile", "rpi4", *base, "--bootstrap", boot, "--broker", "gw.local"
    )
    assert "--device-id" in refused(
        "--profile", "rpi4", *base[:2], "--device-id", "pi 1", *base[4:], "--bootstrap", boot
    )
    with pytest.raises(SystemExit) as info:  # argparse: a required argument is missing
        bundle_cli("--profile", "rpi4", *base)
    assert info.value.code == 2
    assert "--bootstrap" in capsys.readouterr().err


def _unit(text: str) -> dict[str, str]:
    """``Key=Value`` lines of a unit file (the last wins)."""
    return dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isalpha()
    )


# --------------------------------------------------------------------------- real bundles


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Downloaded wheels, shared by every bundle built in this session."""
    return tmp_path_factory.mktemp("wheelhouse")


@pytest.fixture(scope="module")
def x86_bundle(
    site: SwarmLayout, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An x86-agent bundle for this machine's Python, built through the CLI."""
    if platform.machine() != "x86_64":
        pytest.skip("the install test runs the x86-64 bundle on this machine")
    out = tmp_path_factory.mktemp("bundles") / "x86"
    rc = bundle_cli(
        "--profile", "x86-agent", "--swarm", SWARM, "--device-id", DEVICE, "--out", str(out),
        "--bootstrap", str(site.root / "bootstrap.jsonl"), "--wheelhouse", str(wheelhouse),
        "--python", HOST_PYTHON,
    )  # fmt: skip
    assert rc == 0
    return out


def test_an_x86_bundle_holds_what_the_device_needs(x86_bundle: Path, site: SwarmLayout) -> None:
    info = json.loads((x86_bundle / "manifest.json").read_text())
    assert (info["profile"], info["swarm"], info["device_id"]) == ("x86-agent", SWARM, DEVICE)
    assert info["genesis_hash"] == site.genesis_hash and info["python"] == HOST_PYTHON
    files = {w["file"]: w["sha256"] for w in info["wheels"]}
    assert files.keys() == {p.name for p in (x86_bundle / "wheels").glob("*.whl")}
    sums = (x86_bundle / "wheels" / "SHA256SUMS").read_text().split()
    assert dict(zip(sums[1::2], sums[0::2], strict=True)) == files
    names = {f.split("-")[0].lower() for f in files}
    assert {"edge_swarm", "numpy", "onnxruntime", "ai_edge_litert", "pysyncobj", "pip"} <= names
    assert "amqtt" not in names and "scikit_learn" not in names
    cfg = load_config(x86_bundle / "config" / "agent.toml")
    assert cfg.node_id == DEVICE and cfg.discovery.find_broker
    unit = _unit((x86_bundle / "systemd" / "edge-swarm-agent.service").read_text())
    assert unit["ExecStart"] == (
        "/opt/edge-swarm/venv/bin/edge-swarm agent --config /etc/edge-swarm/agent.toml"
    )
    assert (unit["User"], unit["Restart"], unit["MemoryMax"]) == (
        "edge-swarm",
        "on-failure",
        "1024M",
    )
    assert (unit["Nice"], unit["RestartSec"], unit["WorkingDirectory"]) == (
        "5",
        "10",
        "/var/lib/edge-swarm",
    )
    assert unit["Environment"] == (
        "PYTHONUNBUFFERED=1 PYTHONOPTIMIZE=2 PYTHONPYCACHEPREFIX=/var/lib/edge-swarm/pycache"
    )
    subprocess.run(["sh", "-n", str(x86_bundle / "install.sh")], check=True, timeout=10)
    yaml = pytest.importorskip("yaml")
    user_data = (x86_bundle / "cloud-init" / "user-data").read_text()
    assert user_data.startswith("#cloud-config\n")
    doc = yaml.safe_load(user_data)
    assert "install.sh" in doc["write_files"][0]["content"]
    assert doc["runcmd"][-1] == ["systemctl", "enable", "--now", "edge-swarm-agent.service"]


def test_install_refuses_the_wrong_python_and_a_damaged_wheel(
    x86_bundle: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 3.7\n")
    fake.chmod(0o755)
    root = f"EDGE_SWARM_ROOT={tmp_path / 'root'}"
    wrong = _sh([root, f"EDGE_SWARM_PYTHON={fake}"], x86_bundle / "install.sh")
    assert wrong.returncode == 1
    assert f"is Python 3.7; this bundle's wheels are for {HOST_PYTHON}" in wrong.stderr
    # A copy whose pysyncobj wheel was damaged on the way (hard links: no 80 MB copy).
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-al", str(x86_bundle), str(copy)], check=True, timeout=30)
    (damaged,) = (copy / "wheels").glob("pysyncobj-*.whl")
    damaged.unlink()
    damaged.write_bytes(b"not a wheel")
    python = f"EDGE_SWARM_PYTHON={os.path.realpath(sys.executable)}"
    broken = _sh([root, python], copy / "install.sh")
    assert broken.returncode == 1
    assert f"{damaged.name}: FAILED" in broken.stderr
    assert "does not match wheels/SHA256SUMS" in broken.stderr
    assert not (tmp_path / "root").exists()  # refused before touching anything


def _sh(env: list[str], script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["env", *env, "sh", str(script)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.netns
@pytest.mark.network
def test_offline_install_then_the_device_joins_a_round(
    x86_bundle: Path, site: SwarmLayout, tmp_path: Path
) -> None:
    require_netns()
    root = tmp_path / "device"
    env_argv = [
        "env",
        f"EDGE_SWARM_ROOT={root}",
        f"EDGE_SWARM_PYTHON={os.path.realpath(sys.executable)}",  # the Python under this venv
        "sh",
        str(x86_bundle / "install.sh"),
    ]
    with Lan(2) as lan:
        hub, device = lan.hosts
        # The device's namespace reaches only the LAN: no default route, no registry.
        assert device.check(["ip", "route", "show", "default"]).strip() == ""
        request_text = device.check(env_argv, timeout=INSTALL_TIMEOUT_S)
        config_dir, venv = root / "etc" / "edge-swarm", root / "opt" / "edge-swarm" / "venv"
        key = config_dir / "device.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert (config_dir / "device.key.enc").stat().st_mode & 0o777 == 0o600
        req = EnrollRequest.from_json(request_text)
        assert (req.node, req.role) == (DEVICE, "agent") and req.enc_pubkey
        assert EnrollRequest.from_json((config_dir / "enroll-request.json").read_text()) == req
        assert "usage: edge-swarm" in device.check([str(venv / "bin" / "edge-swarm"), "--help"])
        # The code that runs is the bundle's wheel, not this checkout.
        where = device.check([str(venv / "bin" / "python"), "-I", "-c", WHERE], timeout=60).strip()
        assert Path(where).is_relative_to(venv), where
        # Again: idempotent, and the device keeps its key.
        key_bytes = key.read_bytes()
        assert device.check(env_argv, timeout=INSTALL_TIMEOUT_S) == request_text
        assert key.read_bytes() == key_bytes

        # The operator enrols the request before the site starts.
        admin = SigningKey.load(site.root / "keys" / "admin.key")
        append_to_bootstrap(site.root / "bootstrap.jsonl", enroll_tx(admin, SWARM, req))
        # The device's data goes where its config says.
        cfg = load_config(config_dir / "agent.toml")
        assert cfg.data_path == root / "var" / "lib" / "edge-swarm" / "data"
        write_partitions(standard_workload(), 1, 0.5, 0, tmp_path / "parts")
        (tmp_path / "parts" / "agent-01.npz").rename(cfg.data_path / "local.npz")

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        broker = hub.run(
            [sys.executable, "-m", "edge_swarm", "broker", "--host", "0.0.0.0", "--port",
             str(PORT), "--swarm", SWARM, "--genesis", site.genesis_hash],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        LineReader(broker.stdout).expect(lambda ln: "advertising" in ln, timeout=30)
        gateway = hub.run(
            [sys.executable, "-m", "edge_swarm", "gateway", "--config", str(site.gateway_config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        # The agent as systemd would start it: the installed unit's command, directory and
        # environment (not its User: this test runs as root).
        unit = _unit((root / "etc" / "systemd" / "system" / "edge-swarm-agent.service").read_text())
        argv = shlex.split(unit["ExecStart"])
        assert argv[0] == str(venv / "bin" / "edge-swarm")
        name, value = unit["Environment"].split("=", 1)
        agent_log = tmp_path / "agent.log"
        with agent_log.open("wb") as out:
            device.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=unit["WorkingDirectory"],
                env={"PATH": os.environ["PATH"], name: value},
            )
        included = re.compile(r'round_close .*"included": \[([^\]]*)\]')

        def device_included(line: str) -> bool:
            m = included.search(line)
            return m is not None and f'"{DEVICE}"' in m.group(1)

        try:
            LineReader(gateway.stdout).expect(device_included, timeout=JOIN_TIMEOUT_S)
        except (TimeoutError, EOFError) as exc:
            pytest.fail(f"{exc}\nagent log:\n{agent_log.read_text()[-3000:]}")
    assert f"found the broker of swarm {SWARM} at {hub.ip}:{PORT}" in agent_log.read_text()


# --------------------------------------------------------------------------- arm64


@pytest.mark.parametrize(("profile", "cp"), [("rpi4", "cp311"), ("jetson-orin-nano", "cp310")])
def test_arm64_bundles_hold_aarch64_wheels_for_their_python(
    profile: str, cp: str, site: SwarmLayout, wheelhouse: Path, tmp_path: Path
) -> None:
    out = tmp_path / profile
    rc = bundle_cli(
        "--profile", profile, "--swarm", SWARM, "--device-id", "pi-1", "--out", str(out),
        "--bootstrap", str(site.root / "bootstrap.jsonl"), "--wheelhouse", str(wheelhouse),
    )  # fmt: skip
    assert rc == 0
    wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
    by_name = {w.split("-")[0].lower(): w for w in wheels}
    # Compiled code: aarch64 manylinux wheels for the profile's CPython (or its stable ABI).
    for name in ("numpy", "cryptography", "pycryptodome", "ai_edge_litert", "cffi", "zeroconf"):
        assert name in by_name, f"{name} missing from {wheels}"
        tags = wheel_tags(by_name[name])
        assert all(plat.endswith("_aarch64") for _, _, plat in tags), by_name[name]
        assert all(
            py == cp == abi or (abi == "abi3" and int(py[3:]) <= int(cp[3:])) for py, abi, _ in tags
        ), by_name[name]
    for wheel in wheels:
        assert "x86_64" not in wheel, wheel
        if "none-any" in wheel:
            assert wheel.endswith(("-py3-none-any.whl", "-py2.py3-none-any.whl")), wheel
        else:
            assert "aarch64" in wheel, wheel
    assert "onnxruntime" not in by_name  # the tflite extra only
    assert ("tomli" in by_name) == (cp == "cp310")
    assert "pysyncobj" in by_name and by_name["pysyncobj"].endswith("-py3-none-any.whl")
    script = (out / "install.sh").read_text()
    assert '"edge-swarm[tflite]"' in script
    assert ("--system-site-packages" in script) == (profile == "jetson-orin-nano")
