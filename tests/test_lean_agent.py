"""The lean agent (issue 20): what ``edge-swarm agent`` loads stays what an agent runs.

A fresh interpreter imports what the agent command imports; none of the modules that only a
gateway, an operator or another crypto library needs may come with it (each cost the agent
memory and start-up: benchmarks/bench_lean.py). The gateway command still finds its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What an agent never needs at start, and why it used to come.
NOT_ON_AN_AGENT = (
    "Crypto",  # pycryptodome: the system's OpenSSL signs (ledger_lite/libcrypto.py)
    "cffi",  # pycryptodome's binding
    "cryptography",  # its own copy of OpenSSL, 7.7 MiB: the one Python loaded serves
    "asyncio",  # the embedded broker (edge_swarm.io.broker)
    "sqlite3",  # a gateway's ledger file (ledger_lite.store)
    "statistics",  # one fmean (swarm/convergence.py), a poisoning harness
    "csv",  # CSV data files, read when a device has one
    "edge_swarm.io.broker",
    "edge_swarm.swarm.coordinator",
    "ledger_lite.store",
    "ledger_lite.anchor",
    "edge_swarm.site",
    "edge_swarm.dashboard",
    "edge_swarm.cli.fleet",
)

PROBE = """
import json, sys
from edge_swarm.cli.main import build_parser
build_parser(node_only=True).parse_args(sys.argv[1:])
from edge_swarm.node.config import load_config
from edge_swarm.node.{module} import {cls}
print(json.dumps(sorted(sys.modules)))
"""


def loaded(module: str, cls: str, *argv: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, cls=cls), *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    ).stdout
    return set(json.loads(out))


def test_an_agent_loads_nothing_it_does_not_run() -> None:
    modules = loaded("agent", "Agent", "agent", "--config", "x.toml")
    present = [m for m in NOT_ON_AN_AGENT if m in modules]
    assert not present, f"an agent imports {present} (see NOT_ON_AN_AGENT for why not)"
    assert "edge_swarm.swarm.participant" in modules  # the probe did import the agent


def test_a_gateway_still_has_what_it_runs() -> None:
    modules = loaded("gateway", "Gateway", "gateway", "--config", "x.toml")
    for needed in ("sqlite3", "ledger_lite.store", "edge_swarm.swarm.protocol"):
        assert needed in modules
    from edge_swarm.swarm import protocol

    assert protocol.Coordinator.__name__ == "Coordinator"  # loaded on first use


def test_the_full_command_line_still_has_every_command() -> None:
    from edge_swarm.cli.main import build_parser

    full = build_parser().format_help()
    for command in ("demo", "fleet", "campaign", "bundle", "discover", "model", "agent"):
        assert command in full
    assert "fleet" not in build_parser(node_only=True).format_help()
