"""Validation: every refusal, each leaving the ledger exactly as it was."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger_lite import Ledger, LedgerState, Refused, make_genesis, make_tx
from ledger_lite import errors as E
from ledger_lite.errors import LedgerError

from .test_ledger_support import (
    ADMIN_KEY,
    SWARM,
    T0,
    Swarm,
    delta_commit,
    genesis,
    round_open,
    seed_key,
)


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    s = Swarm(tmp_path / "ledger.db")
    s.enroll("gw1", "gateway")
    s.enroll("a1", "agent", expires_ms=T0 + 1_000)
    s.enroll("a2", "agent")
    yield s
    s.ledger.close()


def assert_refused(swarm: Swarm, reason: str, action: Callable[[], object]) -> Refused:
    """Run `action`, expect Refused(reason), and check nothing was appended or folded."""
    led = swarm.ledger
    before = (led.height, led.tip, len(led.entries()), len(led.state.seen))
    with pytest.raises(Refused) as info:
        action()
    assert info.value.reason == reason, str(info.value)
    assert info.value.reason in E.REASONS
    assert (led.height, led.tip, len(led.entries()), len(led.state.seen)) == before
    return info.value


def test_happy_round(swarm: Swarm) -> None:
    swarm.submit("gw1", "round_open", round_open())
    e = swarm.submit("a2", "delta_commit", delta_commit("a2"))
    swarm.submit("a2", "model_attest", {"round": 1, "model_hash": "0" * 64, "state_hash": "1" * 64})
    swarm.submit("gw1", "round_close", {"round": 1, "included": ["a2"], "reason": "min_peers"})
    assert e.height == 5 and swarm.ledger.height == 7
    assert swarm.ledger.entries(5, limit=1) == [e]
    assert swarm.ledger.get(5) == e


def test_wrong_height(swarm: Swarm) -> None:
    led = swarm.ledger
    tx = swarm.tx("gw1", "round_open", round_open())
    err = assert_refused(
        swarm, E.WRONG_HEIGHT, lambda: led.append(tx.chain(led.height + 2, led.tip))
    )
    assert err.height == led.height + 2
    assert_refused(swarm, E.WRONG_HEIGHT, lambda: led.append(tx.chain(led.height, led.tip)))


def test_wrong_prev_hash(swarm: Swarm) -> None:
    led = swarm.ledger
    tx = swarm.tx("gw1", "round_open", round_open())
    assert_refused(swarm, E.WRONG_PREV_HASH, lambda: led.append(tx.chain(led.height + 1, "f" * 64)))


def test_wrong_swarm(swarm: Swarm) -> None:
    tx = swarm.tx("gw1", "round_open", round_open(), swarm="swarm-b")
    assert_refused(swarm, E.WRONG_SWARM, lambda: swarm.ledger.submit(tx))


def test_unknown_kind(swarm: Swarm) -> None:
    tx = swarm.tx("admin", "mint_coins", {"amount": 5})
    assert_refused(swarm, E.UNKNOWN_KIND, lambda: swarm.ledger.submit(tx))


def test_second_genesis(swarm: Swarm) -> None:
    tx = genesis(T0 + 50).tx
    assert_refused(swarm, E.BAD_GENESIS, lambda: swarm.ledger.submit(tx))


@pytest.mark.parametrize(
    "author, kind, payload",
    [
        ("gw1", "round_open", {"round": 1}),
        ("gw1", "round_open", {**round_open(), "note": "extra field"}),
        (
            "admin",
            "enroll",
            {"node": "x", "role": "emperor", "pubkey": "0" * 64, "expires_ms": None},
        ),
        ("a2", "delta_commit", {**delta_commit("a2"), "envelope_sha256": "xyz"}),
        ("gw1", "round_close", {"round": 1, "included": ["a2", "a1"], "reason": ""}),
    ],
)
def test_malformed_payload(swarm: Swarm, author: str, kind: str, payload: dict) -> None:
    tx = swarm.tx(author, kind, payload)
    err = assert_refused(swarm, E.BAD_PAYLOAD, lambda: swarm.ledger.submit(tx))
    assert kind in err.detail


def test_oversized(swarm: Swarm) -> None:
    tx = swarm.tx("admin", "config", {"blob": "x" * (64 * 1024)})
    assert_refused(swarm, E.OVERSIZED, lambda: swarm.ledger.submit(tx))
    swarm.submit("admin", "config", {"blob": "x" * (60 * 1024)})  # just under the limit


def test_unknown_author(swarm: Swarm) -> None:
    tx = swarm.tx("ghost", "delta_commit", delta_commit("ghost"), key=seed_key(99))
    assert_refused(swarm, E.UNKNOWN_AUTHOR, lambda: swarm.ledger.submit(tx))


def test_revoked_author(swarm: Swarm) -> None:
    swarm.submit("a2", "delta_commit", delta_commit("a2"))
    revocation = swarm.revoke("a2")
    assert swarm.ledger.state.member("a2").revoked_at_height == revocation.height
    assert not swarm.ledger.state.is_active("a2", swarm.ts)
    tx = swarm.tx("a2", "delta_commit", delta_commit("a2", rnd=2))
    err = assert_refused(swarm, E.REVOKED_AUTHOR, lambda: swarm.ledger.submit(tx))
    assert f"height {revocation.height}" in err.detail


def test_revoke_unknown_node(swarm: Swarm) -> None:
    tx = swarm.tx("admin", "revoke", {"node": "nobody", "reason": "?"})
    assert_refused(swarm, E.UNKNOWN_NODE, lambda: swarm.ledger.submit(tx))


def test_expired_author(swarm: Swarm) -> None:
    expiry = T0 + 1_000
    swarm.submit("a1", "delta_commit", delta_commit("a1"), ts=expiry)  # still valid at expiry
    assert swarm.ledger.state.is_active("a1", expiry)
    assert not swarm.ledger.state.is_active("a1", expiry + 1)
    tx = swarm.tx("a1", "delta_commit", delta_commit("a1", rnd=2), ts=expiry + 1)
    assert_refused(swarm, E.EXPIRED_AUTHOR, lambda: swarm.ledger.submit(tx))


@pytest.mark.parametrize(
    "author, kind, payload",
    [
        ("a2", "round_open", round_open()),
        ("gw1", "delta_commit", delta_commit("gw1")),
        ("gw1", "enroll", {"node": "x", "role": "agent", "pubkey": "0" * 64, "expires_ms": None}),
        ("a2", "revoke", {"node": "a1", "reason": "I do not like a1"}),
        (
            "admin",
            "model_final",
            {"round": 1, "model_hash": "0" * 64, "state_hash": "0" * 64, "attesters": []},
        ),  # fmt: skip
    ],
)
def test_role_not_allowed(swarm: Swarm, author: str, kind: str, payload: dict) -> None:
    tx = swarm.tx(author, kind, payload)
    assert_refused(swarm, E.ROLE_NOT_ALLOWED, lambda: swarm.ledger.submit(tx))


def test_bad_signature(swarm: Swarm) -> None:
    forged = swarm.tx("a2", "delta_commit", delta_commit("a2"), key=seed_key(99))
    assert_refused(swarm, E.BAD_SIGNATURE, lambda: swarm.ledger.submit(forged))
    honest = swarm.tx("a2", "delta_commit", delta_commit("a2"))
    tampered = dataclasses.replace(honest, payload={**honest.payload, "n_samples": 10_000})
    assert_refused(swarm, E.BAD_SIGNATURE, lambda: swarm.ledger.submit(tampered))
    swarm.ledger.submit(honest)


def test_replay(swarm: Swarm) -> None:
    tx = swarm.tx("a2", "delta_commit", delta_commit("a2"))
    swarm.ledger.submit(tx)
    assert_refused(swarm, E.REPLAY, lambda: swarm.ledger.submit(tx))


def test_delta_commit_node_must_be_author(swarm: Swarm) -> None:
    tx = swarm.tx("a2", "delta_commit", delta_commit("a1"))
    assert_refused(swarm, E.NODE_MISMATCH, lambda: swarm.ledger.submit(tx))


def test_reenroll_rotates_key(swarm: Swarm) -> None:
    old_key = swarm.keys["a2"]
    swarm.revoke("a2")
    new_key = swarm.enroll("a2", "agent")
    assert swarm.ledger.state.public_key("a2") == new_key.public_hex != old_key.public_hex
    old = swarm.tx("a2", "delta_commit", delta_commit("a2"), key=old_key)
    assert_refused(swarm, E.BAD_SIGNATURE, lambda: swarm.ledger.submit(old))
    swarm.submit("a2", "delta_commit", delta_commit("a2"))


def test_queries(swarm: Swarm) -> None:
    state = swarm.ledger.state
    assert state.member("admin").role == "admin"
    assert state.member("gw1").role == "gateway"
    assert state.member("nobody") is None and state.public_key("nobody") is None
    assert not state.is_active("nobody", T0)
    assert state.public_key("admin") == ADMIN_KEY.public_hex
    assert state.roles_for("model_attest") == ("agent", "gateway")
    assert state.params == {"rounds": 3}


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: make_genesis(seed_key(5), "admin", SWARM, ts=T0).tx.chain(0, "0" * 64), None),
        (lambda: genesis().tx.chain(1, "0" * 64), E.BAD_GENESIS),
        (lambda: dataclasses.replace(genesis(), ts=T0 + 1), E.BAD_SIGNATURE),
        (lambda: _genesis_by_non_admin(), E.BAD_GENESIS),
        (lambda: _genesis_with_payload({"swarm": SWARM, "admins": {}}), E.BAD_PAYLOAD),
        (lambda: _genesis_with_payload({**genesis().payload, "swarm": "x"}), E.BAD_GENESIS),
    ],
)
def test_bad_genesis_refused(tmp_path: Path, build: Callable, reason: str | None) -> None:
    entry = build()
    if reason is None:  # a genesis by any admin key is fine
        assert LedgerState.from_genesis(entry).height == 0
        return
    with pytest.raises(Refused) as info:
        Ledger.create(tmp_path / "l.db", entry)
    assert info.value.reason == reason and info.value.height == 0
    with pytest.raises(LedgerError, match="no genesis"):
        Ledger.open(tmp_path / "l.db")  # nothing was written


def _genesis_by_non_admin():
    payload = {**genesis().payload}
    return make_tx(seed_key(7), SWARM, "genesis", "mallory", payload, ts=T0).chain(0, "0" * 64)


def _genesis_with_payload(payload: dict):
    return make_tx(ADMIN_KEY, SWARM, "genesis", "admin", payload, ts=T0).chain(0, "0" * 64)


# -- key epochs and encryption keys -----------------------------------------------------


def _epoch(n: int, *nodes: str) -> dict:
    return {"swarm": SWARM, "epoch": n, "wrapped": {node: "ab" * 81 for node in nodes}}


def test_enroll_with_encryption_key(swarm: Swarm) -> None:
    swarm.submit(
        "admin",
        "enroll",
        {
            "node": "a3",
            "role": "agent",
            "pubkey": "1" * 64,
            "expires_ms": None,
            "enc_pubkey": "2" * 64,
        },
    )
    assert swarm.ledger.state.member("a3").enc_pubkey == "2" * 64
    assert swarm.ledger.state.member("a2").enc_pubkey is None  # enrolled without one: fine
    bad = {"node": "a4", "role": "agent", "pubkey": "1" * 64, "expires_ms": None, "enc_pubkey": "x"}
    tx = swarm.tx("admin", "enroll", bad)
    err = assert_refused(swarm, E.BAD_PAYLOAD, lambda: swarm.ledger.submit(tx))
    assert "enc_pubkey" in err.detail


def test_observer_role_may_not_author(swarm: Swarm) -> None:
    key = swarm.enroll("laptop", "observer")
    tx = swarm.tx(
        "laptop",
        "model_attest",
        {"round": 1, "model_hash": "0" * 64, "state_hash": "1" * 64},
        key=key,
    )
    assert_refused(swarm, E.ROLE_NOT_ALLOWED, lambda: swarm.ledger.submit(tx))


def test_key_epochs_only_go_up(swarm: Swarm) -> None:
    swarm.submit("gw1", "key_epoch", _epoch(0, "a2", "gw1"))
    assert swarm.ledger.state.key_epoch == 0
    swarm.submit("admin", "key_epoch", _epoch(3, "a2"))
    assert swarm.ledger.state.key_epoch == 3
    for n in (3, 1):
        tx = swarm.tx("gw1", "key_epoch", _epoch(n, "a2"))
        assert_refused(swarm, E.STALE_EPOCH, lambda tx=tx: swarm.ledger.submit(tx))


def test_key_epoch_rules(swarm: Swarm) -> None:
    tx = swarm.tx("a2", "key_epoch", _epoch(0, "a2"))
    assert_refused(swarm, E.ROLE_NOT_ALLOWED, lambda: swarm.ledger.submit(tx))
    tx = swarm.tx("gw1", "key_epoch", _epoch(0, "a2", "ghost"))
    assert_refused(swarm, E.UNKNOWN_NODE, lambda: swarm.ledger.submit(tx))
    tx = swarm.tx("gw1", "key_epoch", {**_epoch(0, "a2"), "swarm": "other"})
    assert_refused(swarm, E.WRONG_SWARM, lambda: swarm.ledger.submit(tx))
    swarm.revoke("a2")
    tx = swarm.tx("gw1", "key_epoch", _epoch(0, "a2", "gw1"))
    err = assert_refused(swarm, E.REVOKED_NODE, lambda: swarm.ledger.submit(tx))
    assert "a2" in err.detail


@pytest.mark.parametrize(
    "wrapped",
    [{}, {"a2": "AB"}, {"a2": "abc"}, {"a2": ""}, {"a2": "ab" * 300}, {"bad id!": "ab"}, ["a2"]],
)
def test_key_epoch_payload_shape(swarm: Swarm, wrapped: object) -> None:
    tx = swarm.tx("gw1", "key_epoch", {"swarm": SWARM, "epoch": 0, "wrapped": wrapped})
    assert_refused(swarm, E.BAD_PAYLOAD, lambda: swarm.ledger.submit(tx))
