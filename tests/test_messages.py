"""JSON messages on the ledger and fleet topics: round trips and hostile bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_swarm.swarm.messages import (
    MAX_JSON,
    MAX_PAGE,
    MessageError,
    Query,
    Reply,
    Status,
    Submission,
    Telemetry,
)

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
_KEYS += ["node", "role", "state", "round", "values"]


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
