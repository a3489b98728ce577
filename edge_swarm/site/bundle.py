"""An offline installer for one device, made from a device profile and a swarm's genesis.

    wheels/          edge-swarm's wheel and every dependency for the profile's platform and
                     Python, and SHA256SUMS (built by ``edge_swarm.cli.bundle``)
    config/          the node's TOML (``agent.toml`` or ``gateway.toml``, via dump_config)
    swarm/           agents: the genesis line only (``genesis.json``); gateways: the whole
                     bootstrap file; the broker's CA (``ca.crt``) and ``backbone/`` if given
    systemd/         edge-swarm-<role>.service (and edge-swarm-broker.service for a gateway
                     that hosts the site's broker)
    install.sh       POSIX sh: venv, pip install --no-index from wheels/, config, keygen,
                     systemd. ``EDGE_SWARM_ROOT=/prefix sh install.sh`` installs under a
                     prefix (every path, also inside the config and the unit, moves there)
    cloud-init/user-data  first boot from the boot partition (Raspberry Pi OS, Ubuntu/Jetson)
    manifest.json    profile, swarm, device, genesis hash, wheels with sha256, creation time

This module and its siblings are the pure part: `BundleSpec` (validated inputs, in
``bundle_spec``) and the renderers of every file but the wheels and the manifest
(`node_config` here, `systemd_units` in ``bundle_units``, `install_script` and `cloud_init`
in ``bundle_install``); `write_files` puts them on disk. All of them are importable from
here. Fetching wheels with pip, the manifest and assembling the directory are in
``edge_swarm.cli.bundle``.

The device's paths are written as absolute paths. A prefixed install rewrites every
absolute path in the config (``"/...``) and the units (``=/...`` and `` /...``), which is
why profile paths may hold no spaces and unit descriptions no slashes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edge_swarm.node.config import (
    BrokerConfig,
    ConfigError,
    DiscoveryConfig,
    NodeConfig,
    dump_config,
)

# The "X as X" names are re-exported: all the bundle renders stays importable from here.
from edge_swarm.site.bundle_install import BOOT_DIRS as BOOT_DIRS
from edge_swarm.site.bundle_install import cloud_init, install_script
from edge_swarm.site.bundle_spec import BROKER_PORT, BundleError, BundleSpec
from edge_swarm.site.bundle_spec import parse_broker as parse_broker
from edge_swarm.site.bundle_spec import read_bootstrap as read_bootstrap
from edge_swarm.site.bundle_units import exec_start as exec_start
from edge_swarm.site.bundle_units import systemd_units
from edge_swarm.site.bundle_units import unit_names as unit_names
from edge_swarm.site.operator import enc_key_path

# --------------------------------------------------------------------------- the config


def node_config(spec: BundleSpec) -> NodeConfig:
    """The device's NodeConfig with the device's own (absolute) paths."""
    p = spec.profile
    cfg_dir, state = Path(p.paths.config_dir), Path(p.paths.state_dir)
    key = cfg_dir / "device.key"
    ca = cfg_dir / "swarm" / "ca.crt" if spec.ca is not None else None
    if spec.broker is not None:
        broker = BrokerConfig(spec.broker[0], spec.broker[1], tls_ca=ca)
        discovery = DiscoveryConfig()
    elif spec.hosts_broker:  # its own broker; the gateway advertises itself on the LAN
        broker = BrokerConfig("127.0.0.1", BROKER_PORT, tls_ca=ca)
        discovery = DiscoveryConfig(True, False, ())
    else:  # no address: find the swarm's broker by zeroconf, on every interface
        broker = BrokerConfig(tls_ca=ca)
        discovery = DiscoveryConfig(True, True, ())
    agent = spec.role == "agent"
    try:
        return NodeConfig(
            node_id=spec.device_id,
            role=spec.role,
            swarm=spec.swarm,
            key_path=key,
            enc_key_path=enc_key_path(key),
            state_dir=state,
            broker=broker,
            genesis_hash=spec.genesis.hash,
            data_path=state / "data" if agent else None,
            ledger_path=None if agent else state / "ledger.sqlite",
            bootstrap_path=None if agent else cfg_dir / "swarm" / "bootstrap.jsonl",
            codec_override=p.codec if agent else None,
            discovery=discovery,
            runtime=p.runtime,
            backbone_dir=cfg_dir / "swarm" / "backbone" if spec.backbone is not None else None,
        )
    except ConfigError as exc:
        raise BundleError(str(exc)) from None


def config_text(spec: BundleSpec) -> str:
    header = (
        f"# {spec.role} {spec.device_id} of swarm {spec.swarm}: written by edge-swarm bundle "
        f"(profile {spec.profile.name}).\n"
    )
    return header + dump_config(node_config(spec))


# --------------------------------------------------------------------------- on disk


def write_files(root: Path, spec: BundleSpec, wheel: str) -> None:
    """Write everything but wheels/ and manifest.json under ``root``."""
    role = spec.role
    _text(root / "config" / f"{role}.toml", config_text(spec))
    swarm = root / "swarm"
    if role == "agent":  # an agent copies the ledger from a gateway: the genesis pins it
        _text(swarm / "genesis.json", spec.bootstrap_lines[0] + "\n")
    else:  # the coordinating gateway creates the ledger from the whole file
        _text(swarm / "bootstrap.jsonl", "".join(ln + "\n" for ln in spec.bootstrap_lines))
    if spec.ca is not None:
        shutil.copy2(spec.ca, swarm / "ca.crt")
    if spec.backbone is not None:
        shutil.copytree(spec.backbone, swarm / "backbone")
    for name, text in systemd_units(spec).items():
        _text(root / "systemd" / name, text)
    _text(root / "install.sh", install_script(spec, wheel)).chmod(0o755)
    _text(root / "cloud-init" / "user-data", cloud_init(spec))


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
