"""Robust merge rules in a real swarm: every agent still ends each round on the same bytes,
whatever the rule, and a poisoned run's ledger says who was down-weighted.

Agents are separate processes; each merges the included deltas itself and attests the hash
of what it got. The rule is fixed at genesis, so each rule is a swarm of its own; the swarms
run side by side (tests/side_runs.py), each test checking its own.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edge_swarm.cli.main import main
from edge_swarm.site.demo import RunResult
from edge_swarm.swarm.merge import MergeRule

from .side_runs import side_by_side
from .test_e2e import _same_bytes_every_round, small
from .waiting import run_settled

pytestmark = pytest.mark.network

RULES = [
    pytest.param(MergeRule("fedadam", server_lr=0.05, aggregator="mean"), id="mean+fedadam"),
    pytest.param(MergeRule("fedyogi", server_lr=0.05, aggregator="median"), id="median+fedyogi"),
    pytest.param(MergeRule("fedavgm", momentum=0.5, aggregator="trimmed_mean", f=1), id="trimmed"),
    pytest.param(MergeRule("fedavg", aggregator="geomed", clip=5.0), id="geomed+clip"),
    pytest.param(MergeRule("fedavg", aggregator="krum", f=1), id="krum"),
    pytest.param(MergeRule("fedavg", aggregator="multikrum", f=1), id="multikrum"),
    pytest.param(MergeRule("fedavg", aggregator="bulyan", f=1), id="bulyan"),
    pytest.param(
        MergeRule("fedavgm", momentum=0.5, aggregator="median", f=1, mix="nnm"), id="nnm+median"
    ),
]
POISONED_RULES = [
    pytest.param(MergeRule("fedavg", aggregator="multikrum", f=2), id="multikrum"),
    pytest.param(
        MergeRule("fedavgm", momentum=0.5, aggregator="median", f=2, mix="nnm"),
        id="nnm+median",
    ),
]
ATTACK = {"name": "sign_flip", "strength": 4.0}


def poisoned_run(workdir: Path, rule: MergeRule) -> RunResult:
    cfg = small(
        workdir,
        "embedded",
        n_agents=8,
        rounds=5,
        min_peers=8,
        merge=rule,
        attacks=(("agent-07", ATTACK), ("agent-08", ATTACK)),
    )
    return run_settled(replace(cfg, timeout_s=200.0))


def every_rule_run(workdir: Path, rule: MergeRule) -> RunResult:
    n = 7 if rule.aggregator == "bulyan" else 5  # bulyan needs n >= 4f + 3
    return run_settled(small(workdir, "embedded", n_agents=n, rounds=2, merge=rule, min_peers=n))


# The poisoned runs are the longest: their tests come first, so that they start first.
@side_by_side(poisoned_run)
@pytest.mark.parametrize("rule", POISONED_RULES)
def test_a_poisoned_run_names_the_poisoners_in_the_audit(
    rule: MergeRule, side_run: RunResult, capsys: pytest.CaptureFixture[str]
) -> None:
    result = side_run
    assert result.config.merge == rule
    assert result.final_accuracy > 0.8, [r.accuracy for r in result.rounds]
    assert main(["audit", str(result.layout.ledger_path), "--json"]) == 0
    rounds = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert len(rounds) == 5
    flagged = [set(r["down_weighted"]) for r in rounds]
    for poisoner in ("agent-07", "agent-08"):
        assert sum(poisoner in f for f in flagged) >= 4, flagged  # most rounds
    honest = {f"agent-0{i}" for i in range(1, 7)}
    assert sum(len(f & honest) for f in flagged) <= 2, flagged
    # The human table: one line per node, the poisoners first.
    assert main(["audit", str(result.layout.ledger_path)]) == 0
    table = capsys.readouterr().out
    assert f"what the merge rule ({rule.aggregation}) did with each node" in table
    lines = [ln for ln in table.splitlines() if "agent-0" in ln and "(" in ln and "%" in ln]
    assert [ln.split()[1] for ln in lines[:2]] == ["agent-07", "agent-08"], lines


@side_by_side(every_rule_run)
@pytest.mark.parametrize("rule", RULES)
def test_every_rule_ends_every_agent_on_the_same_bytes(
    rule: MergeRule, side_run: RunResult
) -> None:
    result = side_run
    assert result.config.merge == rule
    _same_bytes_every_round(result)
    finals = [e for e in result.events if e.kind == "model_final"]
    assert finals and all(e.payload["merge"]["rule"] == rule.aggregation for e in finals)
