"""The ledger mirror: in order, out of order, duplicates, and entries that must be refused."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.swarm import mirror as mirror_mod
from edge_swarm.swarm.mirror import LedgerMirror, MirrorError
from ledger_lite import Entry, SigningKey, make_genesis, make_tx

SWARM = "clinic"
ADMIN = SigningKey.generate()
GATEWAY = SigningKey.generate()
AGENT = SigningKey.generate()
T0 = 1_700_000_000_000


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_chain(rounds: int = 3, admin: SigningKey = ADMIN) -> list[Entry]:
    """A valid chain: genesis, two enrolments, then open/commit/close per round."""
    chain = [make_genesis(admin, "admin", SWARM, params={"lr": 0.1}, ts=T0)]

    def add(key: SigningKey, kind: str, author: str, payload: dict[str, Any]) -> None:
        tx = make_tx(key, SWARM, kind, author, payload, ts=T0 + len(chain))
        chain.append(tx.chain(len(chain), chain[-1].hash))

    for node, role, key in (("gw", "gateway", GATEWAY), ("pi-1", "agent", AGENT)):
        payload = {"node": node, "role": role, "pubkey": key.public_hex, "expires_ms": None}
        add(admin, "enroll", "admin", payload)
    for r in range(1, rounds + 1):
        add(
            GATEWAY,
            "round_open",
            "gw",
            {"round": r, "base_model_hash": _h(f"m{r}"), "deadline_ms": T0},
        )
        add(
            AGENT,
            "delta_commit",
            "pi-1",
            {
                "round": r,
                "node": "pi-1",
                "envelope_sha256": _h(f"e{r}"),
                "n_samples": 9,
                "metrics": {},
            },
        )
        add(GATEWAY, "round_close", "gw", {"round": r, "included": ["pi-1"], "reason": "all in"})
    return chain


CHAIN = build_chain()
RAW = [e.to_dict() for e in CHAIN]


def tampered(height: int) -> dict[str, Any]:
    raw = dict(RAW[height])
    raw["ts"] = raw["ts"] + 1  # still well formed, but the signature no longer covers it
    return raw


def test_in_order_applies_each_entry_as_it_comes() -> None:
    m = LedgerMirror(CHAIN[0].hash)
    assert m.state is None and m.next_height == 0 and m.tip_hash is None
    for entry, raw in zip(CHAIN, RAW, strict=True):
        assert m.offer(raw) == [entry]
        assert m.next_height == entry.height + 1 and m.tip_hash == entry.hash
        assert not m.gap
    assert m.state is not None
    assert m.state.height == CHAIN[-1].height and m.state.tip == CHAIN[-1].hash
    assert m.state.public_key("pi-1") == AGENT.public_hex


def test_without_a_configured_genesis_any_valid_one_is_taken() -> None:
    m = LedgerMirror()
    assert m.offer(RAW[0]) == [CHAIN[0]]
    assert m.state is not None and m.state.genesis_hash == CHAIN[0].hash


def test_out_of_order_is_buffered_then_applied_in_order() -> None:
    m = LedgerMirror(CHAIN[0].hash)
    assert m.offer(RAW[0]) == [CHAIN[0]]
    assert m.offer(RAW[3]) == []
    assert m.gap
    assert m.offer(RAW[2]) == []
    assert m.next_height == 1 and m.gap
    assert m.offer(RAW[1]) == CHAIN[1:4]
    assert not m.gap and m.next_height == 4 and m.tip_hash == CHAIN[3].hash


def test_reversed_chain_comes_out_whole_when_genesis_arrives() -> None:
    m = LedgerMirror(CHAIN[0].hash)
    for raw in reversed(RAW[1:]):
        assert m.offer(raw) == []
    assert m.gap and m.state is None
    assert m.offer(RAW[0]) == CHAIN
    assert not m.gap


def test_duplicates_are_ignored() -> None:
    m = LedgerMirror(CHAIN[0].hash)
    m.offer(RAW[0])
    m.offer(RAW[2])
    m.offer(RAW[2])  # a duplicate waiting in the buffer
    assert m.offer(RAW[1]) == CHAIN[1:3]
    for raw in RAW[:3]:  # already applied: replayed events
        assert m.offer(raw) == []
    assert m.next_height == 3 and not m.gap


def test_wrong_genesis_is_refused() -> None:
    other = build_chain(1, admin=SigningKey.generate())
    m = LedgerMirror(CHAIN[0].hash)
    with pytest.raises(MirrorError, match="genesis"):
        m.offer(other[0].to_dict())
    assert m.state is None and m.next_height == 0 and m.tip_hash is None
    assert m.offer(RAW[0]) == [CHAIN[0]]


def test_wrong_genesis_also_clears_what_was_buffered_behind_it() -> None:
    other = [e.to_dict() for e in build_chain(1, admin=SigningKey.generate())]
    m = LedgerMirror(CHAIN[0].hash)
    m.offer(other[1])
    m.offer(other[2])
    assert m.gap
    with pytest.raises(MirrorError):
        m.offer(other[0])
    assert not m.gap
    assert m.offer(RAW[0]) == [CHAIN[0]]  # the right chain is not blocked by the wrong one
    assert m.offer(RAW[1]) == [CHAIN[1]]


def test_a_genesis_that_is_not_one_is_refused() -> None:
    m = LedgerMirror()
    bad = dict(RAW[0], kind="config")
    with pytest.raises(MirrorError, match="refused"):
        m.offer(bad)
    assert m.state is None


def test_tampered_entry_raises_and_clears_the_buffer() -> None:
    m = LedgerMirror(CHAIN[0].hash)
    m.offer(RAW[0])
    m.offer(RAW[1])
    m.offer(RAW[3])
    m.offer(RAW[4])
    assert m.gap
    with pytest.raises(MirrorError, match="entry 2 refused"):
        m.offer(tampered(2))
    assert not m.gap and m.discarded == 0
    assert m.next_height == 2 and m.tip_hash == CHAIN[1].hash
    # the state was not touched; the genuine entry still goes in, the rest is fetched again
    assert m.offer(RAW[2]) == [CHAIN[2]]
    assert m.offer(RAW[3]) == [CHAIN[3]]


def test_a_bad_buffered_entry_does_not_hide_the_good_ones_before_it() -> None:
    """The offered entry is good and applied; a bad one waiting behind it must not turn
    that into an exception, or the caller never hears of the entry that was applied."""
    m = LedgerMirror(CHAIN[0].hash)
    m.offer(RAW[0])
    m.offer(RAW[2])
    m.offer(tampered(3))
    m.offer(RAW[4])
    assert m.offer(RAW[1]) == CHAIN[1:3]
    assert m.next_height == 3 and not m.gap  # what waited behind the bad one is gone
    assert m.discarded == 1
    assert m.offer(RAW[3]) == [CHAIN[3]]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "entry",
        [],
        {},
        {k: v for k, v in RAW[1].items() if k != "sig"},
        dict(RAW[1], extra=1),
        dict(RAW[1], height=-1),
        dict(RAW[1], height=True),
        dict(RAW[1], prev_hash="00"),
        dict(RAW[1], payload={"x": float("nan")}),
    ],
    ids=[
        "none",
        "str",
        "list",
        "empty",
        "missing",
        "extra",
        "negative",
        "bool",
        "prev",
        "nan",
    ],
)
def test_unparseable_entries_raise_mirror_error(raw: Any) -> None:
    m = LedgerMirror()
    m.offer(RAW[0])
    with pytest.raises(MirrorError, match="unparseable"):
        m.offer(raw)
    assert m.next_height == 1


def test_entry_from_another_swarm_is_refused() -> None:
    m = LedgerMirror()
    m.offer(RAW[0])
    with pytest.raises(MirrorError):
        m.offer(dict(RAW[1], swarm="elsewhere"))


def test_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror_mod, "MAX_AHEAD", 3)
    m = LedgerMirror(CHAIN[0].hash)
    for raw in RAW[2:]:
        m.offer(raw)
        assert len(m._ahead) <= 3
    assert m.gap
    applied = m.offer(RAW[0]) + m.offer(RAW[1])
    assert applied[:3] == CHAIN[:3]  # the nearest ones were kept
    assert [e.height for e in applied] == list(range(len(applied)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_arrival_order_with_duplicates_yields_the_chain(data: st.DataObject) -> None:
    heights = data.draw(st.permutations(range(len(CHAIN))))
    extra = data.draw(st.lists(st.integers(0, len(CHAIN) - 1), max_size=8))
    order = list(heights)
    for h in extra:
        order.insert(data.draw(st.integers(0, len(order))), h)
    m = LedgerMirror(CHAIN[0].hash)
    applied: list[Entry] = []
    offered: set[int] = set()
    for h in order:
        applied += m.offer(RAW[h])
        offered.add(h)
        # the gap property: later entries wait exactly when some offered height is missing
        assert m.gap == any(x >= m.next_height for x in offered)
        assert all(x in offered for x in range(m.next_height))
    assert applied == CHAIN
    assert not m.gap and m.next_height == len(CHAIN) and m.tip_hash == CHAIN[-1].hash
