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

This module is the pure part: `BundleSpec` (validated inputs) and the renderers of every
file but the wheels and the manifest (`node_config`, `systemd_units`, `install_script`,
`cloud_init`); `write_files` puts them on disk. Fetching wheels with pip, the manifest and
assembling the directory are in ``edge_swarm.cli.bundle``.

The device's paths are written as absolute paths. A prefixed install rewrites every
absolute path in the config (``"/...``) and the units (``=/...`` and `` /...``), which is
why profile paths may hold no spaces and unit descriptions no slashes.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edge_swarm.node.config import (
    BrokerConfig,
    ConfigError,
    DiscoveryConfig,
    NodeConfig,
    dump_config,
)
from edge_swarm.site.operator import enc_key_path
from edge_swarm.site.profiles import DeviceProfile
from ledger_lite import Entry
from ledger_lite.errors import LedgerError

BROKER_PORT = 1883  # the embedded broker a gateway hosts
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class BundleError(ValueError):
    """The inputs cannot make a bundle; the message names the argument, field or file."""


@dataclass(frozen=True)
class BundleSpec:
    """What one device's bundle is made of (checked when built)."""

    profile: DeviceProfile
    swarm: str
    device_id: str
    genesis: Entry
    bootstrap_lines: tuple[str, ...]  # the bootstrap file, genesis first
    broker: tuple[str, int] | None = None  # None: the agent finds its broker on the LAN
    ca: Path | None = None
    backbone: Path | None = None
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    )

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.device_id):
            raise BundleError(f"--device-id: {self.device_id!r} must match [A-Za-z0-9_.-]{{1,64}}")
        if self.genesis.swarm != self.swarm:
            raise BundleError(
                f"--swarm {self.swarm!r} is not the genesis's swarm {self.genesis.swarm!r}"
            )
        if self.ca is not None and not self.ca.is_file():
            raise BundleError(f"--ca {self.ca}: no such file")
        self._check_backbone()

    def _check_backbone(self) -> None:
        from edge_swarm.learn.backbone import FILES

        wants = self.genesis.payload.get("params", {}).get("backbone") is not None
        if self.backbone is None:
            if wants and self.profile.role == "agent":
                raise BundleError("the genesis names a backbone: give its directory, --backbone")
            return
        if not self.backbone.is_dir():
            raise BundleError(f"--backbone {self.backbone}: not a directory")
        need = FILES[self.profile.runtime.engine]
        if not (self.backbone / need).is_file():
            raise BundleError(
                f"--backbone {self.backbone} has no {need}, which profile "
                f"{self.profile.name} runs (engine {self.profile.runtime.engine})"
            )

    @property
    def role(self) -> str:
        return self.profile.role

    @property
    def hosts_broker(self) -> bool:
        """A gateway with the ``broker`` extra and no --broker runs the site's broker."""
        return self.role == "gateway" and self.broker is None and "broker" in self.profile.extras


def read_bootstrap(path: Path) -> tuple[Entry, tuple[str, ...]]:
    """The genesis entry of a bootstrap file (its first line) and all its lines.

    Raises BundleError naming the file if it is missing, empty, or does not start with a
    genesis entry (height 0, kind ``genesis``).
    """
    try:
        lines = tuple(ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())
    except FileNotFoundError:
        raise BundleError(f"--bootstrap {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"--bootstrap {path}: cannot read: {exc}") from None
    if not lines:
        raise BundleError(f"{path}: empty, no genesis entry (make one: edge-swarm admin init)")
    try:
        entry = Entry.from_dict(json.loads(lines[0]))
    except (ValueError, LedgerError) as exc:
        raise BundleError(f"{path}: line 1 is not a ledger entry: {exc}") from None
    if entry.height != 0 or entry.kind != "genesis":
        raise BundleError(
            f"{path}: line 1 is a {entry.kind!r} entry at height {entry.height}, not the genesis"
        )
    return entry, lines


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); BundleError naming --broker otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BundleError(f"--broker takes HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


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


# --------------------------------------------------------------------------- systemd


def unit_names(spec: BundleSpec) -> list[str]:
    """The units the bundle installs, the broker's first (the gateway starts after it)."""
    names = [f"edge-swarm-{spec.role}.service"]
    return ["edge-swarm-broker.service", *names] if spec.hosts_broker else names


def exec_start(spec: BundleSpec) -> str:
    """The node's command line, as the unit runs it."""
    p = spec.profile.paths
    return (
        f"{p.install_dir}/venv/bin/edge-swarm {spec.role} --config {p.config_dir}/{spec.role}.toml"
    )


def systemd_units(spec: BundleSpec) -> dict[str, str]:
    """File name -> text of each systemd unit."""
    p = spec.profile
    node = unit_names(spec)[-1]
    after = "network-online.target time-sync.target"
    extra_unit: list[str] = []
    if spec.hosts_broker:
        after += " edge-swarm-broker.service"
        extra_unit.append("Wants=edge-swarm-broker.service")
    if spec.role == "agent":  # no data yet: the unit waits instead of failing in a loop
        extra_unit.append(f"ConditionDirectoryNotEmpty={p.paths.state_dir}/data")
    units = {
        node: _unit(
            spec,
            f"edge-swarm {spec.role} {spec.device_id} of swarm {spec.swarm}",
            after,
            extra_unit,
            exec_start(spec),
        )
    }
    if spec.hosts_broker:
        argv = (
            f"{p.paths.install_dir}/venv/bin/edge-swarm broker --host 0.0.0.0 "
            f"--port {BROKER_PORT} --swarm {spec.swarm} --genesis {spec.genesis.hash}"
        )
        units["edge-swarm-broker.service"] = _unit(
            spec,
            f"edge-swarm broker of swarm {spec.swarm} (embedded, advertised on the LAN)",
            "network-online.target",
            [],
            argv,
        )
    return units


def _unit(spec: BundleSpec, description: str, after: str, extra: list[str], argv: str) -> str:
    p = spec.profile
    lines = [
        "# Written by edge-swarm bundle (profile " + p.name + ").",
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        f"After={after}",
        *extra,
        "",
        "[Service]",
        "Type=simple",
        f"User={p.systemd.user}",
        f"Group={p.systemd.user}",
        f"WorkingDirectory={p.paths.state_dir}",
        "Environment=PYTHONUNBUFFERED=1",
        f"ExecStart={argv}",
        f"Restart={p.systemd.restart}",
        f"RestartSec={p.systemd.restart_sec}",
        f"Nice={p.systemd.nice}",
        f"MemoryMax={p.memory_max}",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={p.paths.state_dir}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- install.sh

_INSTALL_SH = r"""#!/bin/sh
# edge-swarm @@ROLE@@ @@DEVICE@@ of swarm @@SWARM@@ (profile @@PROFILE@@): offline installer.
#
#   sudo sh install.sh                        install on this device
#   EDGE_SWARM_ROOT=/tmp/x sh install.sh      install under a prefix: every path (also in the
#                                             config and the units) moves under it, no user
#                                             is made and systemd is not touched
# Options: --root DIR (EDGE_SWARM_ROOT), --python PATH (EDGE_SWARM_PYTHON; default python3),
#          --no-systemd (do not install or enable the units).
# Needs Python @@PYTHON@@ with venv (Debian/Ubuntu: python3-venv); no network: pip reads
# only wheels/. Stdout carries only the enrolment request (JSON); progress goes to stderr.
# Running it again is safe: the venv, the device key and the request are kept; the package,
# the config and the units are brought to this bundle's.
set -eu

ROOT=${EDGE_SWARM_ROOT:-}
PYTHON=${EDGE_SWARM_PYTHON:-python3}
SYSTEMD=yes
while [ $# -gt 0 ]; do
  case $1 in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --no-systemd) SYSTEMD=no; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "install.sh: $*" >&2; }
die() { say "$*"; exit 1; }

case $ROOT in
  "") ;;
  /*[!A-Za-z0-9/._+-]*) die "the root prefix may hold only letters, digits and / . _ + -: $ROOT" ;;
  /*) ROOT=${ROOT%/} ;;
  *) die "the root prefix must be an absolute path: $ROOT" ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
INSTALL_DIR=$ROOT@@INSTALL_DIR@@
CONFIG_DIR=$ROOT@@CONFIG_DIR@@
STATE_DIR=$ROOT@@STATE_DIR@@
VENV=$INSTALL_DIR/venv
CONFIG=$CONFIG_DIR/@@ROLE@@.toml
KEY=$CONFIG_DIR/device.key
REQUEST=$CONFIG_DIR/enroll-request.json
SERVICE_USER=@@USER@@

# Every absolute path of a config or unit file, moved under the root prefix.
relocate() {
  if [ -n "$ROOT" ]; then
    sed -e "s#\"/#\"$ROOT/#g" -e "s#=/#=$ROOT/#g" -e "s# /# $ROOT/#g" "$1"
  else
    cat "$1"
  fi
}

# 1. The interpreter the wheels were chosen for.
have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
  die "$PYTHON not found: this bundle needs Python @@PYTHON@@"
[ "$have" = "@@PYTHON@@" ] ||
  die "$PYTHON is Python $have; this bundle's wheels are for @@PYTHON@@ \
(make one for $have: edge-swarm bundle --python $have)"

# 2. The wheels arrived whole.
if command -v sha256sum >/dev/null 2>&1; then
  if ! sums=$(cd "$HERE/wheels" && sha256sum -c SHA256SUMS 2>&1); then
    printf '%s\n' "$sums" | grep -v ': OK$' >&2
    die "wheels/ does not match wheels/SHA256SUMS: copy the bundle again"
  fi
fi

# 3. The venv and the packages, from wheels/ only: no index, and no pip.conf either
# (Raspberry Pi OS's names piwheels).
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIREMENT \
  PIP_TARGET PIP_PREFIX PIP_USER PIP_REQUIRE_VIRTUALENV
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the venv $VENV"
  mkdir -p "$INSTALL_DIR"
  "$PYTHON" -m venv @@VENV_FLAGS@@"$VENV" >&2 ||
    die "$PYTHON -m venv failed (Debian/Ubuntu: apt install python3-venv)"
fi
pip_install() {
  "$VENV/bin/python" -m pip install --no-index --find-links "$HERE/wheels" "$@" >&2 ||
    die "pip install $* failed"
}
pip_install --upgrade pip
pip_install "@@REQUIREMENT@@"
# A new bundle may carry new code under the same version number: take its wheel always.
pip_install --no-deps --force-reinstall "$HERE/wheels/@@WHEEL@@"
"$VENV/bin/edge-swarm" --help >/dev/null || die "the installed edge-swarm does not run"
@@ENGINE_CHECK@@
# 4. The config and the swarm's files.
mkdir -p "$CONFIG_DIR" "$STATE_DIR"@@DATA_DIR@@
rm -rf "$CONFIG_DIR/swarm.new"
cp -R "$HERE/swarm" "$CONFIG_DIR/swarm.new"
rm -rf "$CONFIG_DIR/swarm"
mv "$CONFIG_DIR/swarm.new" "$CONFIG_DIR/swarm"
relocate "$HERE/config/@@ROLE@@.toml" > "$CONFIG.new"
if [ -f "$CONFIG" ] && ! cmp -s "$CONFIG" "$CONFIG.new"; then
  cp "$CONFIG" "$CONFIG.bak"
  say "the config changed: the previous one is $CONFIG.bak"
fi
mv "$CONFIG.new" "$CONFIG"

# 5. The device's own keys (never overwritten) and its enrolment request.
if [ -e "$KEY" ]; then
  say "keeping the device key $KEY"
else
  out=$("$VENV/bin/edge-swarm" keygen --node-id @@DEVICE@@ --role @@ROLE@@ --key "$KEY") ||
    die "keygen failed"
  printf '%s\n' "$out" | tail -n 1 > "$REQUEST"
fi
[ -f "$REQUEST" ] || die "$KEY exists but $REQUEST does not: delete $KEY and $KEY.enc to start anew"

# 6. A system user owns the state and the keys (not under a prefix).
if [ -z "$ROOT" ] && [ "$(id -u)" = 0 ] && [ "$SERVICE_USER" != root ]; then
  if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
      "$SERVICE_USER" || die "cannot create the user $SERVICE_USER"
  fi
  chown -R "$SERVICE_USER:" "$STATE_DIR"
  chown "$SERVICE_USER:" "$KEY" "$KEY.enc"
fi

# 7. systemd: staged under a prefix, enabled on a device that runs it.
booted=no
if [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  booted=yes
fi
if [ "$SYSTEMD" = yes ] && { [ -n "$ROOT" ] || [ "$booted" = yes ]; }; then
  mkdir -p "$ROOT/etc/systemd/system"
  for unit in "$HERE"/systemd/*.service; do
    relocate "$unit" > "$ROOT/etc/systemd/system/${unit##*/}"
  done
fi
if [ "$SYSTEMD" = yes ] && [ "$booted" = yes ]; then
  systemctl daemon-reload
  systemctl enable @@UNITS@@ >&2
  systemctl restart @@UNITS@@ >&2
  say "enabled and started @@UNITS@@"
else
  say "systemd not used; run the @@ROLE@@ with:"
  say "  $VENV/bin/edge-swarm @@ROLE@@ --config $CONFIG"
fi
@@DATA_NOTE@@
say "enrolment request (also in $REQUEST); give it to the operator, who runs"
say "  edge-swarm enroll --admin-key admin.key --swarm @@SWARM@@ \
--request enroll-request.json --broker HOST:PORT"@@GATEWAY_NOTE@@
cat "$REQUEST"
"""

_ENGINE_CHECK = """\
"$VENV/bin/python" -c "import onnxruntime" 2>/dev/null ||
  say "warning: the profile runs onnxruntime, which this Python cannot import: install the \\
image's onnxruntime-gpu system-wide (the venv sees it), or set [runtime] engine in $CONFIG"
"""

_DATA_NOTE = """\
if [ -z "$(ls -A "$STATE_DIR/data" 2>/dev/null)" ]; then
  say "put this device's training data (.npz or .csv files) in $STATE_DIR/data; the service \\
starts once it is there"
fi"""

_GATEWAY_NOTE = """
say "(a gateway's own enrolment goes into the bootstrap before the site's first start: enroll \\
--bootstrap, then copy the file to $CONFIG_DIR/swarm/bootstrap.jsonl)\""""


def install_script(spec: BundleSpec, wheel: str) -> str:
    """install.sh for this bundle; ``wheel`` is edge-swarm's wheel file name in wheels/."""
    p = spec.profile
    agent = spec.role == "agent"
    extras = ",".join(p.extras)
    onnx_elsewhere = p.runtime.engine == "onnxruntime" and "serve" not in p.extras
    values = {
        "ROLE": spec.role,
        "DEVICE": spec.device_id,
        "SWARM": spec.swarm,
        "PROFILE": p.name,
        "PYTHON": p.python,
        "INSTALL_DIR": p.paths.install_dir,
        "CONFIG_DIR": p.paths.config_dir,
        "STATE_DIR": p.paths.state_dir,
        "USER": p.systemd.user,
        "WHEEL": wheel,
        "REQUIREMENT": f"edge-swarm[{extras}]" if extras else "edge-swarm",
        "VENV_FLAGS": "--system-site-packages " if p.system_site_packages else "",
        "UNITS": " ".join(unit_names(spec)),
        "DATA_DIR": ' "$STATE_DIR/data"' if agent else "",
        "ENGINE_CHECK": _ENGINE_CHECK if onnx_elsewhere else "",
        "DATA_NOTE": _DATA_NOTE if agent else "",
        "GATEWAY_NOTE": "" if agent else _GATEWAY_NOTE,
    }
    text = _INSTALL_SH
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    assert "@@" not in text, "an install.sh placeholder was left"
    return text


# --------------------------------------------------------------------------- cloud-init

BOOT_DIRS = ("/boot/firmware/edge-swarm", "/boot/edge-swarm")


def cloud_init(spec: BundleSpec) -> str:
    """A #cloud-config that installs the bundle from the boot partition at first boot."""
    units = unit_names(spec)
    return f"""#cloud-config
# edge-swarm {spec.role} {spec.device_id} of swarm {spec.swarm} (profile {spec.profile.name}),
# installed offline at first boot.
#
# Copy the whole bundle directory to the boot partition as "edge-swarm/", and this file over
# the partition's "user-data" (cloud-init's NoCloud seed):
#   Raspberry Pi OS images with cloud-init (Trixie and later; Imager 2) and Ubuntu for
#   Raspberry Pi: the FAT partition, mounted at /boot/firmware -> {BOOT_DIRS[0]}/
#   Jetson (JetPack 6, Ubuntu 22.04): no FAT partition; copy it to {BOOT_DIRS[1]}/ on the
#   root file system and give this file to cloud-init's NoCloud datasource.
#   Raspberry Pi OS Bookworm has no cloud-init: run `sudo sh install.sh` from the bundle.
# The enrolment request appears on the console (/var/log/cloud-init-output.log) and is
# copied next to the bundle as enroll-request.json, so that it can be read off the card.
write_files:
  - path: /usr/local/sbin/edge-swarm-firstboot
    permissions: "0755"
    owner: root:root
    content: |
      #!/bin/sh
      set -eu
      for dir in {" ".join(BOOT_DIRS)}; do
        if [ -f "$dir/install.sh" ]; then
          sh "$dir/install.sh"
          cp {spec.profile.paths.config_dir}/enroll-request.json "$dir/" 2>/dev/null || true
          exit 0
        fi
      done
      echo "edge-swarm: no bundle in {" or ".join(BOOT_DIRS)}" >&2
      exit 1
runcmd:
  - [/usr/local/sbin/edge-swarm-firstboot]
  - [systemctl, enable, --now, {", ".join(units)}]
"""


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
