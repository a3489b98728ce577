"""The installers of a bundle: ``install.sh`` and the cloud-init ``user-data`` that runs it
from the boot partition at first boot.

``install.sh`` is POSIX sh: a venv, ``pip install --no-index`` from ``wheels/``, the config,
the device key and enrolment request, and the systemd units. ``EDGE_SWARM_ROOT=/prefix sh
install.sh`` installs under a prefix: its ``relocate`` rewrites every absolute path in the
config (``"/...``) and the units (``=/...`` and `` /...``), which is why profile paths may
hold no spaces. The template's ``@@NAME@@`` placeholders are all filled by ``install_script``.
"""

from __future__ import annotations

import re

from edge_swarm.site.bundle_spec import BundleSpec
from edge_swarm.site.bundle_units import pycache_dir, unit_names

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
# What this script writes is read by the service's user (the keys are made 0600 on their
# own): an operator's restrictive umask must not leave the config or the venv unreadable.
umask 022

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
MACHINE_PY='
import platform, struct
m, bits = platform.machine(), 8 * struct.calcsize("P")
print({("aarch64", 32): "armv8l", ("x86_64", 32): "i686"}.get((m, bits), m))'

# Every absolute path of a config or unit file, moved under the root prefix.
relocate() {
  if [ -n "$ROOT" ]; then
    sed -e "s#\"/#\"$ROOT/#g" -e "s#=/#=$ROOT/#g" -e "s# /# $ROOT/#g" "$1"
  else
    cat "$1"
  fi
}

# 1. The interpreter and the machine the wheels were chosen for. The machine is the one pip
# sees: a 32-bit userland on a 64-bit ARM kernel (uname says aarch64) takes no aarch64 wheel.
have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
  die "$PYTHON not found: this bundle needs Python @@PYTHON@@"
[ "$have" = "@@PYTHON@@" ] ||
  die "$PYTHON is Python $have; this bundle's wheels are for @@PYTHON@@ \
(make one for $have: edge-swarm bundle --python $have)"
machine=$("$PYTHON" -c "$MACHINE_PY") || die "$PYTHON cannot tell its machine"
if [ "$machine" != @@MACHINE@@ ]; then
  case $machine in
    armv*) die "this device runs a 32-bit system ($machine); the bundle's wheels are for \
@@MACHINE@@ (profile @@PROFILE@@), and PyPI has no 32-bit ARM wheels of numpy or \
cryptography: install the 64-bit image (Raspberry Pi OS 64-bit), then run this again" ;;
    *) die "this device is $machine; the bundle's wheels are for @@MACHINE@@ (profile \
@@PROFILE@@): make one with a profile for $machine (edge-swarm bundle --profile ..., \
see firmware_configs/)" ;;
  esac
fi

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
# Public files (genesis, CA, backbone) keep the modes they had on the operator's machine,
# where a private temporary directory would make them unreadable to the service's user.
chmod -R u+rwX,go+rX,go-w "$CONFIG_DIR/swarm.new"
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
  # keygen prints the request alone on stdout; its words (stderr) matter only if it fails
  "$VENV/bin/edge-swarm" keygen --node-id @@DEVICE@@ --role @@ROLE@@ --key "$KEY" \
    > "$REQUEST.new" 2> "$REQUEST.err" || { cat "$REQUEST.err" >&2; die "keygen failed"; }
  mv "$REQUEST.new" "$REQUEST"
  rm -f "$REQUEST.err"
fi
[ -f "$REQUEST" ] || die "$KEY exists but $REQUEST does not: delete $KEY and $KEY.enc to start anew"

@@BYTECODE@@# 6. A system user owns the state and the keys (not under a prefix).
if [ -z "$ROOT" ] && [ "$(id -u)" = 0 ] && [ "$SERVICE_USER" != root ]; then
  if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
      "$SERVICE_USER" || die "cannot create the user $SERVICE_USER"
  fi
  chown -R "$SERVICE_USER:" "$STATE_DIR"
  chown "$SERVICE_USER:" "$KEY" "$KEY.enc"
fi

@@TIME@@# 8. systemd: staged under a prefix; enabled and started on a device that runs it;
# enabled only on a system that has systemd but does not run it, such as an SD card's image
# being prepared in a chroot: `systemctl enable` works offline there, and the units start
# at the card's first boot.
booted=no
installed=no
if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then
  installed=yes
  [ -d /run/systemd/system ] && booted=yes
fi
if [ "$SYSTEMD" = yes ] && { [ -n "$ROOT" ] || [ "$installed" = yes ]; }; then
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
elif [ "$SYSTEMD" = yes ] && [ "$installed" = yes ]; then
  systemctl enable @@UNITS@@ >&2 || die "systemctl enable @@UNITS@@ failed"
  say "systemd is not running here (a chroot?): enabled @@UNITS@@, which start at boot"
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

# Step 7: the site's time, before the node starts (its unit is After=time-sync.target).
_TIME = """\
# 7. Time: @@WHAT@@ (a Pi has no hardware clock, a clinic LAN often
# no internet time). Only where chrony (Debian's) is installed; never a reason to fail.
CHRONY_CONF=$ROOT/etc/chrony/conf.d/edge-swarm.conf
if [ -n "$ROOT" ] || command -v chronyd >/dev/null 2>&1 || [ -x /usr/sbin/chronyd ]; then
  if mkdir -p "${CHRONY_CONF%/*}" 2>/dev/null && cat > "$CHRONY_CONF" <<'EDGE_SWARM_CHRONY'
@@CONF@@EDGE_SWARM_CHRONY
  then
    say "chrony: wrote $CHRONY_CONF (@@WHAT@@)"
    if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
      systemctl try-restart chrony.service >/dev/null 2>&1 ||
        say "warning: chrony did not restart; it reads $CHRONY_CONF when it next starts"
    fi
  else
    say "warning: cannot write $CHRONY_CONF; this device's time is not set up"
  fi
else
  say "chrony is not installed: to @@WHAT@@, install Debian's chrony package and run \\
this script again (edge-swarm itself does not rely on this device's clock)"
fi
"""
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")  # a name or an address, nothing else
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def chrony_conf(spec: BundleSpec) -> tuple[str, str] | None:
    """(what it does, chrony.conf lines) for the device's time, or None when there is nothing
    to set up: a gateway whose profile serves time serves it to the profile's networks; an
    agent takes it from the site's gateway, which its bundle's broker address names."""
    head = "# Written by edge-swarm's install.sh (profile " + spec.profile.name + ").\n"
    time = spec.profile.time
    if spec.role == "gateway":
        if not time.serve:
            return None
        allow = "".join(f"allow {net}\n" for net in time.allow)
        # Without internet time the gateway's own clock is the site's (stratum 10: any real
        # source a client also sees wins over it).
        return "serve the site's time on the LAN", head + "local stratum 10\n" + allow
    host = spec.broker[0] if spec.broker is not None else None
    if host is None or host in _LOOPBACK or not _HOST.fullmatch(host):
        return None  # no gateway address known (discovery): the device keeps its clock
    return f"take the time from the gateway {host}", head + f"server {host} iburst\n"


def time_setup(spec: BundleSpec) -> str:
    """Step 7 of install.sh for ``spec`` ("" when it has no time to set up)."""
    conf = chrony_conf(spec)
    host = spec.broker[0] if spec.broker is not None else None
    if conf is None and spec.role == "agent" and host in _LOOPBACK:
        # The site's broker on the device itself (a test site, a single-box install): there
        # is no gateway on the LAN to name, and saying "no --broker" would be wrong.
        return f'say "time: the broker ({host}) is this device itself: its clock is the site\'s"\n'
    if conf is None and spec.role == "agent":
        return (
            'say "time: this bundle names no gateway (--broker): to take the time from it, put '
            '\\"server GATEWAY iburst\\" in /etc/chrony/conf.d/edge-swarm.conf"\n'
        )
    if conf is None:
        return ""
    return _TIME.replace("@@WHAT@@", conf[0]).replace("@@CONF@@", conf[1])


_GATEWAY_NOTE = """
say "(a gateway's own enrolment goes into the bootstrap before the site's first start: enroll \\
--bootstrap, then copy the file to $CONFIG_DIR/swarm/bootstrap.jsonl)\""""


# The agent's unit runs Python with -OO and a bytecode cache of its own (runtime_env.py):
# filled here once, so that its first start does not compile ~400 modules (seconds on a Pi).
_BYTECODE = """# 5b. The agent's bytecode, as its unit runs it (-OO, cached in the state directory).
if [ -z "$ROOT" ]; then
  PYTHONOPTIMIZE=2 PYTHONPYCACHEPREFIX=@@PYCACHE@@ "$VENV/bin/python" -c \\
    "import edge_swarm.cli.main, edge_swarm.node.agent" ||
    say "could not compile the agent's bytecode now; it compiles at its first start"
fi
"""


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
        "MACHINE": p.machine,
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
        "TIME": time_setup(spec),
        "BYTECODE": _BYTECODE.replace("@@PYCACHE@@", pycache_dir(spec)) if agent else "",
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
