"""Validation on every site in a real swarm (agent processes, a gateway, a real broker):
every site reports its held-out accuracy of every final model, signed, on the ledger, in
both merge modes; and a device that serves models refuses a worse one, keeps serving the
model it had, says why in its log and its telemetry, and ``fleet ls`` shows it; an operator
still rolls the held model out by command (docs/VALIDATION.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_swarm.cli.fleet import COLUMNS, FleetClient, _rows
from edge_swarm.learn.data import holdout
from edge_swarm.node.observer import SwarmObserver
from edge_swarm.site.demo import run_swarm
from edge_swarm.site.launch import SwarmProcesses
from edge_swarm.swarm.commands import Ack, make_command
from edge_swarm.swarm.merge import MergeRule
from ledger_lite import SigningKey
from ledger_lite.commits import row_tx

from .test_e2e import entries_of, small
from .waiting import run_settled

pytestmark = pytest.mark.network


def slices(result: Any) -> dict[str, tuple[int, int]]:
    """(train, held out) sample counts per agent, worked out from its data file."""
    out = {}
    for i, node in enumerate(sorted(result.layout.agent_configs)):
        data = np.load(result.config.workdir / "data" / f"agent-{i + 1:02d}.npz")
        h = holdout(data["X"], data["y"], result.config.val_fraction, f"{node}|0")
        out[node] = (len(h.y_train), len(h.y_val))
    return out


def reports(entries: list, swarm: str) -> dict[int, dict[str, dict[str, Any]]]:
    """round -> node -> (n_samples, metrics) as each agent signed them, from delta_commit
    entries and round_close rows alike (each row's signature checked here again)."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for e in entries:
        if e.kind == "delta_commit":
            out.setdefault(e.payload["round"], {})[e.author] = e.payload
        elif e.kind == "round_close" and "commits" in e.payload:
            for row in e.payload["commits"]:
                tx = row_tx(swarm, e.payload["round"], row)
                out.setdefault(e.payload["round"], {})[tx.author] = tx.payload
    return out


@pytest.mark.parametrize("merge_by", ["all", "committee"])
def test_every_site_reports_every_final_model_in_the_ledger(tmp_path: Path, merge_by: str) -> None:
    cfg = small(tmp_path, "embedded", n_agents=4, rounds=3, merge_by=merge_by, val_fraction=0.2)
    result = run_settled(cfg)
    entries = entries_of(result)
    agents = sorted(result.layout.agent_configs)
    sizes = slices(result)
    got = reports(entries, cfg.swarm)
    if merge_by == "committee":  # folded: no delta_commit entry, rows of 6 elements
        assert not [e for e in entries if e.kind == "delta_commit"]
        closes = [e for e in entries if e.kind == "round_close"]
        assert all(len(r) == 6 for e in closes for r in e.payload["commits"])
    for rnd in (1, 2, 3):
        assert sorted(got[rnd]) == agents, rnd
        for node in agents:
            p, (n_train, n_val) = got[rnd][node], sizes[node]
            assert p["n_samples"] == n_train  # the slice is not counted as training data
            m = p["metrics"]
            # Round r starts from round r - 1's final model: that is the one it scores.
            assert (m["val_round"], m["val_n"]) == (rnd - 1, n_val), (rnd, node, m)
            assert 0.0 <= m["val_acc"] <= 1.0
    # The model learns: every site scores round 2's model above the initial one's, on the mean.
    mean = {r: np.mean([got[r + 1][n]["metrics"]["val_acc"] for n in agents]) for r in (0, 2)}
    assert mean[2] > mean[0] + 0.2, mean
    # The last final model (round 3's) has no next commit: its score is in the telemetry.
    for node in agents:
        tm = result.telemetry[node]
        assert tm["val_round"] == 3 and tm["val_n"] == sizes[node][1] and 0 <= tm["val_acc"] <= 1


def test_a_serving_device_refuses_a_worse_model_and_keeps_serving_the_old_one(
    tmp_path: Path,
) -> None:
    # Two of four agents flip their deltas from round 3 on, and the plain mean follows them:
    # the swarm's model gets worse on purpose. Every device serves its models.
    bad = {"name": "sign_flip", "strength": 4.0, "from_round": 3}
    cfg = small(
        tmp_path,
        "embedded",
        n_agents=4,
        rounds=5,
        merge=MergeRule("fedavg", aggregator="mean"),
        serve=True,
        val_fraction=0.2,
        attacks=(("agent-03", bad), ("agent-04", bad)),
    )
    seen: dict[str, Any] = {}

    def operate(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        fleet = FleetClient(cfg.swarm, "127.0.0.1", obs.mqtt.port)
        fleet.start()
        try:
            assert obs.wait_for(lambda: obs.final_round() >= cfg.rounds, timeout=120)

            def held() -> bool:  # as of the last round (earlier telemetry may be queued)
                d = fleet.devices.get("agent-01")
                tm = d.telemetry if d is not None else {}
                return "serve_held_round" in tm and tm.get("val_round") == cfg.rounds

            assert fleet.wait(held, 30), {n: d.telemetry for n, d in fleet.devices.items()}
            seen["telemetry"] = dict(fleet.devices["agent-01"].telemetry)
            seen["rows"] = {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in _rows(fleet)}
            # The operator's word still goes: roll the held model out on agent-01.
            admin = SigningKey.load(cfg.workdir / "keys" / "admin.key")
            rnd = int(seen["telemetry"]["serve_held_round"])
            now = int(time.time() * 1000)
            cmd = make_command(
                admin, "admin", cfg.swarm, "agent-01", "rollout", {"round": rnd}, now
            )
            seen["rollout"] = (rnd, fleet.send(cmd, {"agent-01"}, 15.0))
        finally:
            fleet.stop()

    run_swarm(cfg, during=operate)
    tm = seen["telemetry"]
    held, kept = int(tm["serve_held_round"]), int(tm["serving_round"])
    assert held >= 3 and kept < held, tm  # a model of the bad rounds, refused
    assert tm["serve_held_acc"] < tm["serve_kept_acc"] - cfg.serve_margin
    log = log_of_agent(tmp_path, "agent-01")
    assert (
        f"not serving round {held}'s model" in log and f"against {tm['serve_kept_acc']:.4f}" in log
    )
    assert f"serving the model of round {kept} with" in log
    # fleet ls: the served round and the one held back, with both scores.
    cell = seen["rows"]["agent-01"]["serving"]
    assert cell.startswith(f"r{kept}; held back r{held}: val "), cell
    assert seen["rows"]["agent-01"]["val acc (of round)"].endswith(f"(r{cfg.rounds})")
    rnd, answers = seen["rollout"]
    ack = answers["agent-01"]
    assert isinstance(ack, Ack) and ack.status == "done" and f"serving round {rnd}" in ack.detail


def log_of_agent(workdir: Path, node: str) -> str:
    return (workdir / "logs" / f"{node}.log").read_text(errors="replace")
