"""A round's delta commits folded into its round_close (ledger_lite/commits.py): every
replica checks that each row is its agent's own signed commit, and refuses the entry
otherwise, leaving the ledger as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_lite import errors as E
from ledger_lite.commits import commit_payload, commit_row, commits_problem, row_tx
from ledger_lite.schema import payload_problem

from .test_ledger_state import assert_refused
from .test_ledger_support import SWARM, T0, Swarm, round_open


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    s = Swarm(tmp_path / "ledger.db")
    s.enroll("gw1", "gateway")
    s.enroll("a1", "agent", expires_ms=T0 + 1_000)
    s.enroll("a2", "agent")
    s.enroll("a3", "agent")
    s.submit("gw1", "round_open", round_open())
    yield s
    s.ledger.close()


def row(swarm: Swarm, node: str, sha: str = "e" * 64, n: int = 12, **kw: Any) -> list[Any]:
    """``node``'s folded commit to round 1, signed by its own key unless told otherwise."""
    return commit_row(swarm.tx(node, "delta_commit", commit_payload(1, node, sha, n), **kw))


def close(rows: list[list[Any]], included: list[str] | None = None) -> dict[str, Any]:
    nodes = [r[0] for r in rows] if included is None else included
    return {"round": 1, "included": nodes, "reason": "deadline", "commits": rows}


def test_a_close_with_its_agents_signed_commits_is_appended_as_one_entry(swarm: Swarm) -> None:
    before = swarm.ledger.height
    rows = [row(swarm, "a2"), row(swarm, "a3", "f" * 64, 30)]
    e = swarm.submit("gw1", "round_close", close(rows))
    assert swarm.ledger.height == before + 1 and e.payload["commits"] == rows
    # Anyone can rebuild each agent's transaction from its row and check it.
    tx = row_tx(SWARM, 1, rows[1])
    assert (tx.author, tx.payload["envelope_sha256"], tx.payload["n_samples"]) == (
        "a3",
        "f" * 64,
        30,
    )


def test_a_row_the_agent_did_not_sign_is_refused(swarm: Swarm) -> None:
    forged = row(swarm, "a3", key=swarm.keys["gw1"])  # the coordinator signs for a3
    rows = [row(swarm, "a2"), forged]
    assert_refused(swarm, E.BAD_SIGNATURE, lambda: swarm.submit("gw1", "round_close", close(rows)))
    changed = row(swarm, "a3")
    changed[2] = 9999  # a sample count the agent did not claim
    rows = [row(swarm, "a2"), changed]
    assert_refused(swarm, E.BAD_SIGNATURE, lambda: swarm.submit("gw1", "round_close", close(rows)))


def test_rows_must_name_exactly_the_included_nodes(swarm: Swarm) -> None:
    rows = [row(swarm, "a2"), row(swarm, "a3")]
    bad = close(rows, included=["a2", "a3", "gw1"])
    assert_refused(swarm, E.BAD_PAYLOAD, lambda: swarm.submit("gw1", "round_close", bad))
    bad = close(rows, included=["a2"])
    assert_refused(swarm, E.BAD_PAYLOAD, lambda: swarm.submit("gw1", "round_close", bad))


def test_a_row_of_a_revoked_expired_or_unknown_device_is_refused(swarm: Swarm) -> None:
    late = row(swarm, "a1", ts=T0 + 5_000)  # a1's enrolment expired at T0 + 1000
    expired = close([late])
    assert_refused(swarm, E.EXPIRED_AUTHOR, lambda: swarm.submit("gw1", "round_close", expired))
    signed = row(swarm, "a3")
    swarm.revoke("a3")
    revoked = close([signed])
    assert_refused(swarm, E.REVOKED_AUTHOR, lambda: swarm.submit("gw1", "round_close", revoked))
    ghost = [["zz", "e" * 64, 1, T0, "ab" * 64]]
    assert_refused(
        swarm, E.UNKNOWN_AUTHOR, lambda: swarm.submit("gw1", "round_close", close(ghost))
    )


def test_a_gateway_row_is_refused_by_the_policy(swarm: Swarm) -> None:
    rows = [row(swarm, "gw1")]  # gateways do not commit deltas
    assert_refused(
        swarm, E.ROLE_NOT_ALLOWED, lambda: swarm.submit("gw1", "round_close", close(rows))
    )


def test_the_schema_checks_the_rows_shape() -> None:
    good = [["a2", "e" * 64, 3, 5, "ab" * 64]]
    assert commits_problem(good) is None
    assert payload_problem("round_close", close(good)) is None
    assert "sorted" in commits_problem([good[0], good[0]])
    assert "row 0" in commits_problem([["a2", "E" * 64, 3, 5, "ab" * 64]])
    assert "row 0" in commits_problem([["a2", "e" * 64, -1, 5, "ab" * 64]])
    assert "sig" in commits_problem([["a2", "e" * 64, 3, 5, "AB" * 64]])
    assert "row 0" in commits_problem([["a2", "e" * 64, 3]])
    assert commits_problem({"a2": 1}) is not None


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=70),
        lambda inner: st.lists(inner, max_size=6),
        max_leaves=30,
    )
)
def test_the_rows_check_takes_any_json_and_never_raises(value: Any) -> None:
    problem = commits_problem(value)
    assert problem is None or isinstance(problem, str)
