"""New records arriving during a run (issue 17): agents start with a quarter of their data,
the rest comes in three steps, and each agent's sample count on the ledger follows.

Agent processes, a gateway, a real broker; the data arrives as files renamed into each
agent's data directory (site/data_arrivals.py) as the observer sees rounds 2, 4 and 6 end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_e2e import entries_of, small
from .waiting import run_settled

pytestmark = pytest.mark.network

STEPS, EVERY, ROUNDS = 3, 2, 9


def test_sample_counts_on_the_ledger_follow_the_data_as_it_arrives(tmp_path: Path) -> None:
    cfg = small(
        tmp_path,
        "embedded",
        rounds=ROUNDS,
        merge_by="committee",
        committee_k=1,
        data_steps=STEPS,
        data_every=EVERY,
        val_fraction=0.0,  # the counts below are whole files (a slice: test_validation.py)
    )
    result = run_settled(cfg)
    arrivals = result.arrivals
    assert arrivals is not None
    agents = sorted(result.layout.agent_configs)
    levels = [arrivals.samples_after(k) for k in range(STEPS + 1)]
    assert levels[0] != levels[-1]
    seen: dict[str, list[int]] = {a: [] for a in agents}
    for e in entries_of(result):
        if e.kind == "round_close" and e.payload["commits"]:
            rows = {row[0]: row[2] for row in e.payload["commits"]}
            assert sorted(rows) == agents, e.payload["round"]
            for a in agents:
                seen[a].append(rows[a])
    for i, a in enumerate(agents):
        counts = seen[a]
        assert len(counts) == ROUNDS, (a, counts)
        steps_in = [[lv[i] for lv in levels].index(n) for n in counts]  # ValueError: unknown
        assert steps_in == sorted(steps_in), (a, counts)  # data only grows
        for rnd, k in enumerate(steps_in, start=1):
            # Step k is released as round k * EVERY ends: no round up to it trains on it.
            assert k <= min(STEPS, (rnd - 1) // EVERY), (a, rnd, counts)
        assert counts[0] == arrivals.first[i]
        assert counts[-1] == levels[-1][i], (a, counts)  # everything arrived and was used
    assert result.final_accuracy > 0.5
