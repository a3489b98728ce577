"""Device profiles: what a kind of device is, read from a TOML file in ``firmware_configs/``.

A profile says which wheels a device takes (its pip platform tags, its Python, the extras of
edge-swarm it installs), how it runs models (engine, threads, providers), the delta codec it
sends with, its memory budget, where the install goes and how systemd runs it. ``edge-swarm
bundle`` turns a profile plus a swarm's genesis into an offline installer for one device.

The schema is checked here, once: a wrong type, a missing key or an unknown key is refused
with a ``ProfileError`` naming the file and the field ("rpi4.toml: runtime.threads must be a
positive integer"). Nothing in this module touches the network.

Platform tags: pip accepts, for a foreign ``--platform``, only the tags it is given (it does
not add the older manylinux tags a newer glibc also runs, as it does for the host). A profile
names its device's glibc by its newest tag, e.g. ``manylinux_2_36_aarch64`` for Raspberry Pi
OS Bookworm; `DeviceProfile.pip_platforms` adds every older manylinux tag of that machine.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on Jetson images
    import tomli as tomllib

from edge_swarm.node.config import ENGINES, RuntimeConfig

PROFILE_DIR = Path(__file__).resolve().parents[2] / "firmware_configs"

ROLES = ("agent", "gateway")
CODECS = ("float32", "float16", "int8", "int4", "sign1")  # edge_swarm.swarm.quantize.CODEC_IDS
RESTART = ("no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always")
MIN_PYTHON = (3, 10)  # pyproject's requires-python
# The extras that provide each engine (numpy needs none).
ENGINE_EXTRAS = {"onnxruntime": ("serve",), "tflite": ("tflite", "serve")}

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_PYTHON = re.compile(r"3\.(\d{1,2})")
_EXTRA = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PEP600 = re.compile(r"manylinux_2_(\d{1,3})_([a-z0-9_]+)")
_LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
_LEGACY_RE = re.compile(r"(manylinux2014|manylinux2010|manylinux1)_([a-z0-9_]+)")
_OTHER_TAG = re.compile(r"(?:musllinux_\d+_\d+|linux)_([a-z0-9_]+)")
_MIN_GLIBC = {"x86_64": 5, "i686": 5, "aarch64": 17, "armv7l": 17, "ppc64le": 17, "s390x": 17}
# Who may ask a gateway serving time for it, unless its profile says: the private networks.
PRIVATE_NETS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


class ProfileError(ValueError):
    """A device profile is invalid or missing; the message names the file and the field."""


@dataclass(frozen=True)
class Paths:
    """Where the install goes on the device (absolute paths)."""

    install_dir: str
    state_dir: str
    config_dir: str


@dataclass(frozen=True)
class Systemd:
    """How systemd runs the node: as ``user``, at ``nice``, restarted per ``restart``."""

    user: str
    nice: int = 0
    restart: str = "on-failure"
    restart_sec: int = 10


@dataclass(frozen=True)
class TimeService:
    """``[time]``: whether a gateway serves its clock on the LAN (with Debian's chrony), and
    to which networks. A Pi has no hardware clock and a clinic LAN often no internet time:
    the site's devices then take their time from the gateway (``bundle_install``)."""

    serve: bool = False
    allow: tuple[str, ...] = PRIVATE_NETS


@dataclass(frozen=True)
class DeviceProfile:
    """One kind of device; built only by `load_profile` / `profile_from_dict` (validated)."""

    name: str
    description: str
    platform: tuple[str, ...]  # pip platform tags, newest first
    python: str  # "3.11"
    role: str  # agent | gateway
    extras: tuple[str, ...]  # extras of edge-swarm the device installs
    runtime: RuntimeConfig
    memory_budget_mib: int
    paths: Paths
    systemd: Systemd
    codec: dict[str, Any] | None = None  # {"name": "int8", "topk": 0.1}; None: the swarm's
    batch_size: int | None = None  # [training]; recorded in the manifest only (see bundle.py)
    # A venv that also sees the system's packages (a Jetson's onnxruntime-gpu from JetPack).
    system_site_packages: bool = False
    time: TimeService = field(default_factory=TimeService)

    @property
    def machine(self) -> str:
        """The machine of the platform tags (``aarch64``, ``x86_64``), as platform_machine."""
        return _machine(self.platform[0])

    @property
    def cp_tag(self) -> str:
        """The interpreter tag of the profile's Python, e.g. ``cp311``."""
        return "cp3" + self.python.split(".")[1]

    @property
    def memory_max(self) -> str:
        """systemd's ``MemoryMax=`` from the memory budget."""
        return f"{self.memory_budget_mib}M"

    @property
    def pip_platforms(self) -> tuple[str, ...]:
        """The profile's tags plus every older manylinux tag of the same machine, newest first
        (what pip would accept on the device itself)."""
        out: list[str] = []
        for tag in self.platform:
            for t in _expand(tag):
                if t not in out:
                    out.append(t)
        return tuple(out)


def load_profile(path_or_name: str | Path) -> DeviceProfile:
    """A profile from a file path, or by name from ``firmware_configs/`` (``"rpi4"``).

    Raises ProfileError for an unknown name, a missing or unreadable file, bad TOML, or any
    field that does not fit the schema; the message starts with the file's name.
    """
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or "/" in text or text.endswith(".toml"):
        path = Path(path_or_name)
    else:
        path = PROFILE_DIR / f"{text}.toml"
        if not path.is_file():
            known = ", ".join(profile_names()) or "none"
            raise ProfileError(f"no device profile named {text!r} (known: {known})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path.name}: not valid TOML: {exc}") from None
    return profile_from_dict(raw, path.name)


def profile_names() -> list[str]:
    """The names of the profiles shipped in ``firmware_configs/``."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml")) if PROFILE_DIR.is_dir() else []


def profile_from_dict(raw: dict[str, Any], source: str) -> DeviceProfile:
    """Validate parsed TOML; ``source`` (a file name) starts every error message."""
    v = _Validator(source)
    v.known(
        raw,
        "",
        required=("name", "platform", "python", "role", "extras", "memory_budget_mib"),
        optional=("description", "system_site_packages"),
        tables=("runtime", "codec", "training", "paths", "systemd", "time"),
        required_tables=("runtime", "paths", "systemd"),
    )
    name = v.string(raw, "name", _NAME, "a lowercase name like rpi4")
    python = v.string(raw, "python", _PYTHON, 'a version like "3.11"')
    if (3, int(_PYTHON.fullmatch(python).group(1))) < MIN_PYTHON:  # type: ignore[union-attr]
        v.fail("python", f"must be at least {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (edge-swarm needs it)")
    role = v.string(raw, "role", None, "agent or gateway")
    if role not in ROLES:
        v.fail("role", f"must be one of {list(ROLES)}, got {role!r}")
    platform = _platform(v, raw)
    extras = tuple(v.string_list(raw, "extras", _EXTRA, "extra names"))
    if len(set(extras)) != len(extras):
        v.fail("extras", "names an extra twice")
    system_site = v.boolean(raw, "system_site_packages", default=False)
    runtime = _runtime(v, raw["runtime"], extras, system_site)
    budget = v.positive_int(raw, "memory_budget_mib")
    if budget < 64:
        v.fail("memory_budget_mib", "must be at least 64 (MiB)")
    return DeviceProfile(
        name=name,
        description=v.string(raw, "description", None, "text", default=""),
        platform=platform,
        python=python,
        role=role,
        extras=extras,
        runtime=runtime,
        memory_budget_mib=budget,
        paths=_paths(v, raw["paths"]),
        systemd=_systemd(v, raw["systemd"]),
        codec=_codec(v, raw.get("codec")),
        batch_size=_training(v, raw.get("training")),
        system_site_packages=system_site,
        time=_time(v, raw.get("time"), role),
    )


def _platform(v: _Validator, raw: dict[str, Any]) -> tuple[str, ...]:
    tags = v.string_list(raw, "platform", None, "pip platform tags")
    if not tags:
        v.fail("platform", 'needs at least one tag, e.g. ["manylinux_2_36_aarch64"]')
    for tag in tags:
        if _machine(tag) == "":
            v.fail("platform", f"{tag!r} is not a Linux platform tag like manylinux_2_36_aarch64")
    machines = {_machine(t) for t in tags}
    if len(machines) > 1:
        v.fail("platform", f"tags name different machines: {sorted(machines)}")
    return tuple(tags)


def _runtime(
    v: _Validator, table: dict[str, Any], extras: tuple[str, ...], system_site: bool
) -> RuntimeConfig:
    v.known(table, "runtime", required=("engine",), optional=("threads", "providers"))
    engine = v.string(table, "engine", None, "an engine name", where="runtime")
    if engine not in ENGINES:
        v.fail("runtime.engine", f"must be one of {list(ENGINES)}, got {engine!r}")
    threads = table.get("threads")
    if threads is not None and (not _is_int(threads) or threads < 1):
        v.fail("runtime.threads", "must be a positive integer")
    providers = v.string_list(table, "providers", None, "provider names", where="runtime", opt=True)
    needs = ENGINE_EXTRAS.get(engine, ())
    # A Jetson takes onnxruntime-gpu from its JetPack image, through the system site-packages.
    if needs and not set(needs) & set(extras) and not system_site:
        v.fail(
            "runtime.engine",
            f"{engine!r} needs one of the extras {list(needs)} (or system_site_packages = true "
            "where the image provides it)",
        )
    return RuntimeConfig(engine=engine, threads=threads, providers=tuple(providers))


def _paths(v: _Validator, table: dict[str, Any]) -> Paths:
    keys = ("install_dir", "state_dir", "config_dir")
    v.known(table, "paths", required=keys)
    values = {}
    for key in keys:
        value = v.string(table, key, None, "an absolute path", where="paths")
        if not value.startswith("/") or value != value.rstrip("/") or " " in value:
            v.fail(f"paths.{key}", f"must be an absolute path without spaces, got {value!r}")
        values[key] = value
    if len(set(values.values())) != len(values):
        v.fail("paths", "install_dir, state_dir and config_dir must differ")
    return Paths(**values)


def _systemd(v: _Validator, table: dict[str, Any]) -> Systemd:
    v.known(table, "systemd", required=("user",), optional=("nice", "restart", "restart_sec"))
    user = v.string(table, "user", _USER, "a user name like edge-swarm", where="systemd")
    nice = table.get("nice", 0)
    if not _is_int(nice) or not -20 <= nice <= 19:
        v.fail("systemd.nice", "must be an integer from -20 to 19")
    restart = v.string(table, "restart", None, "a policy", where="systemd", default="on-failure")
    if restart not in RESTART:
        v.fail("systemd.restart", f"must be one of {list(RESTART)}, got {restart!r}")
    restart_sec = table.get("restart_sec", 10)
    if not _is_int(restart_sec) or restart_sec < 1:
        v.fail("systemd.restart_sec", "must be a positive integer (seconds)")
    return Systemd(user, nice, restart, restart_sec)


def _codec(v: _Validator, table: Any) -> dict[str, Any] | None:
    if table is None:
        return None
    v.table(table, "codec")
    v.known(table, "codec", required=("name",), optional=("topk",))
    name = v.string(table, "name", None, "a codec name", where="codec")
    if name not in CODECS:
        v.fail("codec.name", f"must be one of {list(CODECS)}, got {name!r}")
    topk = table.get("topk")
    if topk is None:
        return {"name": name}
    if isinstance(topk, bool) or not isinstance(topk, (int, float)) or not 0 < topk <= 1:
        v.fail("codec.topk", "must be a fraction in (0, 1], e.g. 0.1")
    return {"name": name, "topk": float(topk)}


def _time(v: _Validator, table: Any, role: str) -> TimeService:
    if table is None:
        return TimeService()
    v.known(table, "time", optional=("serve", "allow"))
    serve = table.get("serve", False)
    if not isinstance(serve, bool):
        v.fail("time.serve", "must be true or false")
    if serve and role != "gateway":
        v.fail("time.serve", "is for a gateway: devices take their time from it")
    allow = v.string_list(table, "allow", None, "networks", where="time", opt=True)
    for net in allow:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            v.fail("time.allow", f"must be a list of networks like 192.168.0.0/16, got {net!r}")
    return TimeService(serve, tuple(allow) if "allow" in table else PRIVATE_NETS)


def _training(v: _Validator, table: Any) -> int | None:
    if table is None:
        return None
    v.table(table, "training")
    v.known(table, "training", required=("batch_size",))
    return v.positive_int(table, "batch_size", where="training")


class _Validator:
    """Checks of one file; every failure raises ProfileError("<source>: <field> <problem>")."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> Any:
        raise ProfileError(f"{self.source}: {field} {problem}")

    def table(self, value: Any, name: str) -> None:
        if not isinstance(value, dict):
            self.fail(f"[{name}]", "must be a table")

    def known(
        self,
        table: dict[str, Any],
        where: str,
        *,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
        tables: tuple[str, ...] = (),
        required_tables: tuple[str, ...] = (),
    ) -> None:
        prefix = f"{where}." if where else ""
        unknown = sorted(set(table) - set(required) - set(optional) - set(tables))
        if unknown:
            self.fail(f"{prefix}{unknown[0]}", f"is not a known setting (unknown: {unknown})")
        for key in required:
            if key not in table:
                self.fail(f"{prefix}{key}", "is missing")
        for key in tables:
            if key in table:
                self.table(table[key], key)
            elif key in required_tables:
                self.fail(f"[{key}]", "table is missing")

    def string(
        self,
        table: dict[str, Any],
        key: str,
        pattern: re.Pattern[str] | None,
        what: str,
        *,
        where: str = "",
        default: str | None = None,
    ) -> str:
        field = f"{where}.{key}" if where else key
        value = table.get(key, default)
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            self.fail(field, f"must be {what}, got {value!r}")
        return value

    def string_list(
        self,
        table: dict[str, Any],
        key: str,
        pattern: re.Pattern[str] | None,
        what: str,
        *,
        where: str = "",
        opt: bool = False,
    ) -> list[str]:
        field = f"{where}.{key}" if where else key
        value = table.get(key, [] if opt else None)
        if not isinstance(value, list) or not all(
            isinstance(s, str) and s and (pattern is None or pattern.fullmatch(s)) for s in value
        ):
            self.fail(field, f"must be a list of {what}, got {value!r}")
        return value

    def positive_int(self, table: dict[str, Any], key: str, *, where: str = "") -> int:
        value = table.get(key)
        if not _is_int(value) or value < 1:
            self.fail(f"{where}.{key}" if where else key, "must be a positive integer")
        return value

    def boolean(self, table: dict[str, Any], key: str, *, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _machine(tag: str) -> str:
    """The machine a Linux platform tag names ("" if it is not one)."""
    for pattern in (_PEP600, _LEGACY_RE):
        m = pattern.fullmatch(tag)
        if m:
            return m.group(2)
    m = _OTHER_TAG.fullmatch(tag)
    return m.group(1) if m else ""


def _expand(tag: str) -> list[str]:
    """``tag`` and every older manylinux tag of its machine (PEP 600 and the legacy names)."""
    m = _PEP600.fullmatch(tag)
    legacy = _LEGACY_RE.fullmatch(tag)
    if m:
        glibc, arch = int(m.group(1)), m.group(2)
    elif legacy:
        glibc, arch = _LEGACY[legacy.group(1)], legacy.group(2)
    else:
        return [tag]
    out = [tag]
    for minor in range(glibc, _MIN_GLIBC.get(arch, 17) - 1, -1):
        out.append(f"manylinux_2_{minor}_{arch}")
        for old, old_minor in _LEGACY.items():
            if old_minor == minor and (old == "manylinux2014" or arch in ("x86_64", "i686")):
                out.append(f"{old}_{arch}")
    return list(dict.fromkeys(out))
