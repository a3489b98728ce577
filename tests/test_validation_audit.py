"""``edge-swarm audit`` shows each round's final model as each site scored it on its held-out
slice, read from delta_commit entries ("all") and from round_close rows ("committee") alike;
a score filed under the round whose model it scores, never trusted beyond its shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_swarm.cli.audit import run_audit
from edge_swarm.swarm.audit import audit_rounds, site_scores
from ledger_lite import Ledger, make_tx
from ledger_lite.commits import commit_payload, commit_row

from .test_audit import KEYS, SWARM, T0, Chain, _h, args

SCORES = {1: {"a1": 0.5, "a2": 0.25}, 2: {"a1": 0.75, "a2": 0.5, "a3": 1.0}}


def val(node: str, rnd: int) -> dict[str, Any]:
    return {"val_acc": SCORES[rnd][node], "val_n": 4, "val_round": rnd}


def build() -> Chain:
    """Round 2: every agent appends its commit with its score of round 1's model ("all").
    Round 3: the commits are rows of round_close, a3's without a score (an old row)."""
    c = Chain()
    for node in KEYS:
        role = "gateway" if node == "gw" else "agent"
        pub = KEYS[node].public_hex
        c.add("admin", "enroll", {"node": node, "role": role, "pubkey": pub, "expires_ms": None})
    for rnd in (1, 2, 3):
        c.add("gw", "round_open", {"round": rnd, "base_model_hash": _h("m"), "deadline_ms": T0})
        if rnd == 2:
            for node in ("a1", "a2"):
                p = commit_payload(2, node, _h(node), 10, {"loss": 0.1, **val(node, 1)})
                c.add(node, "delta_commit", p)
        if rnd == 3:
            rows = []
            for node in ("a1", "a2", "a3"):
                p = commit_payload(3, node, _h(node), 10, val(node, 2) if node != "a3" else {})
                rows.append(commit_row(make_tx(KEYS[node], SWARM, "delta_commit", node, p, T0)))
            close = {"round": 3, "included": ["a1", "a2", "a3"], "reason": "all", "commits": rows}
            c.add("gw", "round_close", close)
    return c


def test_scores_are_filed_under_the_round_whose_model_they_score() -> None:
    rounds = audit_rounds(build().entries)
    assert rounds[1].validation == {"a1": (0.5, 4), "a2": (0.25, 4)}
    assert rounds[2].validation == {"a1": (0.75, 4), "a2": (0.5, 4)}  # a3: an old 5-row
    assert rounds[3].validation == {}
    assert rounds[1].val_mean() == pytest.approx(0.375)
    assert rounds[2].val_worst() == ("a2", 0.5)
    assert rounds[2].to_dict()["validation"]["a1"] == {"val_acc": 0.75, "val_n": 4}


def test_a_score_of_a_model_not_yet_made_or_of_odd_shape_is_no_score() -> None:
    c = build()
    odd = [
        {"val_acc": 0.5, "val_n": 4, "val_round": 5},  # a later round than the commit's
        {"val_acc": 1.5, "val_n": 4, "val_round": 1},
        {"val_acc": True, "val_n": 4, "val_round": 1},
        {"val_acc": 0.5, "val_n": 0, "val_round": 1},
        {"val_acc": "0.5", "val_n": 4, "val_round": 1},
    ]
    for m in odd:
        e = c.add("a3", "delta_commit", commit_payload(3, "a3", _h("x"), 1, m))
        assert list(site_scores(e)) == [], m


def test_the_command_prints_each_sites_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    chain = build()
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.create(path, chain.entries[0])
    for entry in chain.entries[1:]:
        ledger.append(entry)
    ledger.close()
    assert run_audit(args(path)) == 0
    out = capsys.readouterr().out.split("validation:")[1]  # the table after the others
    row1 = next(line for line in out.splitlines() if line.strip("│ ").startswith("1 "))
    assert "0.375" in row1 and "a2" in row1 and "0.500" in row1 and "0.250" in row1
    row2 = next(line for line in out.splitlines() if line.strip("│ ").startswith("2 "))
    assert "0.625" in row2 and "0.750" in row2  # a3 reported nothing: no column
    assert "held-out samples per site: a1 4, a2 4" in out
