"""An emulated arm64 device for tests and benchmarks: a Debian 12 (bookworm) arm64 root, built
once with debootstrap and cached, in which commands run as aarch64 code under qemu-user.

    require_arm()                          # skip, or fail with EDGE_SWARM_REQUIRE_ARM=1 (CI)
    base = cached_root().path              # built once (3-6 minutes), then reused
    with Device(base, tmp_path / "pi") as pi:   # a fresh device; the base is never written
        pi.copy_in(bundle, "/boot/firmware/edge-swarm")
        pi.run(["sh", "/boot/firmware/edge-swarm/install.sh"], network=False)
        proc = pi.popen([...], log=...)    # shares the host's loopback: 127.0.0.1 is the host

How it works:
- The root is ``debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,
  systemd bookworm`` (Python 3.11, the Python of Raspberry Pi OS bookworm) from Debian's
  registry; systemd is there but never runs (nothing boots), as in an image being made. It
  is built in a scratch directory and renamed into place with a stamp file last, so that an
  interrupted build is never taken for a root; a lock file keeps two builds from racing. It
  lives in ``$EDGE_SWARM_CACHE/arm64/bookworm`` (default ``~/.cache/edge-swarm``), outside
  the checkout, where CI's cache and later runs find it.
- The kernel runs aarch64 binaries through binfmt_misc's ``qemu-aarch64`` entry (Debian's
  qemu-user-static registers it with the F flag: the emulator is opened once at
  registration, so the root needs no copy of it).
- A device is an overlay mount: the cached root as its read-only lower layer and the
  device's own upper directory for everything it writes (the venv, keys, state), so each
  test starts from the same clean image and the cache never changes. Each command runs in a
  mount namespace of its own (``unshare --mount``) that mounts /proc and /dev into the
  overlay and chroots: those mounts end with the command, however it ends. ``network=False``
  adds a network namespace of its own with only loopback up: no route to any registry.
- /sys is not mounted: TFLite's CPU probe (cpuinfo) would read the host's x86 CPUs there and
  in /proc/cpuinfo (qemu 7.2 passes the host's through) and crash the emulated process.
  Without it cpuinfo says "Error in cpuinfo: failed to parse ..." and TFLite runs on, as it
  does on a board whose /sys it cannot read.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

REQUIRE_ENV = "EDGE_SWARM_REQUIRE_ARM"
CACHE_ENV = "EDGE_SWARM_CACHE"
SUITE = "bookworm"
MIRROR_ENV = "EDGE_SWARM_DEBIAN_MIRROR"
MIRROR = "http://deb.debian.org/debian"
# The root plus systemd, which Raspberry Pi OS and JetPack both run: install.sh then
# enables the bundle's unit as it would in an SD card's image, and systemd checks the unit.
PACKAGES = ("python3", "python3-venv", "systemd")
STAMP = ".edge-swarm-root.json"  # written last: a root without it is an interrupted build
BUILD_TIMEOUT_S = 3600.0  # debootstrap's second stage runs emulated: minutes, more when loaded
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("debootstrap", "unshare", "chroot", "mount", "umount", "ip")


def cache_dir() -> Path:
    """Where the root and the wheels are kept between runs."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edge-swarm"
    return Path(base)


def arm_missing() -> str | None:
    """Why this machine cannot run the emulated device, with what to do; None if it can."""
    if os.geteuid() != 0:
        return "the arm64 tests need root (chroot, mounts, network namespaces)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (
            f"missing {', '.join(missing)}: apt-get install qemu-user-static binfmt-support "
            "debootstrap iproute2"
        )
    if not BINFMT.exists():
        return (
            "the kernel runs no aarch64 binaries: apt-get install qemu-user-static "
            "binfmt-support, then `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` "
            "(if not mounted) and `update-binfmts --enable qemu-aarch64`"
        )
    if BINFMT.read_text().splitlines()[0].strip() != "enabled":
        return "binfmt_misc's qemu-aarch64 entry is disabled: update-binfmts --enable qemu-aarch64"
    return None


def require_arm() -> None:
    """Skip the calling test where the emulated device cannot run, saying what to install;
    with EDGE_SWARM_REQUIRE_ARM=1 (CI) fail instead."""
    why = arm_missing()
    if why is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}")
    pytest.skip(why)


# --------------------------------------------------------------------------- the root


@dataclass(frozen=True)
class RootInfo:
    """What the stamp of a cached root says."""

    path: Path
    suite: str
    packages: tuple[str, ...]
    build_s: float
    built: str
    reused: bool  # found in the cache by this call, not built by it


def cached_root(cache: Path | None = None, rebuild: bool = False) -> RootInfo:
    """The cached arm64 root, built first if there is none or ``rebuild`` asks (RuntimeError
    if debootstrap fails, with its last lines)."""
    cache = (cache or cache_dir()) / "arm64"
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / SUITE
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first's build
        if (root / STAMP).is_file() and not rebuild:
            info = _info(root, reused=True)
            if info.packages == PACKAGES:
                return info  # else a root made by an older harness: built again
        scratch = cache / f".{SUITE}.build"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)  # a root without a stamp is half-built
        t0 = time.monotonic()
        mirror = os.environ.get(MIRROR_ENV, MIRROR)
        cmd = [
            "debootstrap", "--arch=arm64", "--variant=minbase",
            f"--include={','.join(PACKAGES)}", SUITE, str(scratch), mirror,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise RuntimeError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")
        stamp = {
            "suite": SUITE,
            "packages": list(PACKAGES),
            "build_s": round(time.monotonic() - t0, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mirror": mirror,
        }
        (scratch / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        scratch.rename(root)
        return _info(root, reused=False)


def _info(root: Path, reused: bool) -> RootInfo:
    raw = json.loads((root / STAMP).read_text())
    return RootInfo(
        root, raw["suite"], tuple(raw["packages"]), float(raw["build_s"]), raw["built"], reused
    )


# --------------------------------------------------------------------------- a device


@dataclass
class Device:
    """One emulated aarch64 device: an overlay of the cached root under ``workdir``.

    Use it as a context manager; the overlay is mounted on entry and unmounted on exit.
    Paths given to ``path``, ``copy_in`` and the commands are the device's own (absolute).
    """

    base: Path
    workdir: Path
    _mounted: bool = field(default=False, repr=False)

    @property
    def root(self) -> Path:
        """The device's file system as the host sees it (the overlay's mount point)."""
        return self.workdir / "merged"

    def __enter__(self) -> Device:
        for d in ("upper", "work", "merged"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        w = self.workdir
        opts = f"lowerdir={self.base},upperdir={w / 'upper'},workdir={w / 'work'}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self._mounted = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._mounted:
            # lazily, should a straggler still hold a file there: it goes once that ends
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True, timeout=30)
            self._mounted = False

    def path(self, device_path: str | os.PathLike[str]) -> Path:
        """The host's path to a file of the device."""
        return self.root / str(device_path).lstrip("/")

    def copy_in(self, src: Path, device_path: str) -> Path:
        """Copy a file or directory from the host to ``device_path``; returns the host path."""
        dest = self.path(device_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
        return dest

    def user_ids(self, user: str) -> tuple[int, int]:
        """(uid, gid) of a user of the device (from its /etc/passwd); KeyError if none."""
        for line in self.path("/etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if parts[0] == user:
                return int(parts[2]), int(parts[3])
        raise KeyError(f"no user {user} on the device")

    def argv(
        self,
        argv: Sequence[str],
        *,
        network: bool = True,
        user: str | None = None,
        cwd: str = "/",
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The host command that runs ``argv`` on the device. ``network=False``: in a network
        namespace of its own, with only loopback. ``user``: as that user of the device, as a
        systemd unit's User= does. ``env``: the whole environment (PATH is the device's)."""
        root = str(self.root)
        setup = [
            f"mount -t proc proc {root}/proc",
            f"mount --rbind /dev {root}/dev",
            *([] if network else ["ip link set lo up"]),
        ]
        chroot = ["chroot"]
        if user is not None:
            uid, gid = self.user_ids(user)
            chroot.append(f"--userspec={uid}:{gid}")
        environment = {"PATH": DEVICE_PATH, "LANG": "C.UTF-8", **(env or {})}
        inner = [
            *chroot, root, "/usr/bin/env", "-i", f"--chdir={cwd}",
            *(f"{k}={v}" for k, v in environment.items()), *argv,
        ]  # fmt: skip
        unshare = ["unshare", "--mount", "--propagation", "private"]
        if not network:
            unshare.append("--net")
        script = " && ".join(setup) + ' && exec "$@"'
        return [*unshare, "sh", "-c", script, "sh", *inner]

    def run(
        self, argv: Sequence[str], *, timeout: float, input: str | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the device to its end; its output captured as text."""
        return subprocess.run(
            self.argv(argv, **kw),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, argv: Sequence[str], log: IO[bytes], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` on the device in a session of its own; output to ``log``."""
        return subprocess.Popen(
            self.argv(argv, **kw),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.arm_root [--rebuild]``: build the cached root (``make arm-root``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.arm_root", description=__doc__)
    parser.add_argument("--rebuild", action="store_true", help="build it again from Debian's")
    args = parser.parse_args(argv)
    why = arm_missing()
    if why is not None:
        print(f"cannot run an arm64 device here: {why}", file=sys.stderr)
        return 1
    info = cached_root(rebuild=args.rebuild)
    how = "reused" if info.reused else "built"
    print(f"{how} {info.path} (Debian {info.suite} arm64, built {info.built} in {info.build_s} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
