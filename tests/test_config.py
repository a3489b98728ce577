"""Node configuration: TOML round trips, path resolution, and a ConfigError per bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_swarm.node.config import (
    BrokerConfig,
    ConfigError,
    DiscoveryConfig,
    NodeConfig,
    Timing,
    config_from_dict,
    dump_config,
    load_config,
)

GENESIS = "ab" * 32


def agent(tmp: Path, **kw: object) -> NodeConfig:
    fields: dict[str, object] = dict(
        node_id="pi-1",
        role="agent",
        swarm="clinic",
        key_path=tmp / "keys" / "pi-1.key",
        state_dir=tmp / "state" / "pi-1",
        data_path=tmp / "data" / "pi-1.npz",
        genesis_hash=GENESIS,
    )
    fields.update(kw)
    return NodeConfig(**fields)  # type: ignore[arg-type]


def gateway(tmp: Path, **kw: object) -> NodeConfig:
    fields: dict[str, object] = dict(
        node_id="gateway-1",
        role="gateway",
        swarm="clinic",
        key_path=tmp / "keys" / "gw.key",
        state_dir=tmp / "state" / "gw",
        ledger_path=tmp / "state" / "gw" / "ledger.sqlite",
        bootstrap_path=tmp / "bootstrap.jsonl",
    )
    fields.update(kw)
    return NodeConfig(**fields)  # type: ignore[arg-type]


def write(tmp: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


AGENT_TOML = """\
[node]
id = "pi-1"
role = "agent"
swarm = "clinic"
key = "keys/pi-1.key"
state_dir = "state"

[agent]
data = "data/pi-1.npz"
"""

GATEWAY_TOML = """\
[node]
id = "gw"
role = "gateway"
swarm = "clinic"
key = "gw.key"
state_dir = "state"

[gateway]
ledger = "state/ledger.sqlite"
"""


def load_text(tmp: Path, text: str) -> NodeConfig:
    return load_config(write(tmp, text))


# --------------------------------------------------------------------------- round trips


def test_agent_round_trip(tmp_path: Path) -> None:
    cfg = agent(
        tmp_path,
        broker=BrokerConfig(host="10.0.0.2", port=8883, keepalive_s=30),
        timing=Timing(tick_s=0.01, connect_timeout_s=2.5, telemetry_every_s=1),
    )
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_gateway_round_trip(tmp_path: Path) -> None:
    cfg = gateway(tmp_path)
    back = load_config(write(tmp_path, dump_config(cfg)))
    assert back == cfg
    assert back.genesis_hash is None and back.data_path is None


def test_gateway_without_bootstrap_round_trip(tmp_path: Path) -> None:
    cfg = gateway(tmp_path, bootstrap_path=None, genesis_hash=GENESIS)
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_awkward_paths_round_trip(tmp_path: Path) -> None:
    odd = tmp_path / 'dir with "quotes" and \\ backslash' / "ünïcode\tkey"
    cfg = agent(tmp_path, key_path=odd, data_path=tmp_path / "a#b=c" / "[x].npz")
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_timing_edges_round_trip(tmp_path: Path) -> None:
    cfg = agent(tmp_path, timing=Timing(tick_s=1e-05, connect_timeout_s=float("inf")))
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_dump_is_ascii(tmp_path: Path) -> None:
    text = dump_config(agent(tmp_path, key_path=tmp_path / "ключ\x7f.key"))
    assert text.isascii()
    assert load_config(write(tmp_path, text)).key_path == tmp_path / "ключ\x7f.key"


def test_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, AGENT_TOML)
    assert cfg.broker == BrokerConfig() and cfg.timing == Timing()
    assert cfg.genesis_hash is None and cfg.ledger_path is None
    assert cfg.max_envelope_bytes == 16 * 1024 * 1024


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    bundle = tmp_path / "bundle"
    cfg = load_config(write(bundle, AGENT_TOML))
    assert cfg.key_path == (bundle / "keys" / "pi-1.key").resolve()
    assert cfg.state_dir == (bundle / "state").resolve()
    assert cfg.data_path == (bundle / "data" / "pi-1.npz").resolve()
    gw = load_config(write(bundle, GATEWAY_TOML, "gw.toml"))
    assert gw.ledger_path == (bundle / "state" / "ledger.sqlite").resolve()


def test_a_relative_config_path_still_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "b", AGENT_TOML)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("b") / "node.toml")
    assert cfg.key_path.is_absolute() and cfg.key_path == tmp_path / "b" / "keys" / "pi-1.key"


def test_absolute_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = AGENT_TOML.replace('"keys/pi-1.key"', '"~/k.key"').replace(
        '"state"', f'"{tmp_path / "abs-state"}"'
    )
    cfg = load_text(tmp_path / "cfg", text)
    assert cfg.key_path == tmp_path / "home" / "k.key"
    assert cfg.state_dir == tmp_path / "abs-state"


def test_config_from_dict_uses_the_base_given(tmp_path: Path) -> None:
    raw = {
        "node": {"id": "gw", "role": "gateway", "swarm": "s", "key": "k", "state_dir": "st"},
        "gateway": {"ledger": "l.sqlite", "bootstrap": "b.jsonl"},
    }
    cfg = config_from_dict(raw, base=tmp_path)
    assert cfg.key_path == tmp_path / "k" and cfg.bootstrap_path == tmp_path / "b.jsonl"


# --------------------------------------------------------------------------- refusals


def edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    "text, field",
    [
        (edit(AGENT_TOML, 'id = "pi-1"', 'id = "pi 1"'), "node.id"),
        (edit(AGENT_TOML, 'id = "pi-1"', 'id = "pi-1\\n"'), "node.id"),
        (edit(AGENT_TOML, 'id = "pi-1"', 'id = ""'), "node.id"),
        (edit(AGENT_TOML, 'id = "pi-1"', f'id = "{"x" * 65}"'), "node.id"),
        (edit(AGENT_TOML, 'id = "pi-1"', "id = 7"), "node.id"),
        (edit(AGENT_TOML, 'id = "pi-1"\n', ""), "node.id"),
        (edit(AGENT_TOML, 'swarm = "clinic"', 'swarm = "a/b"'), "node.swarm"),
        (edit(AGENT_TOML, 'role = "agent"', 'role = "observer"'), "node.role"),
        (edit(AGENT_TOML, 'role = "agent"', 'role = "Agent"'), "node.role"),
        (edit(AGENT_TOML, 'key = "keys/pi-1.key"\n', ""), "node.key"),
        (edit(AGENT_TOML, 'key = "keys/pi-1.key"', "key = 1"), "node.key"),
        (edit(AGENT_TOML, 'state_dir = "state"\n', ""), "node.state_dir"),
        (edit(AGENT_TOML, '[agent]\ndata = "data/pi-1.npz"\n', ""), "agent.data"),
        (edit(AGENT_TOML, "[agent]\n", "[agent]\ndata = 3\n#"), "agent.data"),
        (edit(AGENT_TOML, "[agent]\ndata", "[agents]\ndata"), "agent.data"),
        (edit(GATEWAY_TOML, '[gateway]\nledger = "state/ledger.sqlite"\n', ""), "gateway.ledger"),
        (edit(AGENT_TOML, "[node]\n", '[node]\ngenesis_hash = "abc"\n'), "node.genesis_hash"),
        (edit(AGENT_TOML, "[node]\n", f'[node]\ngenesis_hash = "{"AB" * 32}"\n'), "genesis_hash"),
        (edit(AGENT_TOML, "[node]\n", "[node]\ngenesis_hash = 5\n"), "node.genesis_hash"),
        (edit(AGENT_TOML, "[node]\n", "[node]\ngenesis-hash = 'x'\n"), "genesis-hash"),
        (AGENT_TOML + "\n[broker]\nport = 70000\n", "broker.port"),
        (AGENT_TOML + "\n[broker]\nport = 0\n", "broker.port"),
        (AGENT_TOML + '\n[broker]\nport = "1883"\n', "broker.port"),
        (AGENT_TOML + "\n[broker]\nport = true\n", "broker.port"),
        (AGENT_TOML + "\n[broker]\nport = 1883.0\n", "broker.port"),
        (AGENT_TOML + "\n[broker]\nkeepalive_s = 0\n", "broker.keepalive_s"),
        (AGENT_TOML + "\n[broker]\nhost = 1\n", "broker.host"),
        (AGENT_TOML + "\n[broker]\ncolour = 'red'\n", "colour"),
        (AGENT_TOML + "\n[timing]\ntick = 1\n", "tick"),
        (AGENT_TOML + '\n[timing]\ntick_s = "fast"\n', "timing.tick_s"),
        (AGENT_TOML + "\n[timing]\nconnect_timeout_s = -1\n", "timing.connect_timeout_s"),
        ("broker = 5\n" + AGENT_TOML, "[broker]"),
        (AGENT_TOML + "extra = 1\n", "extra"),
        (GATEWAY_TOML + "bootstrapp = 'b'\n", "bootstrapp"),
        ("[agent]\ndata = 'x'\n", "[node]"),
        ("node = 1\n", "[node]"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert field in str(info.value)


def test_not_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[node\nid = ")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes(b"[node]\nid = '\xff'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_values_validate_when_built_directly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="broker.port"):
        BrokerConfig(port=65536)
    with pytest.raises(ConfigError, match="agent.data"):
        agent(tmp_path, data_path=None)
    with pytest.raises(ConfigError, match="gateway.ledger"):
        gateway(tmp_path, ledger_path=None)
    with pytest.raises(ConfigError, match="role"):
        agent(tmp_path, role="admin")


# --------------------------------------------------------------------------- discovery


def test_no_broker_host_means_find_it_on_the_lan(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, AGENT_TOML)
    assert cfg.discovery == DiscoveryConfig(enabled=True, find_broker=True)
    static = load_text(tmp_path, AGENT_TOML + '\n[broker]\nhost = "10.0.0.2"\n')
    assert static.discovery == DiscoveryConfig()  # a configured broker: no zeroconf at all
    both = load_text(
        tmp_path,
        AGENT_TOML + '\n[broker]\nhost = "10.0.0.2"\n\n[discovery]\nenabled = true\n'
        'interfaces = ["10.0.0.7"]\n',
    )
    assert both.discovery == DiscoveryConfig(True, False, ("10.0.0.7",))  # the host wins


@pytest.mark.parametrize(
    "disc",
    [
        DiscoveryConfig(True, True, ()),
        DiscoveryConfig(True, True, ("192.168.4.20",)),
        DiscoveryConfig(True, False, ("127.0.0.1",)),
        DiscoveryConfig(),
    ],
)
def test_discovery_round_trip(tmp_path: Path, disc: DiscoveryConfig) -> None:
    cfg = agent(tmp_path, discovery=disc)
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("\n[discovery]\nenabled = false\n", "no host and discovery is off"),
        ('\n[discovery]\nenabled = "yes"\n', "discovery.enabled"),
        ('\n[discovery]\ninterfaces = "10.0.0.1"\n', "discovery.interfaces"),
        ('\n[discovery]\ninterfaces = ["eth0"]\n', "not IPv4"),
        ("\n[discovery]\nbrowse = true\n", "unknown setting"),
    ],
)
def test_bad_discovery_settings_are_named(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_text(tmp_path, AGENT_TOML + extra)


def test_a_config_of_an_earlier_version_still_loads(tmp_path: Path) -> None:
    """``timing.sync_timeout_s`` was written by earlier versions and never read: a device
    upgraded in place must still start on the config it has."""
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_TOML + "\n[timing]\nsync_timeout_s = 15.0\ntick_s = 0.2\n")
    cfg = load_config(path)
    assert cfg.timing.tick_s == 0.2
    assert "sync_timeout_s" not in dump_config(cfg)
