"""Detached fields (ledger_lite/detached.py): one entry, a full and a compact form with one
hash and one signature; full replicas keep and check the full form, light copies take the
compact one; an agent proves its own row against the signed digest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_lite import Entry, LedgerState
from ledger_lite import errors as E
from ledger_lite.canonical import canonical_bytes, sha256_hex
from ledger_lite.commits import commit_payload, commit_row
from ledger_lite.detached import (
    digest_of,
    hashed_payload,
    is_compact,
    is_digest,
    row_in,
    row_proof,
)

from .test_ledger_state import assert_refused
from .test_ledger_support import Swarm, round_open


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    s = Swarm(tmp_path / "ledger.db")
    s.enroll("gw1", "gateway")
    for a in ("a1", "a2", "a3"):
        s.enroll(a, "agent")
    s.submit("gw1", "round_open", round_open())
    yield s
    s.ledger.close()


def rows(swarm: Swarm, nodes: tuple[str, ...] = ("a1", "a2", "a3")) -> list[list[Any]]:
    return [
        commit_row(swarm.tx(n, "delta_commit", commit_payload(1, n, f"{i:064x}", 10 + i)))
        for i, n in enumerate(nodes)
    ]


def close(r: list[list[Any]]) -> dict[str, Any]:
    return {
        "round": 1,
        "included": [row[0] for row in r],
        "reason": "all in",
        "commits": r,
        "detached": ["commits", "included"],
    }


def test_the_full_and_the_compact_form_share_hash_and_signature(swarm: Swarm) -> None:
    full = swarm.submit("gw1", "round_close", close(rows(swarm)))
    compact = full.compact()
    assert compact is not full and is_compact("round_close", compact.payload)
    assert compact.hash == full.hash and compact.tx_id == full.tx_id
    assert len(compact.canonical()) < len(full.canonical())
    assert compact.payload["commits"] == digest_of(full.payload["commits"])
    assert compact.payload["included"] == {
        "digest": digest_of(["a1", "a2", "a3"])["digest"],
        "n": 3,
    }
    assert compact.compact() is compact
    # What the store keeps is the full form; the next entry chains to the shared hash.
    assert swarm.ledger.get(full.height) == full
    nxt = swarm.submit(
        "a2", "model_attest", {"round": 1, "model_hash": "0" * 64, "state_hash": "1" * 64}
    )
    assert nxt.prev_hash == compact.hash


def test_a_light_copy_takes_the_compact_form_and_a_full_replica_refuses_it(
    swarm: Swarm, tmp_path: Path
) -> None:
    led = swarm.ledger
    tx = swarm.tx("gw1", "round_close", close(rows(swarm)))
    full = tx.chain(led.height + 1, led.tip)
    compact = full.compact()
    assert_refused(swarm, E.BAD_PAYLOAD, lambda: led.append(compact))
    light = LedgerState.from_genesis(led.entries(0, 1)[0])
    light.light = True
    for e in led.entries(1):
        light.apply(e)
    light.apply(compact)  # chain, hash and the coordinator's signature all check
    assert light.tip == full.hash


def test_a_full_form_whose_rows_were_changed_does_not_verify(swarm: Swarm) -> None:
    led = swarm.ledger
    tx = swarm.tx("gw1", "round_close", close(rows(swarm)))
    entry = tx.chain(led.height + 1, led.tip)
    forged = dict(entry.to_dict())
    payload = dict(entry.payload)
    payload["commits"] = rows(swarm, ("a1", "a2"))  # a row left out after signing
    payload["included"] = ["a1", "a2"]
    forged["payload"] = payload
    assert_refused(swarm, E.BAD_SIGNATURE, lambda: led.append(Entry.from_dict(forged)))


def test_a_digest_not_named_in_detached_is_refused(swarm: Swarm) -> None:
    payload = close(rows(swarm))
    payload["detached"] = ["commits"]
    payload["included"] = digest_of(payload["included"])  # hashed as this dict: unverifiable
    assert_refused(swarm, E.BAD_PAYLOAD, lambda: swarm.submit("gw1", "round_close", payload))
    bad = close(rows(swarm))
    bad["detached"] = ["commits", "reason"]  # not a detachable field of round_close
    assert_refused(swarm, E.BAD_PAYLOAD, lambda: swarm.submit("gw1", "round_close", bad))


def test_an_entry_without_detached_hashes_as_it_always_did(swarm: Swarm) -> None:
    p = {"round": 1, "included": ["a1"], "reason": "deadline"}
    e = swarm.submit("gw1", "round_close", p)
    assert hashed_payload("round_close", e.payload) is e.payload and e.compact() is e
    assert e.hash == sha256_hex(canonical_bytes(e.to_dict()))  # the old rule, exactly


def test_an_agent_proves_its_row_against_the_signed_digest(swarm: Swarm) -> None:
    r = rows(swarm)
    compact = swarm.submit("gw1", "round_close", close(r)).compact()
    digest = compact.payload["commits"]
    for i, row in enumerate(r):
        proof = row_proof(r, i)
        assert row_in(row, i, proof, digest)
        assert not row_in(row, (i + 1) % 3, proof, digest)
        changed = [*row[:2], row[2] + 1, *row[3:]]
        assert not row_in(changed, i, proof, digest)
    assert not row_in(r[0], 0, ["zz"], digest)  # hostile input: False, never raises
    assert not row_in(r[0], 0, row_proof(r, 0), {"digest": "x", "n": 3})


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(0, 2**40) | st.text(max_size=8), min_size=1, max_size=5),
        max_size=40,
    )
)
def test_the_digest_of_any_list_proves_each_item(items: list[list[Any]]) -> None:
    d = digest_of(items)
    assert is_digest(d) and d["n"] == len(items) and digest_of(d) is d
    for i, item in enumerate(items):
        assert row_in(item, i, row_proof(items, i), d)


def test_the_model_final_merge_report_detaches(swarm: Swarm) -> None:
    payload = {
        "round": 1,
        "model_hash": "0" * 64,
        "state_hash": "1" * 64,
        "attesters": ["gw1"],
        "committee": ["a1", "gw1"],
        "merge": {"rule": "mean", "weights": {"a1": 0.5, "a2": 0.5}},
        "detached": ["merge"],
    }
    full = swarm.submit("gw1", "model_final", payload)
    compact = full.compact()
    assert compact.hash == full.hash and is_digest(compact.payload["merge"])
    assert compact.payload["attesters"] == ["gw1"]  # what a light agent checks stays whole
