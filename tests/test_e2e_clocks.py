"""End to end: devices whose wall clocks are wrong still train in every round.

A Raspberry Pi has no hardware clock; on a clinic LAN without internet time it boots with
the time it last saved. Here two of four agent processes run under libfaketime
(``FAKETIME_DONT_FAKE_MONOTONIC=1``: only the wall clock moves): one 10 minutes fast, one a
day slow. The site is the locked-down one (Mosquitto with TLS from the swarm's CA), so the
slow device also checks the broker's certificate against a clock from yesterday.

The agents load the library themselves (``LD_PRELOAD``, ``FAKETIME``), not through the
``faketime`` command: that one makes a semaphore and a shared memory object named by its
pid, and leaves both in /dev/shm when it is killed. Once pids wrap, a new ``faketime`` whose
pid matches a leftover fails (``sem_open: File exists``) and its agent runs on the true
clock.

Needs ``faketime`` (Debian's package) and ``mosquitto``: skipped with a message where
either is absent, unless ``EDGE_SWARM_REQUIRE_FAKETIME=1`` / ``EDGE_SWARM_REQUIRE_MOSQUITTO=1``
(CI, ``.ci/run``), where that fails.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from edge_swarm.io.broker import find_mosquitto
from edge_swarm.node.config import Timing, load_config
from edge_swarm.node.observer import SwarmObserver
from edge_swarm.site import demo
from edge_swarm.site.demo import RunConfig
from edge_swarm.site.launch import SwarmProcesses, Wrapper

from .waiting import dashboard_url, run_settled

pytestmark = pytest.mark.network

REQUIRE_FAKETIME_ENV = "EDGE_SWARM_REQUIRE_FAKETIME"
FAST, SLOW = "agent-02", "agent-03"
SKEW_S = {FAST: 600.0, SLOW: -86_400.0}  # the device's wall clock minus the gateway's
FAKE = {FAST: "+10m", SLOW: "-1d"}  # the same, as faketime's offsets
TOLERANCE_S = 5.0  # what process start-up and delivery add to a measured skew
# The nodes' telemetry period here (Timing.telemetry_every_s, 10 s on a device), shrunk so
# that the operator's listen is short: fleet ls hears two reports of each node in LISTEN_S
# (telemetry is not retained).
TELEMETRY_S = 2.0
LISTEN_S = 2.5 * TELEMETRY_S


def need_tools() -> str:
    if find_mosquitto() is None:
        if os.environ.get("EDGE_SWARM_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("EDGE_SWARM_REQUIRE_MOSQUITTO=1 but the mosquitto binary is missing")
        pytest.skip("mosquitto binary not found (apt-get install mosquitto)")
    library = libfaketime()
    if library is None:
        if os.environ.get(REQUIRE_FAKETIME_ENV) == "1":
            pytest.fail(f"{REQUIRE_FAKETIME_ENV}=1 but libfaketime is missing")
        pytest.skip(
            "libfaketime not found (apt-get install faketime; .ci/run installs it): "
            f"set {REQUIRE_FAKETIME_ENV}=1 to make this a failure"
        )
    return library


def libfaketime() -> str | None:
    """The library the ``faketime`` command preloads: below the prefix it is installed in
    (Debian: /usr/lib/<arch>/faketime/libfaketime.so.1)."""
    command = shutil.which("faketime")
    if command is None:
        return None
    prefix = Path(command).resolve().parents[1]
    for pattern in ("lib*/*/faketime/libfaketime.so.1", "lib*/faketime/libfaketime.so.1"):
        found = sorted(prefix.glob(pattern))
        if found:
            return str(found[0])
    return None


def skewed(library: str, offset: str) -> Wrapper:
    """A node whose wall clock is `offset` (faketime's syntax) off. Only the wall clock moves:
    a device's monotonic clock is right whatever its time says."""
    env = {"LD_PRELOAD": library, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return Wrapper((), tuple(env.items()))


def table_column(text: str, node: str, header: str) -> str:
    """The cell of ``node``'s row under ``header`` in a table printed by ``print_table``
    (rich's box-drawn table, or the plain one when rich is absent)."""
    lines = text.replace("┃", "│").splitlines()  # rich draws the header's rules heavy
    if any("│" in line for line in lines):
        rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if "│" in line]
        head = next(r for r in rows if header in r)
        row = next(r for r in rows if r and r[0] == node)
        return row[head.index(header)]
    head_line = next(line for line in lines if header in line)
    start = head_line.index(header)
    row_line = next(line for line in lines if line.split() and line.split()[0] == node)
    return row_line[start:].split()[0] if row_line[start:].strip() else ""


def fleet_ls(cfg: RunConfig, procs: SwarmProcesses, obs: SwarmObserver) -> str:
    """``edge-swarm fleet ls`` as an operator runs it against the site's broker."""
    broker = load_config(procs.agents[FAST].config).broker
    assert broker.tls_ca is not None
    cmd = [sys.executable, "-m", "edge_swarm", "fleet", "ls"]
    cmd += ["--broker", f"{broker.host}:{broker.port}", "--swarm", cfg.swarm]
    cmd += ["--tls-ca", str(broker.tls_ca), "--username", "operator"]
    cmd += ["--password-file", str(cfg.workdir / "secrets" / "operator.password")]
    cmd += ["--listen", str(LISTEN_S)]
    out = cfg.workdir / "fleet-ls.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            # The observer keeps handling the site's messages while the operator listens.
            obs.wait_for(lambda: proc.poll() is not None, LISTEN_S + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    text = out.read_text()
    assert proc.returncode == 0, text
    return text


def dashboard(url: str) -> tuple[str, dict]:
    """The gateway's dashboard page and its ``/api/state`` (``url`` ends with /)."""
    with urllib.request.urlopen(url, timeout=10) as page:
        html = page.read().decode()
    with urllib.request.urlopen(url + "api/state", timeout=10) as api:
        return html, json.loads(api.read())


def test_devices_with_wrong_wall_clocks_train_in_every_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = need_tools()
    # run_swarm writes the nodes' configs with Timing() from edge_swarm.site.demo.
    monkeypatch.setattr(demo, "Timing", functools.partial(Timing, telemetry_every_s=TELEMETRY_S))
    cfg = RunConfig(
        workdir=tmp_path,
        n_agents=4,
        rounds=4,
        broker="mosquitto-tls",
        round_deadline_s=20.0,  # a device left out would cost the round this long
        attest_timeout_s=10.0,
        start_grace_s=20.0,
        timeout_s=150.0,
        wrappers=tuple((n, skewed(library, FAKE[n])) for n in (FAST, SLOW)),
        dashboard_port=0,  # the gateway picks a free one and logs it
    )
    seen: dict[str, str] = {}

    def skew_reported(obs: SwarmObserver, node: str) -> bool:
        return any("clock_skew_s" in t.values for t in obs.telemetry.get(node, []))

    def operator_looks(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        for p in procs.agents.values():  # LISTEN_S is short only for this period
            assert load_config(p.config).timing.telemetry_every_s == TELEMETRY_S, p.config
        reported = obs.wait_for(lambda: all(skew_reported(obs, n) for n in SKEW_S), 60)
        assert reported, {n: procs.agents[n].tail(8) for n in SKEW_S}
        seen["fleet ls"] = fleet_ls(cfg, procs, obs)
        seen["dashboard"] = dashboard(dashboard_url(procs))

    result = run_settled(cfg, operator_looks)

    # Both skewed devices committed and were included in every round: none waited out.
    assert [r.round for r in result.rounds] == [1, 2, 3, 4]
    for r in result.rounds:
        assert {FAST, SLOW} <= set(r.commits), (r.round, sorted(r.commits))
        assert {FAST, SLOW} <= set(r.included), (r.round, r.included, r.close_reason)
        assert r.close_reason == "all expected peers committed", r.close_reason
    # Their telemetry says how far off their wall clocks are; the others' are right.
    for node in result.layout.agent_configs:
        skew = result.telemetry_of(node).get("clock_skew_s")
        assert skew is not None and abs(skew - SKEW_S.get(node, 0.0)) <= TOLERANCE_S, (node, skew)
    # ... and so does the operator's table.
    table = seen["fleet ls"]
    for node, want in SKEW_S.items():
        cell = table_column(table, node, "clock skew s")
        assert cell and abs(float(cell) - want) <= TOLERANCE_S, (node, cell, table)
    # ... and the dashboard's device table.
    html, state = seen["dashboard"]
    assert ">clock skew s<" in html, html[:2000]
    devices = {d["id"]: d for d in state["devices"]}
    for node, want in SKEW_S.items():
        assert abs(devices[node]["clock_skew_s"] - want) <= TOLERANCE_S, devices[node]
        assert f"{devices[node]['clock_skew_s']:.1f}" in html
    # Each skewed device said so once in its log, and no submission of theirs was refused.
    for node in SKEW_S:
        log = (tmp_path / "logs" / f"{node}.log").read_text()
        assert log.count("this device's clock is") == 1, log[-3000:]
        assert "refused our submission" not in log, log[-3000:]
    included = {n: sum(n in r.included for r in result.rounds) for n in SKEW_S}
    print(
        "rounds included, skew s:", {n: (included[n], devices[n]["clock_skew_s"]) for n in SKEW_S}
    )
