"""Transactions, entries and payload schemas; the decoders take any input."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_lite import GENESIS_PREV, Entry, Tx, canonical_bytes, make_tx, sha256_hex
from ledger_lite.entry import ENTRY_FIELDS
from ledger_lite.errors import DecodeError
from ledger_lite.schema import payload_problem

from .test_ledger_support import ADMIN_KEY, SWARM, T0, delta_commit, genesis, round_open

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


def _valid_entry() -> Entry:
    return make_tx(ADMIN_KEY, SWARM, "round_open", "admin", round_open(), ts=T0 + 5).chain(
        3, "ab" * 32
    )


def _field_values(valid: Any) -> st.SearchStrategy[Any]:
    return st.just(valid) | anything | st.text(alphabet="0123456789abcdef", max_size=130)


@st.composite
def entry_like_dicts(draw: st.DrawFn) -> dict[Any, Any]:
    """Mostly-valid entry dicts with some fields replaced, dropped or added."""
    base = _valid_entry().to_dict()
    out: dict[Any, Any] = {}
    for name in ENTRY_FIELDS:
        if draw(st.integers(0, 9)) == 0:
            continue  # drop the field
        out[name] = draw(_field_values(base[name]))
    if draw(st.booleans()):
        out[draw(st.text(max_size=5) | st.integers())] = draw(anything)
    return out


def test_tx_and_entry_basics() -> None:
    tx = make_tx(ADMIN_KEY, SWARM, "config", "admin", {"blob": b"\x01\x02"}, ts=T0)
    assert tx.payload == {"blob": "0102"}  # bytes become hex once, at signing time
    assert tx.tx_id == sha256_hex(tx.signing_bytes() + bytes.fromhex(tx.sig))
    e = tx.chain(1, "cd" * 32)
    assert e.tx == tx and e.tx_id == tx.tx_id
    assert e.hash == sha256_hex(e.canonical())
    assert json.loads(e.canonical()) == e.to_dict()
    assert Entry.from_bytes(e.canonical()) == e
    assert Tx.from_dict(json.loads(canonical_bytes(tx.to_dict()))) == tx
    assert Tx.from_bytes(canonical_bytes(tx.to_dict())) == tx
    with pytest.raises(DecodeError):
        Tx.from_bytes(canonical_bytes(e.to_dict()))  # an entry is not a tx
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.height = 2  # type: ignore[misc]
    assert len({e, Entry.from_dict(e.to_dict())}) == 1


def test_make_tx_copies_payload() -> None:
    payload: dict[str, Any] = {"xs": [1, 2]}
    tx = make_tx(ADMIN_KEY, SWARM, "config", "admin", payload, ts=T0)
    payload["xs"].append(3)
    assert tx.payload == {"xs": [1, 2]}


def test_make_genesis() -> None:
    g = genesis(extra_admins={"admin2": "11" * 32})
    assert (g.height, g.prev_hash, g.kind, g.author) == (0, GENESIS_PREV, "genesis", "admin")
    assert g.payload["admins"] == {"admin": ADMIN_KEY.public_hex, "admin2": "11" * 32}
    assert g.payload["policy"]["delta_commit"] == ["agent"]
    assert payload_problem("genesis", g.payload) is None


@pytest.mark.parametrize(
    "change",
    [
        {"height": -1},
        {"height": True},
        {"height": 1.0},
        {"prev_hash": "AB" * 32},
        {"prev_hash": "ab" * 31},
        {"swarm": "bad swarm"},
        {"author": "x" * 65},
        {"kind": ""},
        {"ts": "1"},
        {"ts": 2**63},
        {"payload": []},
        {"payload": {"x": float("nan")}},
        {"payload": {"x": b"bytes"}},
        {"payload": {1: "int key"}},
        {"sig": "00" * 63},
    ],
)
def test_from_dict_refuses_bad_fields(change: dict[str, Any]) -> None:
    d = {**_valid_entry().to_dict(), **change}
    with pytest.raises(DecodeError):
        Entry.from_dict(d)
    with pytest.raises(ValueError):
        Entry(**d)


def test_from_dict_refuses_missing_and_extra_fields() -> None:
    d = _valid_entry().to_dict()
    with pytest.raises(DecodeError, match="missing"):
        Entry.from_dict({k: v for k, v in d.items() if k != "sig"})
    with pytest.raises(DecodeError, match="unknown"):
        Entry.from_dict({**d, "extra": 1})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"a":NaN}',
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"height":1,"height":2}',
        json.dumps(_valid_entry().to_dict()).encode("utf-16"),
        b"x" * (64 * 1024 + 1),
    ],
)
def test_from_bytes_refuses(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Entry.from_bytes(data)


@settings(max_examples=300)
@given(st.one_of(anything, entry_like_dicts()))
def test_from_dict_raises_only_decode_error(data: Any) -> None:
    try:
        e = Entry.from_dict(data)
    except DecodeError:
        return
    assert Entry.from_bytes(e.canonical()) == e  # anything accepted round-trips


@given(st.binary(max_size=300), st.integers(0, 2000), st.integers(1, 255))
def test_from_bytes_raises_only_decode_error(junk: bytes, pos: int, flip: int) -> None:
    for data in (junk, _flip(_valid_entry().canonical(), pos, flip)):
        with contextlib.suppress(DecodeError):
            Entry.from_bytes(data)


def _flip(data: bytes, pos: int, xor: int) -> bytes:
    pos %= len(data)
    return data[:pos] + bytes([data[pos] ^ xor]) + data[pos + 1 :]


def _final(**extra: Any) -> dict[str, Any]:
    """A model_final payload with ``extra`` optional fields."""
    return {"round": 1, "model_hash": "00" * 32, "state_hash": "11" * 32, "attesters": [], **extra}


@pytest.mark.parametrize(
    "kind, payload, problem",
    [
        ("round_open", round_open(), None),
        ("delta_commit", delta_commit("a1"), None),
        ("config", {"anything": [1, 2]}, None),
        ("fleet_command", {"cmd": "reboot"}, None),
        ("round_close", {"round": 1, "included": ["a", "b"], "reason": "min_peers"}, None),
        ("round_close", {"round": 1, "included": [], "reason": "deadline"}, None),
        ("round_close", {"round": 1, "included": ["b", "a"], "reason": ""}, "sorted"),
        ("round_close", {"round": 1, "included": ["a", "a"], "reason": ""}, "sorted"),
        ("round_close", {"round": 1, "included": ["a b"], "reason": ""}, "list of ids"),
        ("round_open", {**round_open(), "extra": 1}, "unknown fields"),
        ("round_open", {"round": 1}, "missing"),
        ("round_open", {**round_open(), "round": -1}, "round"),
        ("round_open", {**round_open(), "round": True}, "round"),
        ("round_open", {**round_open(), "base_model_hash": "AB" * 32}, "base_model_hash"),
        ("delta_commit", {**delta_commit("a1"), "metrics": []}, "metrics"),
        ("delta_commit", {**delta_commit("a1"), "n_samples": 1.5}, "n_samples"),
        ("enroll", {"node": "n", "role": "king", "pubkey": "00" * 32, "expires_ms": None}, "role"),
        ("enroll", {"node": "n", "role": "agent", "pubkey": "00" * 32, "expires_ms": 5}, None),
        ("revoke", {"node": "n", "reason": "x" * 2000}, "reason"),
        ("model_attest", {"round": 1, "model_hash": "00" * 32, "state_hash": "11" * 32}, None),
        (
            "model_final",
            {"round": 1, "model_hash": "00" * 32, "state_hash": "11" * 32, "attesters": ["a"]},
            None,
        ),
        ("model_final", _final(abandoned="no merge in time"), None),
        ("model_final", _final(abandoned=7), "abandoned"),
        ("model_final", _final(committee=["a1", "gw"]), None),  # merge_by = committee
        ("model_final", _final(committee=[]), None),
        ("model_final", _final(committee=["gw", "a1"]), "model_final.committee"),
        ("model_final", _final(committee=["a1", "a1"]), "sorted and unique"),
        ("model_final", _final(committee=["a 1"]), "list of ids"),
        ("model_final", _final(committee="gw"), "list of ids"),
        ("model_final", _final(members=["gw"]), "unknown fields"),  # only the listed ones
        ("mint", {}, "unknown kind"),
        ("config", [], "JSON object"),
    ],
)
def test_payload_schemas(kind: str, payload: Any, problem: str | None) -> None:
    found = payload_problem(kind, payload)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
