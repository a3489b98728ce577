"""`edge-swarm demo --continuous` (issue 17): data arrives in steps while the swarm trains,
each site scores every model on its held-out slice, and the campaign ends by itself when
the sites' mean score stops improving, with the reason on the ledger and in summary.json.

The real command: agent processes, a gateway, a real broker.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_swarm.cli.main import CONTINUOUS_MAX_ROUNDS, main

pytestmark = pytest.mark.network


def test_demo_continuous_stops_on_convergence_by_itself(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    assert main(["demo", "--continuous", "--agents", "4", "--workdir", str(workdir)]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    rounds = summary["per_round"]
    assert summary["stop_reason"].startswith("converged"), summary["stop_reason"]
    assert len(rounds) < CONTINUOUS_MAX_ROUNDS  # the rule ended it, not the cap
    samples = [r["samples"] for r in rounds]
    assert samples == sorted(samples) and samples[0] < samples[-1]  # the data arrived
    # A quarter, then three steps; a step may reach some agents a round before the others
    # (it arrives as the round ends, while the next one starts), so a level may split in two.
    assert len(set(samples)) >= 4
    # Every site scored every model the rounds started from (the last one has no next round).
    for r in rounds[:-1]:
        assert len(r["site_validation"]) == 4, r
        assert all(0 <= v <= 1 for v in r["site_validation"].values())
    assert summary["final_accuracy"] > 0.8
    assert (workdir / "accuracy.png").stat().st_size > 10_000
