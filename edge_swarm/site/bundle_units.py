"""The systemd units of a bundle: the node's service, and the broker's for a gateway that
hosts the site's broker.

Paths in the units are the device's absolute paths, written after ``=`` or a space, so that a
prefixed install (``install.sh``'s ``relocate``) can move them; unit descriptions hold no
slashes for the same reason.
"""

from __future__ import annotations

from edge_swarm.site.bundle_spec import BROKER_PORT, BundleSpec
from edge_swarm.site.runtime_env import AGENT_ENV, AGENT_ROLES


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


def environment(spec: BundleSpec) -> str:
    """The node's environment, one ``Environment=`` line: an agent runs as on a demo site
    (``runtime_env.py``: -OO), its bytecode cached under its state directory."""
    env = {"PYTHONUNBUFFERED": "1"}
    if spec.role in AGENT_ROLES:
        env |= {**AGENT_ENV, "PYTHONPYCACHEPREFIX": pycache_dir(spec)}
    return " ".join(f"{k}={v}" for k, v in env.items())


def pycache_dir(spec: BundleSpec) -> str:
    """Where a device's agent keeps its -OO bytecode (writable under ProtectSystem=strict)."""
    return f"{spec.profile.paths.state_dir}/pycache"


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
        f"Environment={environment(spec)}",
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
