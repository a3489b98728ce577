"""The ``campaign`` ledger kind: who may append it, and what shape it has."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger_lite import DEFAULT_POLICY, Ledger, make_genesis, make_tx
from ledger_lite.errors import Refused
from ledger_lite.schema import payload_problem

from .test_ledger_support import ADMIN_KEY, SWARM, T0, Swarm, seed_key


@pytest.fixture
def swarm(tmp_path: Path) -> Swarm:
    s = Swarm(tmp_path / "ledger.sqlite")
    s.enroll("gw-1", "gateway")
    s.enroll("agent-1", "agent")
    s.enroll("laptop", "observer")
    return s


@pytest.mark.parametrize(
    "payload",
    [
        {"op": "extend", "rounds": 3},
        {"op": "pause"},
        {"op": "pause", "reason": "ward move"},
        {"op": "resume"},
        {"op": "end", "reason": "enough"},
        {"op": "new"},
        {"op": "new", "rounds": 5, "reason": "new data"},
    ],
)
def test_an_admin_steers_a_campaign(swarm: Swarm, payload: dict) -> None:
    entry = swarm.submit("admin", "campaign", payload)
    assert entry.kind == "campaign" and swarm.ledger.state.height == entry.height


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"op": "extend"}, "extend needs rounds"),
        ({"op": "extend", "rounds": 0}, "campaign.rounds must be an int in [1"),
        ({"op": "extend", "rounds": True}, "campaign.rounds must be an int"),
        ({"op": "extend", "rounds": 2.0}, "campaign.rounds must be an int"),
        ({"op": "pause", "rounds": 2}, "pause takes no rounds"),
        ({"op": "stop"}, "campaign.op must be one of"),
        ({"op": None}, "campaign.op must be one of"),
        ({}, "missing ['op']"),
        ({"op": "end", "reason": "x" * 2000}, "campaign.reason must be a string"),
        ({"op": "end", "why": "x"}, "unknown fields ['why']"),
    ],
)
def test_a_malformed_campaign_entry_is_refused(swarm: Swarm, payload: dict, problem: str) -> None:
    assert problem in (payload_problem("campaign", payload) or "")
    with pytest.raises(Refused) as err:
        swarm.submit("admin", "campaign", payload)
    assert err.value.reason == "bad_payload"


@pytest.mark.parametrize("author", ["agent-1", "laptop"])
def test_an_agent_or_observer_may_not_touch_a_campaign(swarm: Swarm, author: str) -> None:
    for payload in ({"op": "extend", "rounds": 1}, {"op": "end", "reason": "done"}):
        with pytest.raises(Refused) as err:
            swarm.submit(author, "campaign", payload)
        assert err.value.reason == "role_not_allowed"


def test_a_gateway_may_only_end_a_campaign_and_must_say_why(swarm: Swarm) -> None:
    for payload in (
        {"op": "extend", "rounds": 1},
        {"op": "pause", "reason": "x"},
        {"op": "new"},
        {"op": "end"},
        {"op": "end", "reason": "   "},
    ):
        with pytest.raises(Refused) as err:
            swarm.submit("gw-1", "campaign", payload)
        assert err.value.reason == "role_not_allowed", payload
        assert "may only end a campaign, with a reason" in str(err.value)
    reason = "converged: mean validation accuracy improved < 0.005 for 3 rounds"
    entry = swarm.submit("gw-1", "campaign", {"op": "end", "reason": reason})
    assert entry.author == "gw-1"


def test_a_forged_admin_signature_is_refused(swarm: Swarm) -> None:
    forger = seed_key(99)
    with pytest.raises(Refused) as err:
        swarm.submit("admin", "campaign", {"op": "extend", "rounds": 100}, key=forger)
    assert err.value.reason == "bad_signature"
    # A key nobody enrolled, under a name of its own, is nobody.
    swarm.keys["mallory"] = forger
    with pytest.raises(Refused) as err:
        swarm.submit("mallory", "campaign", {"op": "end", "reason": "stop"})
    assert err.value.reason == "unknown_author"


def test_a_replayed_campaign_entry_is_refused(swarm: Swarm) -> None:
    tx = swarm.tx("admin", "campaign", {"op": "pause"})
    swarm.ledger.submit(tx)
    with pytest.raises(Refused) as err:
        swarm.ledger.submit(tx)
    assert err.value.reason == "replay"


def test_a_genesis_whose_policy_predates_campaigns_refuses_them(tmp_path: Path) -> None:
    old = {k: v for k, v in DEFAULT_POLICY.items() if k != "campaign"}
    g = make_genesis(ADMIN_KEY, "admin", SWARM, policy=old, params={"rounds": 3}, ts=T0)
    ledger = Ledger.create(tmp_path / "old.sqlite", g)
    tx = make_tx(ADMIN_KEY, SWARM, "campaign", "admin", {"op": "extend", "rounds": 1}, T0 + 1)
    with pytest.raises(Refused) as err:
        ledger.submit(tx)
    assert err.value.reason == "role_not_allowed"
