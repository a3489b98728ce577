"""JSON messages on the ledger and fleet topics: round trips and hostile bytes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledger_lite
from edge_swarm.swarm.messages import (
    MAX_JSON,
    MAX_PAGE,
    MAX_TELEMETRY_KEY,
    MAX_TELEMETRY_VALUES,
    STATUS_TYPE,
    TELEMETRY_TYPE,
    MessageError,
    Query,
    Reply,
    Status,
    Submission,
    Telemetry,
)
from ledger_lite import SigningKey

MESSAGES = (Submission, Query, Reply, Status, Telemetry)
TX = {
    "swarm": "s",
    "kind": "enroll",
    "author": "admin",
    "ts": 1,
    "payload": {"a": [1]},
    "sig": "00",
}


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "msg",
    [
        Submission(tx=TX),
        Query(client="pi-1", req="q-1"),
        Query(client="pi-1", req="q-2", start=42, limit=1),
        Query(client="pi-1", req="", start=0, limit=MAX_PAGE),
        Reply(req="q-1"),
        Reply(req="q-1", entries=[{"height": 0}, {"height": 1}], tip_height=1),
        Reply(req="tx", refused="replay"),
        Status(node="pi-1", role="agent", state="online", round=3),
        Status(node="gw", role="gateway", state="offline"),
        Status(node="pi-2", role="agent", state="paused", round=0),
        Telemetry(node="pi-1", round=2, values={"train_s": 0.25, "rss_mb": 81}),
        Telemetry(node="pi-1", round=0, values={}),
        Status(node="pi-1", role="agent", state="online", round=3, ts_ms=5, sig="ab" * 64),
        Telemetry(node="pi-1", round=2, values={"x": 1}, ts_ms=2**41, sig="0f" * 64),
    ],
    ids=lambda m: type(m).__name__,
)
def test_round_trip(msg: Any) -> None:
    data = msg.encode()
    assert isinstance(data, bytes)
    assert type(msg).decode(data) == msg
    assert type(msg).decode(data).encode() == data


def test_encoding_is_canonical_json() -> None:
    data = Query(client="pi-1", req="r", start=3, limit=9).encode()
    assert data == b'{"client":"pi-1","limit":9,"op":"entries","req":"r","start":3}'


def test_fleet_encoding_includes_ts_and_sig() -> None:
    assert Status("pi-1", "agent", "online", 2, ts_ms=7).encode() == (
        b'{"node":"pi-1","role":"agent","round":2,"sig":"","state":"online","ts_ms":7}'
    )
    assert Telemetry("pi-1", 1, {"b": 2, "a": 0.5}).encode() == (
        b'{"node":"pi-1","round":1,"sig":"","ts_ms":0,"values":{"a":0.5,"b":2}}'
    )


def test_query_ops_are_checked() -> None:
    assert Query.decode(Query("pi-1", "r", start=3, op="inclusion").encode()).op == "inclusion"
    # An older client without "op" asks for entries.
    assert Query.decode(b'{"client":"pi-1","limit":9,"req":"r","start":3}').op == "entries"
    with pytest.raises(MessageError, match="op"):
        Query.decode(b'{"client":"pi-1","limit":9,"req":"r","start":3,"op":"drop"}')


def test_reply_defaults_when_fields_are_absent() -> None:
    r = Reply.decode(b'{"req":"r","tip_height":4}')
    assert r == Reply(req="r", entries=[], tip_height=4, refused=None)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("cls", MESSAGES)
@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe\x00", b"[]", b"1", b'"text"', b"null", b"{", b"{}"],
    ids=["empty", "text", "utf8", "list", "int", "str", "null", "open", "empty obj"],
)
def test_non_messages_raise_message_error(cls: Any, data: bytes) -> None:
    with pytest.raises(MessageError):
        cls.decode(data)


@pytest.mark.parametrize("cls", MESSAGES)
@pytest.mark.parametrize("data", [b"[" * 5000, b'{"":[' * 1000], ids=["list", "object"])
def test_deep_nesting_raises_message_error(cls: Any, data: bytes) -> None:
    with pytest.raises(MessageError):
        cls.decode(data[:4000])


@pytest.mark.parametrize(
    "cls, limit",
    [
        (Submission, 128 * 1024),
        (Query, 4096),
        (Status, 4096),
        (Telemetry, 16 * 1024),
        (Reply, MAX_JSON),
    ],
)
def test_size_limits(cls: Any, limit: int) -> None:
    pad = b" " * (limit + 1)
    with pytest.raises(MessageError, match="exceeds"):
        cls.decode(pad)


def test_size_limit_is_inclusive() -> None:
    data = Query(client="pi-1", req="r").encode()
    padded = data + b" " * (4096 - len(data))
    assert Query.decode(padded) == Query(client="pi-1", req="r")


@pytest.mark.parametrize(
    "obj",
    [
        {"tx": None},
        {"tx": [TX]},
        {"tx": "tx"},
        {},
    ],
)
def test_submission_refuses_a_tx_that_is_not_an_object(obj: Any) -> None:
    with pytest.raises(MessageError, match="tx"):
        Submission.decode(enc(obj))


QUERY = {"client": "pi-1", "req": "r", "start": 0, "limit": 10}


@pytest.mark.parametrize(
    "change",
    [
        {"start": True},
        {"limit": True},
        {"start": 1.0},
        {"limit": "10"},
        {"client": 5},
        {"client": None},
        {"req": ["r"]},
        {"start": None},
    ],
    ids=str,
)
def test_query_type_confusions(change: dict[str, Any]) -> None:
    with pytest.raises(MessageError, match="wrong type"):
        Query.decode(enc({**QUERY, **change}))


@pytest.mark.parametrize("missing", sorted(QUERY))
def test_query_needs_every_field(missing: str) -> None:
    obj = {k: v for k, v in QUERY.items() if k != missing}
    with pytest.raises(MessageError, match=missing):
        Query.decode(enc(obj))


@pytest.mark.parametrize(
    "change",
    [{"start": -1}, {"limit": 0}, {"limit": -5}, {"limit": MAX_PAGE + 1}, {"req": "r" * 65}],
    ids=str,
)
def test_query_ranges(change: dict[str, Any]) -> None:
    with pytest.raises(MessageError, match="out of range"):
        Query.decode(enc({**QUERY, **change}))


def test_query_range_edges_are_accepted() -> None:
    q = Query.decode(enc({**QUERY, "start": 2**40, "limit": MAX_PAGE, "req": "r" * 64}))
    assert (q.start, q.limit, len(q.req)) == (2**40, MAX_PAGE, 64)
    assert Query.decode(enc({**QUERY, "limit": 1})).limit == 1


REPLY = {"req": "r", "entries": [], "tip_height": 3, "refused": None}


@pytest.mark.parametrize(
    "change",
    [
        {"entries": {}},
        {"entries": "x"},
        {"entries": [1]},
        {"entries": [{}, None]},
        {"entries": [[]]},
        {"refused": 1},
        {"refused": True},
        {"refused": ["no"]},
        {"tip_height": True},
        {"tip_height": "3"},
        {"tip_height": None},
        {"req": 1},
    ],
    ids=str,
)
def test_reply_refuses_bad_fields(change: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        Reply.decode(enc({**REPLY, **change}))


STATUS = {"node": "pi-1", "role": "agent", "state": "online", "round": 2}


@pytest.mark.parametrize(
    "change",
    [
        {"round": True},
        {"round": False},
        {"round": 2.0},
        {"round": "2"},
        {"node": 1},
        {"role": None},
        {"state": "sleeping"},
        {"state": "Online"},
        {"state": 1},
    ],
    ids=str,
)
def test_status_refuses_bad_fields(change: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        Status.decode(enc({**STATUS, **change}))


def test_status_needs_a_round() -> None:
    with pytest.raises(MessageError, match="round"):
        Status.decode(enc({k: v for k, v in STATUS.items() if k != "round"}))


TELEMETRY = {"node": "pi-1", "round": 1, "values": {"train_s": 0.5}}


@pytest.mark.parametrize(
    "change",
    [
        {"values": []},
        {"values": None},
        {"values": {"a": "1"}},
        {"values": {"a": None}},
        {"values": {"a": [1]}},
        {"values": {"a": True}},
        {"round": True},
        {"round": 1.5},
        {"node": ["pi-1"]},
    ],
    ids=str,
)
def test_telemetry_refuses_bad_fields(change: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        Telemetry.decode(enc({**TELEMETRY, **change}))


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_telemetry_refuses_non_finite_numbers(text: str) -> None:
    data = b'{"node":"pi-1","round":1,"values":{"loss":' + text.encode() + b"}}"
    with pytest.raises(MessageError):
        Telemetry.decode(data)


def test_telemetry_takes_ints_of_any_size() -> None:
    data = b'{"node":"pi-1","round":1,"values":{"big":' + b"9" * 400 + b',"f":-0.5}}'
    assert Telemetry.decode(data).values == {"big": int("9" * 400), "f": -0.5}


def test_telemetry_value_count_and_key_length_are_bounded() -> None:
    many = {f"k{i:03}": i for i in range(MAX_TELEMETRY_VALUES)}
    assert Telemetry.decode(enc({**TELEMETRY, "values": many})).values == many
    with pytest.raises(MessageError, match="values"):
        Telemetry.decode(enc({**TELEMETRY, "values": {**many, "one-more": 1}}))
    long_key = "é" * MAX_TELEMETRY_KEY  # counted in characters, not bytes
    assert Telemetry.decode(enc({**TELEMETRY, "values": {long_key: 1}})).values == {long_key: 1}
    with pytest.raises(MessageError, match="key"):
        Telemetry.decode(enc({**TELEMETRY, "values": {long_key + "x": 1}}))


# --------------------------------------------------------------------------- signatures

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
T0 = 1_700_000_000_000


def signed_status(**change: Any) -> Status:
    fields = {"node": "pi-1", "role": "agent", "state": "online", "round": 3, "ts_ms": T0}
    return Status(**{**fields, **change}).signed(KEY.sign)


def signed_telemetry(**change: Any) -> Telemetry:
    fields = {"node": "pi-1", "round": 3, "values": {"loss": 0.25, "rss_mb": 81}, "ts_ms": T0}
    return Telemetry(**{**fields, **change}).signed(KEY.sign)


@pytest.mark.parametrize("make", [signed_status, signed_telemetry])
def test_sign_verify_round_trip_through_the_wire(make: Any) -> None:
    msg = make()
    assert len(msg.sig) == 128 and msg.sig == msg.sig.lower()
    back = type(msg).decode(msg.encode())
    assert back == msg
    assert back.verify(KEY.public_hex)
    assert ledger_lite.verify(KEY.public_hex, back.signing_bytes(), bytes.fromhex(back.sig))


@pytest.mark.parametrize("make", [signed_status, signed_telemetry])
def test_signed_returns_a_copy(make: Any) -> None:
    msg = make()
    unsigned = dataclasses.replace(msg, sig="")
    assert unsigned.signed(KEY.sign) == msg  # Ed25519 is deterministic
    assert unsigned.sig == ""
    assert not unsigned.verify(KEY.public_hex)  # no signature is never a valid one


@pytest.mark.parametrize(
    "change",
    [
        {"state": "offline"},
        {"state": "paused"},
        {"round": 4},
        {"node": "pi-2"},
        {"role": "gateway"},
        {"ts_ms": T0 + 1},
    ],
    ids=str,
)
def test_a_changed_status_field_fails_verify(change: dict[str, Any]) -> None:
    msg = signed_status()
    forged = dataclasses.replace(msg, **change)
    assert not forged.verify(KEY.public_hex)
    assert not Status.decode(forged.encode()).verify(KEY.public_hex)


@pytest.mark.parametrize(
    "change",
    [
        {"values": {"loss": 0.26, "rss_mb": 81}},
        {"values": {"loss": 0.25, "rss_mb": 82}},
        {"values": {"loss": 0.25}},
        {"values": {"loss": 0.25, "rss_mb": 81, "extra": 0}},
        {"values": {"loss": 0.25, "rss_MB": 81}},
        {"round": 2},
        {"node": "pi-2"},
        {"ts_ms": 0},
    ],
    ids=str,
)
def test_a_changed_telemetry_field_fails_verify(change: dict[str, Any]) -> None:
    forged = dataclasses.replace(signed_telemetry(), **change)
    assert not forged.verify(KEY.public_hex)
    assert not Telemetry.decode(forged.encode()).verify(KEY.public_hex)


def test_tampered_wire_bytes_fail_verify() -> None:
    data = signed_status().encode()
    forged = Status.decode(data.replace(b'"online"', b'"offline"'))
    assert forged.state == "offline" and not forged.verify(KEY.public_hex)
    data = signed_telemetry().encode()
    forged_t = Telemetry.decode(data.replace(b'"loss":0.25', b'"loss":0.125'))
    assert forged_t.values["loss"] == 0.125 and not forged_t.verify(KEY.public_hex)


@pytest.mark.parametrize("make", [signed_status, signed_telemetry])
def test_a_changed_signature_fails_verify(make: Any) -> None:
    msg = make()
    flipped = ("1" if msg.sig[0] == "0" else "0") + msg.sig[1:]
    assert not dataclasses.replace(msg, sig=flipped).verify(KEY.public_hex)


def test_a_status_signature_does_not_verify_as_telemetry() -> None:
    status = signed_status(round=3, ts_ms=T0)
    telemetry = Telemetry(node="pi-1", round=3, values={}, ts_ms=T0, sig=status.sig)
    assert status.verify(KEY.public_hex)
    assert not telemetry.verify(KEY.public_hex)
    assert not Telemetry.decode(telemetry.encode()).verify(KEY.public_hex)
    # and the other way round
    tm = telemetry.signed(KEY.sign)
    assert not dataclasses.replace(status, sig=tm.sig).verify(KEY.public_hex)


def test_signing_bytes_carry_a_domain_label() -> None:
    status_bytes = signed_status().signing_bytes()
    telemetry_bytes = signed_telemetry().signing_bytes()
    assert json.loads(status_bytes)["type"] == STATUS_TYPE
    assert json.loads(telemetry_bytes)["type"] == TELEMETRY_TYPE
    assert STATUS_TYPE != TELEMETRY_TYPE
    # signing bytes are canonical and leave the signature out
    assert status_bytes == ledger_lite.canonical_bytes(json.loads(status_bytes))
    assert "sig" not in json.loads(status_bytes) and "sig" not in json.loads(telemetry_bytes)


@pytest.mark.parametrize("make", [signed_status, signed_telemetry])
def test_wrong_or_malformed_key_fails_verify(make: Any) -> None:
    msg = make()
    assert not msg.verify(OTHER_KEY.public_hex)
    for key in ["", "00", KEY.public_hex[:-2], KEY.public_hex + "00", "zz" * 32, None, 5]:
        assert msg.verify(key) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("sig", ["zz", "0" * 127, "0" * 129, "g" * 128, "A" * 128, None, 1, []])
def test_verify_never_raises_on_a_malformed_sig(sig: Any) -> None:
    assert Status("pi-1", "agent", "online", sig=sig).verify(KEY.public_hex) is False
    assert Telemetry("pi-1", 1, {}, sig=sig).verify(KEY.public_hex) is False


def test_verify_is_false_for_fields_with_no_canonical_encoding() -> None:
    sig = signed_telemetry().sig
    assert Telemetry("pi-1", 1, {"x": float("nan")}, sig=sig).verify(KEY.public_hex) is False
    assert Status("\ud800", "agent", "online", sig=sig).verify(KEY.public_hex) is False
    # a lone surrogate is valid JSON text, so it can arrive from the wire
    data = b'{"node":"\\ud800","role":"a","round":0,"state":"online","sig":"' + sig.encode()
    assert Status.decode(data + b'"}').verify(KEY.public_hex) is False
    with pytest.raises(ValueError):
        Telemetry("pi-1", 1, {"x": float("inf")}).signed(KEY.sign)


@pytest.mark.parametrize(
    "sign",
    [
        lambda m: b"\0" * 63,
        lambda m: b"\0" * 65,
        lambda m: b"",
        lambda m: "00" * 64,
        lambda m: None,
    ],
    ids=["63", "65", "empty", "hex str", "None"],
)
def test_signed_refuses_a_signer_that_returns_no_signature(sign: Any) -> None:
    with pytest.raises(ValueError, match="64"):
        Status("pi-1", "agent", "online").signed(sign)
    with pytest.raises(ValueError, match="64"):
        Telemetry("pi-1", 1, {}).signed(sign)


@pytest.mark.parametrize("cls, obj", [(Status, STATUS), (Telemetry, TELEMETRY)])
@pytest.mark.parametrize(
    "sig",
    ["00", "0" * 127, "0" * 129, "A" * 128, "g" * 128, "0" * 128 + "\n", " " + "0" * 127, None, 0],
    ids=["short", "127", "129", "upper", "not hex", "newline", "space", "null", "int"],
)
def test_decode_refuses_a_malformed_sig(cls: Any, obj: dict[str, Any], sig: Any) -> None:
    with pytest.raises(MessageError, match="sig"):
        cls.decode(enc({**obj, "sig": sig}))


@pytest.mark.parametrize("ts", [-1, True, False, 1.0, "1", None, [1]], ids=str)
@pytest.mark.parametrize("cls, obj", [(Status, STATUS), (Telemetry, TELEMETRY)])
def test_decode_refuses_a_bad_ts_ms(cls: Any, obj: dict[str, Any], ts: Any) -> None:
    with pytest.raises(MessageError, match="ts_ms"):
        cls.decode(enc({**obj, "ts_ms": ts}))


@pytest.mark.parametrize("cls, obj", [(Status, STATUS), (Telemetry, TELEMETRY)])
def test_ts_ms_and_sig_are_optional(cls: Any, obj: dict[str, Any]) -> None:
    msg = cls.decode(enc(obj))  # a node from before signing
    assert (msg.ts_ms, msg.sig) == (0, "")
    assert cls.decode(enc({**obj, "ts_ms": 0, "sig": ""})) == msg
    assert not msg.verify(KEY.public_hex)


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_message_error(data: bytes) -> None:
    for cls in MESSAGES:
        try:
            msg = cls.decode(data)
        except MessageError:
            continue
        assert isinstance(msg, cls)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
_KEYS = ["tx", "client", "req", "start", "limit", "entries", "tip_height", "refused"]
_KEYS += ["node", "role", "state", "round", "values", "ts_ms", "sig"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_KEYS), _JSON))
def test_arbitrary_json_objects_raise_only_message_error(obj: dict[str, Any]) -> None:
    data = json.dumps(obj).encode()
    for cls in MESSAGES:
        try:
            msg = cls.decode(data)
        except MessageError:
            continue
        assert type(msg).decode(msg.encode()) == msg  # what decodes, re-encodes the same


_HEX128 = st.text(alphabet="0123456789abcdef", min_size=128, max_size=128)
_FLEET = {
    "node": st.text(max_size=8),
    "role": st.text(max_size=8),
    "state": st.sampled_from(["online", "offline", "paused", "gone"]),
    "round": st.integers(),
    "ts_ms": st.integers() | st.booleans() | st.floats(),
    "sig": _HEX128 | st.text(max_size=130) | st.none(),
    "values": st.dictionaries(st.text(max_size=70), st.integers() | st.floats(), max_size=5)
    | _JSON,
}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=_FLEET), st.sampled_from([Status, Telemetry]))
def test_near_valid_fleet_messages_raise_only_message_error(obj: dict[str, Any], cls: Any) -> None:
    try:
        data = json.dumps(obj).encode()
    except ValueError:
        return
    try:
        msg = cls.decode(data)
    except MessageError:
        return
    assert cls.decode(msg.encode()) == msg
    assert msg.verify(KEY.public_hex) is False  # nobody forges a signature at random


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from([Status, Telemetry]))
def test_arbitrary_bytes_to_fleet_decoders_raise_only_message_error(data: bytes, cls: Any) -> None:
    try:
        msg = cls.decode(data)
    except MessageError:
        return
    assert isinstance(msg.verify(KEY.public_hex), bool)


_VALUES = st.dictionaries(
    st.text(max_size=MAX_TELEMETRY_KEY),
    st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    max_size=8,
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    node=st.text(max_size=16),
    rnd=st.integers(min_value=0, max_value=2**40),
    ts=st.integers(min_value=0, max_value=2**63),
    values=_VALUES,
)
def test_any_signed_fleet_message_verifies_after_the_wire(
    node: str, rnd: int, ts: int, values: dict[str, float]
) -> None:
    for msg in (
        Status(node, "agent", "online", rnd, ts_ms=ts).signed(KEY.sign),
        Telemetry(node, rnd, values, ts_ms=ts).signed(KEY.sign),
    ):
        back = type(msg).decode(msg.encode())
        assert back == msg and back.verify(KEY.public_hex)
        assert not back.verify(OTHER_KEY.public_hex)
