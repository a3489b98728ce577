"""``edge-swarm bundle``: build one device's offline installer (see ``edge_swarm.site.bundle``).

This is the I/O side: it reads the project's requirements from pyproject.toml, builds
edge-swarm's own wheel, has pip download every dependency for the device's platform and
Python, and assembles the directory. Bad inputs exit 2 with a message naming the argument,
field or file; a pip failure exits 1.

Dependencies are resolved for the *target*: the project's requirement markers are evaluated
here with the profile's machine and Python, because pip evaluates ``python_version`` for the
target but ``platform_machine`` for the machine it runs on. A dependency published only as a
source distribution (pysyncobj) is built here into a wheel, which must be pure Python.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on Jetson images
    import tomli as tomllib

if TYPE_CHECKING:  # the CLI builds its parser on every run: the rest loads when it runs
    from edge_swarm.site.bundle import BundleSpec
    from edge_swarm.site.profiles import DeviceProfile

log = logging.getLogger(__name__)

PIP_TIMEOUT_S = 900.0  # one pip run: a cold download of onnxruntime on a slow link
MAX_SDIST_BUILDS = 8  # dependencies without any wheel, built here (pure Python only)
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


class WheelError(RuntimeError):
    """pip could not build or download the wheels; the message has pip's last lines."""


# --------------------------------------------------------------------------- the command


def add_parser(sub: Any) -> None:
    """Register ``edge-swarm bundle`` on the CLI's subparsers."""
    b = sub.add_parser(
        "bundle",
        help="build a device's offline installer: wheels, config, keygen, systemd, cloud-init",
        description="Write a directory that installs an edge-swarm node on one device with no "
        "network: copy it over, run `sudo sh install.sh`, give the operator the enrolment "
        "request it prints.",
    )
    b.add_argument(
        "--profile",
        required=True,
        help="a device profile: a name from firmware_configs/ (rpi4, rpi5, jetson-orin-nano, "
        "x86-agent, x86-gateway) or a .toml file",
    )
    b.add_argument("--swarm", required=True, help="the swarm's id (must be the genesis's)")
    b.add_argument("--device-id", required=True, help="the device's node id, e.g. pi-ward3-01")
    b.add_argument("--out", type=Path, required=True, help="the bundle directory to create")
    b.add_argument(
        "--bootstrap",
        type=Path,
        required=True,
        help="the site's bootstrap.jsonl: its genesis pins the swarm on the device",
    )
    b.add_argument("--ca", type=Path, help="the broker's CA certificate (TLS)")
    b.add_argument(
        "--broker", help="HOST:PORT of the broker (default: found on the LAN by zeroconf)"
    )
    b.add_argument("--backbone", type=Path, help="the swarm's backbone directory")
    b.add_argument(
        "--wheelhouse",
        type=Path,
        help="a local wheel cache: used first without network, filled from the index",
    )
    b.add_argument("--python", help="the device's Python when it is not the profile's, e.g. 3.13")
    b.set_defaults(func=run_bundle)


def run_bundle(args: argparse.Namespace) -> int:
    from edge_swarm.site.bundle import BundleError, BundleSpec, parse_broker, read_bootstrap
    from edge_swarm.site.profiles import ProfileError, load_profile

    try:
        profile = with_python(load_profile(args.profile), args.python)
        genesis, lines = read_bootstrap(args.bootstrap)
        spec = BundleSpec(
            profile=profile,
            swarm=args.swarm,
            device_id=args.device_id,
            genesis=genesis,
            bootstrap_lines=lines,
            broker=parse_broker(args.broker) if args.broker else None,
            ca=args.ca,
            backbone=args.backbone,
        )
        info = build_bundle(spec, args.out, args.wheelhouse)
    except (BundleError, ProfileError) as exc:
        print(f"edge-swarm bundle: {exc}", file=sys.stderr)
        return 2
    except (WheelError, OSError) as exc:
        print(f"edge-swarm bundle: {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(
        f"bundle for {spec.role} {spec.device_id} (profile {profile.name}, Python "
        f"{profile.python}, {profile.machine}): {args.out}, {len(info['wheels'])} wheels, "
        f"{size / 2**20:.1f} MiB\non the device: sudo sh {args.out.name}/install.sh"
    )
    return 0


# --------------------------------------------------------------------------- the build


def build_bundle(
    spec: BundleSpec, out: Path, wheelhouse: Path | None = None, project: Project | None = None
) -> dict[str, Any]:
    """Write the bundle directory ``out`` (absent, or empty); returns the manifest.

    It is assembled in a scratch directory beside ``out`` and renamed into place, so a
    failed build leaves nothing behind. Raises BundleError for bad inputs, WheelError when
    pip fails or a wheel would not install on the device.
    """
    from edge_swarm.site.bundle import BundleError, write_files

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"--out {out} exists and is not empty: choose a new directory")
    project = project or read_project(project_root())
    requirements = target_requirements(project, spec.profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        wheels_dir = scratch / "wheels"
        own = build_project_wheel(project, wheels_dir, wheelhouse)
        fetch_wheels([*requirements, "pip"], spec.profile, wheels_dir, wheelhouse)
        wheels = {w.name: _sha256(w) for w in sorted(wheels_dir.glob("*.whl"))}
        unfit = [w for w in wheels if not fits(w, spec.profile)]
        if unfit:
            raise WheelError(f"wheels that would not install on {spec.profile.name}: {unfit}")
        sums = "".join(f"{sha}  {name}\n" for name, sha in wheels.items())
        (wheels_dir / "SHA256SUMS").write_text(sums)
        write_files(scratch, spec, own.name)
        info = manifest(spec, wheels, project.version)
        (scratch / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        scratch.rename(out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return info


def manifest(spec: BundleSpec, wheels: dict[str, str], version: str) -> dict[str, Any]:
    """What the bundle holds; ``wheels`` maps file name -> sha256."""
    p = spec.profile
    return {
        "format": 1,
        "profile": p.name,
        "role": spec.role,
        "swarm": spec.swarm,
        "device_id": spec.device_id,
        "genesis_hash": spec.genesis.hash,
        "edge_swarm": version,
        "python": p.python,
        "platform": list(p.platform),
        "extras": list(p.extras),
        "broker": f"{spec.broker[0]}:{spec.broker[1]}" if spec.broker else None,
        "memory_budget_mib": p.memory_budget_mib,
        # Local training is fixed by the genesis for every device; the profile's batch size
        # is recorded for the operator, not applied (NodeConfig has no such setting).
        "training": {"batch_size": p.batch_size},
        "paths": {
            "install_dir": p.paths.install_dir,
            "state_dir": p.paths.state_dir,
            "config_dir": p.paths.config_dir,
        },
        "created": spec.created,
        "wheels": [{"file": name, "sha256": sha} for name, sha in sorted(wheels.items())],
    }


def with_python(profile: DeviceProfile, python: str | None) -> DeviceProfile:
    """The profile for a device whose Python differs from the profile's (``--python``)."""
    from edge_swarm.site.bundle import BundleError

    if python is None or python == profile.python:
        return profile
    if not re.fullmatch(r"3\.\d{1,2}", python) or int(python.split(".")[1]) < 10:
        raise BundleError(f"--python takes a version like 3.12 (3.10 or later), got {python!r}")
    return replace(profile, python=python)


@dataclass(frozen=True)
class Project:
    """What pyproject.toml says about the package being bundled."""

    root: Path
    name: str
    version: str
    dependencies: tuple[str, ...]
    extras: dict[str, tuple[str, ...]]
    packages: tuple[str, ...]  # [tool.setuptools.packages.find] include patterns


def project_root() -> Path:
    """The source checkout holding this package (the parent of ``edge_swarm/``)."""
    return Path(__file__).resolve().parents[2]


def read_project(root: Path) -> Project:
    from edge_swarm.site.bundle import BundleError

    path = root / "pyproject.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        proj = raw["project"]
        find = raw.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
        return Project(
            root=root,
            name=proj["name"],
            version=proj["version"],
            dependencies=tuple(proj.get("dependencies", [])),
            extras={k: tuple(v) for k, v in proj.get("optional-dependencies", {}).items()},
            packages=tuple(find.get("include", ["edge_swarm*"])),
        )
    except FileNotFoundError:
        raise BundleError(f"no {path}: bundles are built from a source checkout") from None
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise BundleError(f"{path}: cannot read the project: {exc}") from None


def target_requirements(project: Project, profile: DeviceProfile) -> list[str]:
    """The requirements the device needs (core + the profile's extras), markers evaluated
    for the device's machine and Python and then dropped. BundleError for an unknown extra."""
    from edge_swarm.site.bundle import BundleError

    Requirement, canonical = _packaging()
    for extra in profile.extras:
        if extra not in project.extras:
            raise BundleError(
                f"{profile.name}.toml: extras: {extra!r} is not an extra of {project.name} "
                f"(known: {sorted(project.extras)})"
            )
    env = _marker_env(profile)
    out: list[str] = []
    seen: set[str] = set()
    todo, pending = list(project.dependencies), list(profile.extras)
    while todo or pending:
        if not todo:
            extra = pending.pop(0)
            if extra not in seen:
                seen.add(extra)
                todo.extend(project.extras.get(extra, ()))
            continue
        req = Requirement(todo.pop(0))
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        if canonical(req.name) == canonical(project.name):  # "edge-swarm[broker,...]"
            pending.extend(sorted(req.extras))
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        text = f"{req.name}{extras}{req.specifier}"
        if text not in out:
            out.append(text)
    return out


def _packaging() -> tuple[Any, Callable[[str], str]]:
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # an operator's environment without packaging: pip carries a copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
        from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    return Requirement, canonicalize_name


def _marker_env(profile: DeviceProfile) -> dict[str, str]:
    full = f"{profile.python}.0"
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": profile.machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": full,
        "python_version": profile.python,
        "sys_platform": "linux",
    }


# --------------------------------------------------------------------------- pip


def build_project_wheel(project: Project, dest: Path, wheelhouse: Path | None) -> Path:
    """Build edge-swarm's own wheel into ``dest`` from a copy of its sources (the checkout
    gets no build/ or egg-info from this); returns the wheel's path."""
    with tempfile.TemporaryDirectory(prefix="es-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for item in project.root.iterdir():
            if item.is_file() and (
                item.name == "pyproject.toml" or item.name.startswith(("README", "LICENSE"))
            ):
                shutil.copy2(item, src / item.name)
            elif item.is_dir() and any(fnmatch.fnmatch(item.name, p) for p in project.packages):
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
                shutil.copytree(item, src / item.name, ignore=ignore)
        out = Path(tmp) / "out"
        links = ["--find-links", str(wheelhouse)] if wheelhouse else []
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", *links, "-w", str(out), str(src)]
        try:
            _pip(cmd)
        except WheelError:  # offline with no setuptools to fetch: use this environment's
            _pip([*cmd[:5], "--no-build-isolation", *cmd[5:]])
        (wheel,) = out.glob("*.whl")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheel, dest / wheel.name))


def fetch_wheels(
    requirements: list[str], profile: DeviceProfile, dest: Path, wheelhouse: Path | None
) -> None:
    """Download wheels of ``requirements`` and all their dependencies for the profile's
    platform and Python into ``dest``.

    With ``wheelhouse`` (a local cache) it first tries the cache alone, with no network;
    failing that it uses the index as well and copies what it fetched into the cache. A
    dependency with no wheel at all is built here if it is pure Python. Raises WheelError.
    """
    base = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--implementation", "cp",
        "--python-version", profile.python, "--progress-bar", "off", "--dest", str(dest),
    ]  # fmt: skip
    for tag in profile.pip_platforms:
        base += ["--platform", tag]
    dest.mkdir(parents=True, exist_ok=True)
    if wheelhouse is not None and wheelhouse.is_dir():
        try:
            _pip([*base, "--no-index", "--find-links", str(wheelhouse), *requirements])
            return
        except WheelError:
            log.info("the wheelhouse lacks some wheels: using the index too")
    with tempfile.TemporaryDirectory(prefix="es-sdist-") as built:
        links = ["--find-links", built]
        if wheelhouse is not None:
            links += ["--find-links", str(wheelhouse)]
        for _ in range(MAX_SDIST_BUILDS + 1):
            try:
                _pip([*base, *links, *requirements])
                break
            except WheelError as exc:
                missing = _NO_MATCH.search(str(exc))
                if missing is None:
                    raise
                _build_pure_wheel(missing.group(1), Path(built), wheelhouse, profile)
        else:
            raise WheelError(f"more than {MAX_SDIST_BUILDS} dependencies have no wheel")
    if wheelhouse is not None:
        wheelhouse.mkdir(parents=True, exist_ok=True)
        for whl in dest.glob("*.whl"):
            if not (wheelhouse / whl.name).exists():
                shutil.copy2(whl, wheelhouse / whl.name)


def _build_pure_wheel(
    requirement: str, out: Path, wheelhouse: Path | None, profile: DeviceProfile
) -> None:
    """A wheel for a dependency published only as an sdist; it must be pure Python, as it
    is built on this machine and not on the device. WheelError saying what to do when the
    index has no wheel of it for the device and it is not pure Python."""
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    stem = re.sub(r"[-_.]+", "_", name).lower() + "-"
    if any(w.name.lower().startswith(stem) for w in out.glob("*.whl")):
        raise WheelError(f"{requirement}: built a wheel, but pip still finds none that fits")
    log.info("%s has no wheel on the index: building one here", requirement)
    links = ["--find-links", str(wheelhouse)] if wheelhouse else []
    try:
        _pip(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", *links, "-w", str(out), requirement]
        )
    except WheelError as exc:
        raise WheelError(
            f"{requirement}: no wheel fits the device, and none builds here: {exc}"
        ) from None
    for whl in out.glob("*.whl"):
        if not whl.name.endswith("-none-any.whl"):  # pip fetched this machine's wheel
            whl.unlink()
            raise WheelError(_no_wheel(name, profile))


# The runtimes a profile's engine needs, and the extra that brings each (pyproject.toml).
_RUNTIME_EXTRAS = {"ai-edge-litert": ("tflite", "tflite"), "onnxruntime": ("onnxruntime", "serve")}


def _no_wheel(name: str, profile: DeviceProfile) -> str:
    """What to do when PyPI has no wheel of ``name`` for the profile's Python and platform."""
    where = f"Python {profile.python} on {', '.join(profile.platform)}"
    text = f"{name} has no wheel for {where} (profile {profile.name}) and is not pure Python"
    runtime = _RUNTIME_EXTRAS.get(name.lower().replace("_", "-"))
    if runtime is not None:
        engine, extra = runtime
        return (
            f"{text}: the {engine} runtime does not install on that device. Use another "
            f"Python (--python 3.10 to 3.13 have {name} wheels for x86_64 and aarch64 with "
            f'glibc 2.27 or later), or a profile without the "{extra}" extra whose [runtime] '
            'engine is "numpy" (every device runs it)'
        )
    return (
        f"{text}: use the Python of an image PyPI has wheels for (--python), or check the "
        f"profile's platform tags; pip download --only-binary=:all: --platform TAG "
        f"--python-version {profile.python} {name} shows what exists"
    )


def _pip(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise WheelError(f"pip took more than {PIP_TIMEOUT_S:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise WheelError(f"pip failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def wheel_tags(filename: str) -> set[tuple[str, str, str]]:
    """(interpreter, abi, platform) triples of a wheel file name (compressed sets expanded)."""
    parts = filename[: -len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) < 5:
        raise ValueError(f"not a wheel file name: {filename}")
    py, abi, plat = parts[-3:]
    return {(a, b, c) for a in py.split(".") for b in abi.split(".") for c in plat.split(".")}


def fits(filename: str, profile: DeviceProfile) -> bool:
    """Whether a wheel installs on the profile's device (its Python and platform tags)."""
    minor = int(profile.python.split(".")[1])
    platforms = {"any", *profile.pip_platforms}
    for py, abi, plat in wheel_tags(filename):
        if plat not in platforms:
            continue
        if abi == "none" and py in ("py3", "py2", f"py3{minor}", profile.cp_tag):
            return True
        if abi == profile.cp_tag and py == profile.cp_tag:
            return True
        if abi == "abi3" and py.startswith("cp3") and int(py[3:]) <= minor:
            return True
    return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
