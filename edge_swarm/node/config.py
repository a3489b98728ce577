"""Typed configuration of a node, read from TOML.

A node's file names who it is, where its key, data and state live, and which broker to use.
Everything the swarm agrees on (model, training, merge rule, round timing) is not here: it
lives in the ledger's genesis, so that no device can quietly train differently.

Relative paths in a file are resolved against the file's own directory, so that a bundle can
be unpacked anywhere.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on Jetson images
    import tomli as tomllib

from ledger_lite.files import OpenToOthersError, read_private

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # used with fullmatch: "$" would let "\n" in
_ADDR = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,253}:[0-9]{1,5}$")
_HEX64 = re.compile(r"[0-9a-f]{64}")
DEFAULT_MIN_FREE_MB = 8.0  # [gateway] min_free_mb: disk kept free beside the ledger
DEFAULT_KEEP_EXPORTS = 5  # [gateway] keep_exports: rounds of model files kept in exports/
_GATEWAY_KEYS = (
    "ledger",
    "bootstrap",
    "raft",
    "peers",
    "backbone",
    "dashboard",
    "min_free_mb",
    "keep_exports",
    "attack",  # tests only: a gateway whose own merge lies (node/model.py, ModelHolder.spoil)
)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where the MQTT broker is; ``keepalive_s`` also bounds how fast a dead node is noticed.

    ``tls_ca`` (the swarm CA's certificate) turns on TLS towards a locked-down broker;
    ``username`` and ``password_file`` (a file holding only the password, mode 0600) log in.
    Both or neither of the last two. See ``edge_swarm.site.broker_config``.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    keepalive_s: int = 10
    # The broker's maximum packet size: larger messages travel in chunks (Mosquitto drops a
    # client that sends a bigger packet, and paho would re-send it after every reconnect).
    max_packet: int = 256 * 1024
    tls_ca: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("tls_ca", "password_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"broker.{name}: {value!r} is not a path")
                object.__setattr__(self, name, Path(value))
        if self.username is not None and (
            not isinstance(self.username, str) or not _ID.fullmatch(self.username)
        ):
            raise ConfigError(
                f"broker.username: {self.username!r} must match [A-Za-z0-9_.-]{{1,64}}"
            )
        if (self.username is None) != (self.password_file is None):
            raise ConfigError("broker.username and broker.password_file go together: give both")
        if not _is_int(self.max_packet) or self.max_packet < 4096:
            raise ConfigError(f"broker.max_packet: {self.max_packet!r} must be at least 4096 bytes")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"broker.host: {self.host!r} is not a host name")
        if not _is_int(self.port) or not 0 < self.port < 65536:
            raise ConfigError(f"broker.port: {self.port!r} is not a TCP port")
        if not _is_int(self.keepalive_s) or self.keepalive_s < 1:
            raise ConfigError("broker.keepalive_s must be an integer of at least 1")

    def read_password(self) -> str | None:
        """The broker password from ``password_file`` (None without one).

        The file holds the password on its first line. Raises ConfigError if it is missing,
        empty, or readable or writable by group or others (the password is a secret: the
        same rule as for private keys).
        """
        if self.password_file is None:
            return None
        path = self.password_file
        try:
            text = read_private(path, 4096, "broker.password_file").decode("utf-8")
        except OpenToOthersError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(f"broker.password_file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"broker.password_file {path}: not UTF-8 text") from None
        password = text.splitlines()[0] if text else ""
        if not password:
            raise ConfigError(f"broker.password_file {path} is empty")
        return password


@dataclass(frozen=True)
class Timing:
    """Timing constants of the process wiring, in seconds (tests shrink them)."""

    tick_s: float = 0.05
    connect_timeout_s: float = 15.0
    telemetry_every_s: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"timing.{f.name}: {value!r} is not a positive number of seconds")


@dataclass(frozen=True)
class DiscoveryConfig:
    """Zeroconf on the LAN. ``enabled``: advertise this node and browse the swarm's services;
    it is on whenever the config gives no broker host (the node then finds its broker by
    discovery) and may be turned on beside a static host, which always wins. ``interfaces``:
    the IPv4 addresses to use (default: every interface)."""

    enabled: bool = False
    find_broker: bool = False
    interfaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for addr in self.interfaces:
            try:
                ipaddress.IPv4Address(addr)
            except ValueError:
                raise ConfigError(f"discovery.interfaces: {addr!r} is not IPv4") from None
        if self.find_broker and not self.enabled:
            raise ConfigError("discovery: finding the broker needs discovery enabled")


ENGINES = ("numpy", "onnxruntime", "tflite")


@dataclass(frozen=True)
class RuntimeConfig:
    """How this device runs models (its profile): ``engine`` for the frozen backbone and
    for serving the merged model; ``threads`` for the runtime (None: its default);
    ``providers`` for onnxruntime, in order of preference (unavailable ones fall back to
    the CPU with a log line); ``serve``: load every final model with the engine, keeping
    the last good one if a new file does not load."""

    engine: str = "numpy"
    threads: int | None = None
    providers: tuple[str, ...] = ()
    serve: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"runtime.engine: {self.engine!r} is not one of {list(ENGINES)}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ConfigError(f"runtime.threads: {self.threads!r} must be a positive integer")
        if not all(isinstance(p, str) and p for p in self.providers):
            raise ConfigError(
                'runtime.providers must be a list of names, e.g. ["CUDAExecutionProvider"]'
            )
        if not isinstance(self.serve, bool):
            raise ConfigError("runtime.serve must be true or false")


@dataclass(frozen=True)
class NodeConfig:
    """One node (agent or gateway) of one swarm."""

    node_id: str
    role: str
    swarm: str
    key_path: Path
    state_dir: Path
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    genesis_hash: str | None = None
    data_path: Path | None = None
    ledger_path: Path | None = None
    bootstrap_path: Path | None = None
    timing: Timing = field(default_factory=Timing)
    max_envelope_bytes: int = 16 * 1024 * 1024
    # A device profile may choose its own delta codec (a Pi on a weak link sends 1-bit);
    # envelopes are self-describing, so one swarm can mix codecs. Checked at agent start.
    codec_override: dict[str, Any] | None = None
    # Gateways of one site replicate the ledger by Raft: this one's address, and the others'.
    raft_self: str | None = None
    raft_peers: tuple[str, ...] = ()
    # The device's X25519 key (owner-only file): data keys of the swarm are wrapped for it.
    # Required when the genesis seals deltas; checked at start.
    enc_key_path: Path | None = None
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # The frozen backbone's files (backbone.npz/.onnx/.tflite), when the genesis names one.
    backbone_dir: Path | None = None
    # A gateway's read-only dashboard, "host:port" (e.g. "0.0.0.0:8080"); off when None.
    dashboard: str | None = None
    # A gateway appends to its ledger only while this much disk is free beside it (MiB);
    # the checkpoint and the model exports are written only if they leave it free.
    min_free_mb: float = DEFAULT_MIN_FREE_MB
    # The rounds whose model files a gateway keeps in exports/ (latest.* always stay).
    keep_exports: int = DEFAULT_KEEP_EXPORTS
    # Tests and benchmarks only: this agent poisons its deltas, or this gateway its own merge
    # (learn/poison.py).
    attack: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name, key in (("node_id", "id"), ("swarm", "swarm")):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ID.fullmatch(value):
                raise ConfigError(f"node.{key}: {value!r} must match [A-Za-z0-9_.-]{{1,64}}")
        if self.role not in ("agent", "gateway"):
            raise ConfigError(f"node.role: {self.role!r} is not 'agent' or 'gateway'")
        if self.genesis_hash is not None and not (
            isinstance(self.genesis_hash, str) and _HEX64.fullmatch(self.genesis_hash)
        ):
            raise ConfigError("node.genesis_hash must be 64 lowercase hex characters")
        if self.role == "agent" and self.data_path is None:
            raise ConfigError("agent.data is required for an agent")
        if self.role == "gateway" and self.ledger_path is None:
            raise ConfigError("gateway.ledger is required for a gateway")
        for addr in (self.raft_self, *self.raft_peers):
            if addr is not None and not _ADDR.fullmatch(str(addr)):
                raise ConfigError(f"gateway.raft/peers: {addr!r} is not host:port")
        if self.dashboard is not None and not _ADDR.fullmatch(str(self.dashboard)):
            raise ConfigError(f"gateway.dashboard: {self.dashboard!r} is not host:port")
        if self.raft_peers and self.raft_self is None:
            raise ConfigError("gateway.peers needs gateway.raft, this gateway's own address")
        if self.codec_override is not None and not isinstance(self.codec_override, dict):
            raise ConfigError('agent.codec must be a table, e.g. { name = "int8" }')
        free = self.min_free_mb
        if isinstance(free, bool) or not isinstance(free, (int, float)) or not free >= 0:
            raise ConfigError(f"gateway.min_free_mb: {free!r} is not a number of MiB >= 0")
        if not _is_int(self.keep_exports) or self.keep_exports < 1:
            raise ConfigError(
                f"gateway.keep_exports: {self.keep_exports!r} must be an integer >= 1"
            )

    @property
    def min_free_bytes(self) -> int:
        """``min_free_mb`` in bytes."""
        return int(self.min_free_mb * 2**20)


def load_config(path: str | Path) -> NodeConfig:
    """Read a node's TOML file; raise ``ConfigError`` naming the bad field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(raw, base=path.parent)


def config_from_dict(raw: dict[str, Any], base: Path) -> NodeConfig:
    """Build a ``NodeConfig`` from parsed TOML; paths resolve against ``base``."""
    node = _table(raw, "node")
    broker = _table(raw, "broker", required=False)
    timing = dict(_table(raw, "timing", required=False))
    # Written by earlier versions and never read: accepted so their configs still load.
    timing.pop("sync_timeout_s", None)
    agent = _table(raw, "agent", required=False)
    gateway = _table(raw, "gateway", required=False)
    discovery = _table(raw, "discovery", required=False)
    runtime = _table(raw, "runtime", required=False)
    # A misspelt key would otherwise be ignored without a word (a dropped genesis pin).
    _known(node, "node", ("id", "role", "swarm", "key", "enc_key", "state_dir", "genesis_hash"))
    _known(broker, "broker", tuple(f.name for f in fields(BrokerConfig)))
    _known(timing, "timing", tuple(f.name for f in fields(Timing)))
    _known(agent, "agent", ("data", "codec", "backbone", "attack"))
    _known(gateway, "gateway", _GATEWAY_KEYS)
    _known(runtime, "runtime", tuple(f.name for f in fields(RuntimeConfig)))
    providers = runtime.get("providers", [])
    if not isinstance(providers, list):
        raise ConfigError('runtime.providers must be a list, e.g. ["CUDAExecutionProvider"]')
    _known(discovery, "discovery", ("enabled", "interfaces"))
    # No broker host: the node finds its broker on the LAN; a host given always wins.
    find_broker = "host" not in broker
    enabled = discovery.get("enabled", find_broker)
    if not isinstance(enabled, bool):
        raise ConfigError("discovery.enabled must be true or false")
    if find_broker and not enabled:
        raise ConfigError("[broker] has no host and discovery is off: give one or the other")
    interfaces = discovery.get("interfaces", [])
    if not isinstance(interfaces, list):
        raise ConfigError('discovery.interfaces must be a list of addresses, e.g. ["10.0.0.5"]')
    peers = gateway.get("peers", [])
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        raise ConfigError('gateway.peers must be a list of "host:port" strings')

    def path_of(table: dict[str, Any], key: str, where: str) -> Path | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a path string")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    broker = dict(broker)
    for key in ("tls_ca", "password_file"):
        if key in broker:
            broker[key] = path_of(broker, key, "broker")
    try:
        return NodeConfig(
            node_id=_str(node, "id", "node"),
            role=_str(node, "role", "node"),
            swarm=_str(node, "swarm", "node"),
            key_path=path_of(node, "key", "node") or _missing("node.key"),
            enc_key_path=path_of(node, "enc_key", "node"),
            state_dir=path_of(node, "state_dir", "node") or _missing("node.state_dir"),
            genesis_hash=node.get("genesis_hash"),
            broker=BrokerConfig(**broker),
            data_path=path_of(agent, "data", "agent"),
            codec_override=agent.get("codec"),
            ledger_path=path_of(gateway, "ledger", "gateway"),
            bootstrap_path=path_of(gateway, "bootstrap", "gateway"),
            raft_self=gateway.get("raft"),
            raft_peers=tuple(peers),
            timing=Timing(**timing),
            discovery=DiscoveryConfig(enabled, find_broker, tuple(interfaces)),
            runtime=RuntimeConfig(**{**runtime, "providers": tuple(providers)}),
            dashboard=gateway.get("dashboard"),
            min_free_mb=gateway.get("min_free_mb", DEFAULT_MIN_FREE_MB),
            keep_exports=gateway.get("keep_exports", DEFAULT_KEEP_EXPORTS),
            attack=agent.get("attack") or gateway.get("attack"),
            backbone_dir=path_of(agent, "backbone", "agent")
            or path_of(gateway, "backbone", "gateway"),
        )
    except TypeError as exc:  # belt and braces: _known has named unknown keys already
        raise ConfigError(f"unknown setting: {exc}") from None


def _table(raw: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        if required:
            raise ConfigError(f"[{name}] table is missing")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _known(table: dict[str, Any], name: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(f"[{name}]: unknown setting(s) {unknown}; known: {list(keys)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} is required and must be a string")
    return value


def _missing(name: str) -> Path:
    raise ConfigError(f"{name} is required")


def _q(value: object) -> str:
    """A TOML basic string: JSON's escapes are TOML's, and ASCII output needs no encoding."""
    return json.dumps(str(value)).replace("\x7f", "\\u007f")


def _toml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _q(value)


def dump_config(cfg: NodeConfig) -> str:
    """Render a config as TOML (absolute paths), as the demo and bundles write it."""
    lines = [
        "[node]",
        f"id = {_q(cfg.node_id)}",
        f"role = {_q(cfg.role)}",
        f"swarm = {_q(cfg.swarm)}",
        f"key = {_q(cfg.key_path)}",
        f"state_dir = {_q(cfg.state_dir)}",
    ]
    if cfg.enc_key_path is not None:
        lines.append(f"enc_key = {_q(cfg.enc_key_path)}")
    if cfg.genesis_hash:
        lines.append(f"genesis_hash = {_q(cfg.genesis_hash)}")
    lines += [
        "",
        "[broker]",
        *([] if cfg.discovery.find_broker else [f"host = {_q(cfg.broker.host)}"]),
        f"port = {cfg.broker.port}",
        f"keepalive_s = {cfg.broker.keepalive_s}",
        f"max_packet = {cfg.broker.max_packet}",
    ]
    if cfg.broker.tls_ca is not None:
        lines.append(f"tls_ca = {_q(cfg.broker.tls_ca)}")
    if cfg.broker.username is not None:
        lines.append(f"username = {_q(cfg.broker.username)}")
    if cfg.broker.password_file is not None:
        lines.append(f"password_file = {_q(cfg.broker.password_file)}")
    if cfg.data_path is not None:
        lines += ["", "[agent]", f"data = {_q(cfg.data_path)}"]
        if cfg.backbone_dir is not None:
            lines.append(f"backbone = {_q(cfg.backbone_dir)}")
        if cfg.attack is not None:
            items = ", ".join(f"{k} = {_toml_scalar(v)}" for k, v in cfg.attack.items())
            lines.append(f"attack = {{ {items} }}")
        if cfg.codec_override:
            items = ", ".join(
                f"{k} = {_toml_scalar(v)}" for k, v in cfg.codec_override.items() if v is not None
            )
            lines.append(f"codec = {{ {items} }}")
    if cfg.ledger_path is not None:
        lines += ["", "[gateway]", f"ledger = {_q(cfg.ledger_path)}"]
        if cfg.attack is not None:
            items = ", ".join(f"{k} = {_toml_scalar(v)}" for k, v in cfg.attack.items())
            lines.append(f"attack = {{ {items} }}")
        if cfg.dashboard is not None:
            lines.append(f"dashboard = {_q(cfg.dashboard)}")
        if cfg.backbone_dir is not None:
            lines.append(f"backbone = {_q(cfg.backbone_dir)}")
        if cfg.bootstrap_path is not None:
            lines.append(f"bootstrap = {_q(cfg.bootstrap_path)}")
        if cfg.raft_self is not None:
            lines.append(f"raft = {_q(cfg.raft_self)}")
            lines.append("peers = [" + ", ".join(_q(p) for p in cfg.raft_peers) + "]")
        if cfg.min_free_mb != DEFAULT_MIN_FREE_MB:
            lines.append(f"min_free_mb = {cfg.min_free_mb!r}")
        if cfg.keep_exports != DEFAULT_KEEP_EXPORTS:
            lines.append(f"keep_exports = {cfg.keep_exports}")
    r = cfg.runtime
    if r != RuntimeConfig():
        lines += ["", "[runtime]", f"engine = {_q(r.engine)}"]
        if r.threads is not None:
            lines.append(f"threads = {r.threads}")
        if r.providers:
            lines.append("providers = [" + ", ".join(_q(p) for p in r.providers) + "]")
        lines.append(f"serve = {_toml_scalar(r.serve)}")
    d = cfg.discovery
    if d.enabled and not (d.find_broker and not d.interfaces):
        lines += ["", "[discovery]", f"enabled = {_toml_scalar(d.enabled)}"]
        if d.interfaces:
            lines.append("interfaces = [" + ", ".join(_q(a) for a in d.interfaces) + "]")
    t = cfg.timing
    lines += [
        "",
        "[timing]",
        f"tick_s = {t.tick_s}",
        f"connect_timeout_s = {t.connect_timeout_s}",
        f"telemetry_every_s = {t.telemetry_every_s}",
    ]
    return "\n".join(lines) + "\n"
