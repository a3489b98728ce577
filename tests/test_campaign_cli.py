"""The operator's side of campaigns without a site: signing, checking a ledger copy, the table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edge_swarm.cli.campaign import _print_status
from edge_swarm.cli.main import main
from edge_swarm.site.campaigns import _verify, campaign_of, campaign_tx
from edge_swarm.site.operator import OperatorError
from ledger_lite import keys

from .test_ledger_support import ADMIN_KEY, SWARM, Swarm, round_open


def test_a_campaign_entry_is_checked_before_it_is_signed() -> None:
    tx = campaign_tx(ADMIN_KEY, SWARM, "extend", 3, "more data")
    assert tx.payload == {"op": "extend", "rounds": 3, "reason": "more data"}
    assert keys.verify(ADMIN_KEY.public_hex, tx.signing_bytes(), bytes.fromhex(tx.sig))
    with pytest.raises(OperatorError, match="extend needs rounds"):
        campaign_tx(ADMIN_KEY, SWARM, "extend")
    with pytest.raises(OperatorError, match="--rounds must be an int in"):
        campaign_tx(ADMIN_KEY, SWARM, "new", 0)
    with pytest.raises(OperatorError, match="a campaign op is one of extend, pause"):
        campaign_tx(ADMIN_KEY, SWARM, "stop")


@pytest.fixture
def chain(tmp_path: Path) -> Swarm:
    s = Swarm(tmp_path / "ledger.sqlite")  # genesis params {rounds: 3}
    s.enroll("gw-1", "gateway")
    for rnd in (1, 2):
        s.submit("gw-1", "round_open", round_open(rnd))
        final = {"round": rnd, "model_hash": "ab" * 32, "state_hash": "cd" * 32, "attesters": []}
        s.submit("gw-1", "model_final", final)
    s.submit("admin", "campaign", {"op": "extend", "rounds": 2})
    s.submit("admin", "campaign", {"op": "pause", "reason": "ward move"})
    return s


def test_the_status_folds_a_verified_copy_of_the_chain(chain: Swarm) -> None:
    entries = chain.ledger.entries(0)
    _verify(entries)
    st = campaign_of(entries).status()
    assert (st["number"], st["state"], st["budget"], st["remaining"]) == (1, "paused", 5, 3)
    assert (st["opened"], st["finished"], st["paused"]) == (2, 2, "ward move")


def test_a_copy_that_does_not_verify_is_refused(chain: Swarm) -> None:
    entries = chain.ledger.entries(0)
    forged = replace(entries[-1], payload={"op": "resume"})  # the admin never signed this
    with pytest.raises(OperatorError, match="does not verify: bad_signature"):
        _verify([*entries[:-1], forged])
    with pytest.raises(OperatorError, match="does not verify"):
        _verify([entries[0], *entries[2:]])  # a gap
    with pytest.raises(OperatorError, match="ledger is empty"):
        _verify([])


def test_the_status_table_says_state_why_budget_and_rule(
    chain: Swarm, capsys: pytest.CaptureFixture[str]
) -> None:
    st = campaign_of(chain.ledger.entries(0)).status()
    _print_status(SWARM, st)
    out = capsys.readouterr().out
    for text in ("paused (ward move)", "budget (rounds)", "2 / 2", "stop rule", "none reported"):
        assert text in out, text
    ended = {**st, "state": "ended", "ended": "converged: ...", "ended_by": "gw-1"}
    ended |= {"budget": None, "remaining": None, "means": {4: 0.91, 5: 0.912}}
    ended["stop"] = {"metric": "val_acc", "patience": 3, "min_delta": 0.005}
    _print_status(SWARM, ended)
    out = capsys.readouterr().out
    for text in ("ended (converged: ...)", "open-ended", "gw-1", "5: 0.9120", "patience 3"):
        assert text in out, text
    json.dumps(st)  # --json prints it as it is


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["campaign", "extend", "--broker", "h:1", "--swarm", "s"], "the following arguments"),
        (["campaign", "extend", "x", "--broker", "h:1", "--swarm", "s"], "not a whole number"),
        (["campaign", "pause", "--broker", "h:1", "--swarm", "s"], "--admin-key"),
        (["campaign", "halt", "--broker", "h:1", "--swarm", "s"], "invalid choice"),
    ],
)
def test_the_command_line_says_what_is_wrong(
    argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert problem in capsys.readouterr().err


def test_a_bad_broker_address_is_an_error_not_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["campaign", "status", "--broker", "nohost", "--swarm", "s"]) == 2
    assert "--broker takes HOST:PORT" in capsys.readouterr().err
