"""Hostile bytes against every decoder of network JSON, and the rate-limited error log.

Each decoder takes untrusted bytes and either returns its value or raises its package's one
decode error (h11's fuzz habit): never RecursionError, TypeError, UnicodeDecodeError or a
hang, whatever the bytes: nesting 100k deep, numbers too big for a float or an int, not
UTF-8, JSON of the wrong shape. The loops that call them (a node's, the observer's, the
operator's) log an unexpected exception with its traceback a few times, then only count it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_swarm.cli.fleet import _checked_entry
from edge_swarm.io.mqtt import Message, handle_until
from edge_swarm.node.base import NodeRuntime
from edge_swarm.node.observer import SwarmObserver, _event_entry
from edge_swarm.node.vitals import RateLimitedLog
from edge_swarm.site.operator import EnrollRequest, OperatorError
from edge_swarm.swarm.commands import Ack, CommandError
from edge_swarm.swarm.messages import MessageError, Query, Reply, Status, Submission, Telemetry
from edge_swarm.swarm.mirror import event_entry
from edge_swarm.swarm.topics import Topics
from ledger_lite import Entry, SigningKey, Tx, make_tx
from ledger_lite.canonical import JSON_MAX_DEPTH, json_too_deep, parse_json
from ledger_lite.errors import DecodeError

DEEP = 100_000  # the nesting of the hostile message


def _enroll_request(data: bytes) -> EnrollRequest:
    return EnrollRequest.from_json(data.decode("utf-8", "surrogateescape"))


def _json_entry(data: bytes) -> dict[str, Any]:
    """The agent's reading of ``ledger/events``: None for garbage, never an exception."""
    obj = event_entry(data)
    if obj is None:
        raise LookupError("refused")  # stands for "dropped" below
    assert isinstance(obj, dict)
    return obj


# (name, decoder, the one error it may raise, the largest input it parses)
DECODERS: list[tuple[str, Callable[[bytes], Any], type[Exception], int]] = [
    ("parse_json", parse_json, DecodeError, 1 << 30),
    ("Submission", Submission.decode, MessageError, 128 * 1024),
    ("Query", Query.decode, MessageError, 4096),
    ("Reply", Reply.decode, MessageError, 1024 * 1024),
    ("Status", Status.decode, MessageError, 4096),
    ("Telemetry", Telemetry.decode, MessageError, 16 * 1024),
    ("Ack", Ack.decode, CommandError, 64 * 1024),
    ("Entry.from_bytes", Entry.from_bytes, DecodeError, 64 * 1024),
    ("Tx.from_bytes", Tx.from_bytes, DecodeError, 64 * 1024),
    ("observer event", _event_entry, DecodeError, 64 * 1024),
    ("fleet reply entry", lambda b: _checked_entry(parse_json(b)), DecodeError, 1 << 30),
    ("agent ledger event", _json_entry, LookupError, 1 << 30),
    ("enrol request", _enroll_request, OperatorError, 1 << 30),
]
IDS = [d[0] for d in DECODERS]


def _deep(depth: int) -> list[bytes]:
    """Nesting ``depth`` levels deep: open only, closed (valid JSON), objects, mixed, and
    wrapped in an otherwise well-formed message."""
    return [
        b"[" * depth,
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'[{"x":' * (depth // 2),
        b'{"tx": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"entries": [' + b"[" * depth,
    ]


# Hand-made hostile payloads beyond nesting: odd numbers, encodings, types, and a string
# scan that once took minutes (every quote of an unclosed string was retried to the end).
ODD: list[bytes] = [
    b"",
    b"\xff\xfe[\x00]\x00",
    b"\xef\xbb\xbf{}",
    '{"a": "\udc80"}'.encode("utf-8", "surrogatepass"),
    b'{"a": "\\ud800"}',
    b"NaN",
    b"[Infinity, -Infinity]",
    b"1e999",
    b'{"values": {"x": 1e999}, "node": "n", "round": 1}',
    b"9" * 5000,
    b"-" + b"9" * 100_000,
    b'{"round": ' + b"9" * 4400 + b"}",
    b"[" + b"1," * 20_000 + b"1]",
    b'"\\"' * 50_000,
    b'["' + b'\\"' * 50_000,
    b'{"req": 5, "tip_height": "x", "entries": {}}',
    b'{"tx": []}',
    b'{"tx": {"swarm": [], "kind": {}, "author": null, "ts": -1, "payload": 1, "sig": 2}}',
    b'{"client": ["a"], "req": {}, "start": true, "limit": 1e5, "op": [1]}',
    b'{"node": "n", "role": "agent", "state": ["online"], "round": 1.5, "ts_ms": -1}',
    b'{"id": [], "node": 1, "status": {}, "detail": 2, "data": [], "ts_ms": true, "sig": 0}',
    b'{"node": 1, "pubkey": [], "role": {}}',
    b"[]",
    b"null",
    b"12",
]

_FIELDS = [
    "tx",
    "req",
    "client",
    "start",
    "limit",
    "op",
    "entries",
    "tip_height",
    "refused",
    "proof",
    "node",
    "role",
    "state",
    "round",
    "ts_ms",
    "sig",
    "values",
    "id",
    "status",
    "detail",
    "data",
    "height",
    "prev_hash",
    "swarm",
    "kind",
    "author",
    "ts",
    "payload",
    "pubkey",
    "enc_pubkey",
]
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and the infinities included: json.dumps writes them as tokens
    | st.text(max_size=20)
    | st.sampled_from(["online", "agent", "entries", "done", "0" * 64, "0" * 128, "all"])
)
JSON_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=6), inner, max_size=8)
    ),
    max_leaves=30,
)


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, JSON of any shape (with the messages' field names), or either cut
    and spliced with random bytes."""
    kind = draw(st.sampled_from(["random", "json", "spliced", "odd"]))
    if kind == "random":
        return draw(st.binary(max_size=3000))
    if kind == "odd":
        return draw(st.sampled_from(ODD))
    text = json.dumps(draw(JSON_VALUES)).encode("utf-8", "surrogatepass")
    if kind == "json":
        return text
    cut = draw(st.integers(0, len(text)))
    return text[:cut] + draw(st.binary(max_size=40)) + text[cut:]


def _only(decode: Callable[[bytes], Any], error: type[Exception], data: bytes) -> None:
    """``decode(data)`` returns or raises ``error``; anything else fails the test."""
    with contextlib.suppress(error):
        decode(data)


# --------------------------------------------------------------------------- the decoders


@pytest.mark.parametrize(("name", "decode", "error", "limit"), DECODERS, ids=IDS)
def test_deep_nesting_raises_only_the_decode_error(
    name: str, decode: Callable[[bytes], Any], error: type[Exception], limit: int
) -> None:
    # 100k deep (over some decoders' size limits: refused unparsed), and as deep as fits.
    fitting = min(DEEP, (limit - 64) // 6)
    for data in [*_deep(DEEP), *_deep(fitting)]:
        with pytest.raises(error):
            decode(data)


@pytest.mark.parametrize(("name", "decode", "error", "limit"), DECODERS, ids=IDS)
def test_odd_values_encodings_and_types_raise_only_the_decode_error(
    name: str, decode: Callable[[bytes], Any], error: type[Exception], limit: int
) -> None:
    for data in ODD:
        _only(decode, error, data)


@pytest.mark.parametrize(("name", "decode", "error", "limit"), DECODERS, ids=IDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_bytes())
def test_any_bytes_give_a_value_or_the_decode_error(
    name: str, decode: Callable[[bytes], Any], error: type[Exception], limit: int, data: bytes
) -> None:
    _only(decode, error, data)


def test_parse_json_refuses_non_bytes_and_non_finite_numbers() -> None:
    for value in (None, 12, ["[]"], {"a": 1}, 1.5):
        with pytest.raises(DecodeError):
            parse_json(value)  # type: ignore[arg-type]
    for text in (b"NaN", b"-Infinity", b"[1e400]", b'{"a": -1e309}', b"1" * 4301):
        with pytest.raises(DecodeError):
            parse_json(text)
    assert parse_json(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert parse_json("[1]") == [1]
    assert parse_json(bytearray(b"[[[]]]")) == [[[]]]


def test_the_depth_bound_counts_brackets_outside_strings_only() -> None:
    at = b"[" * JSON_MAX_DEPTH + b"]" * JSON_MAX_DEPTH
    assert parse_json(at) is not None
    with pytest.raises(DecodeError, match="deeper"):
        parse_json(b"[" + at + b"]")
    inside = b'["' + b"[" * 1000 + b'\\"' + b"{" * 1000 + b'"]'
    assert parse_json(inside) == ["[" * 1000 + '"' + "{" * 1000]
    assert json_too_deep(b'["\\\\", [[1]]]', 2)  # an escaped backslash closes no string
    assert not json_too_deep(b'["\\\\", [[1]]]', 3)


@pytest.mark.parametrize(
    "bomb",
    [b'\\"' * 1_000_000, b'"\\' * 1_000_000, b"[" * 2_000_000, b"[]" * 1_000_000],
    ids=["escaped-quotes", "quote-backslash", "open", "pairs"],
)
def test_the_depth_check_is_linear(bomb: bytes) -> None:
    # A scan that retried every quote of an unclosed string took about two minutes at
    # 100 kB; these are 2 MB. The bound is loose for a loaded 2-core box (about 0.2 s here).
    t0 = time.perf_counter()
    json_too_deep(bomb)
    assert time.perf_counter() - t0 < 5.0


def test_genuine_messages_still_decode() -> None:
    key = SigningKey.generate()
    tx = make_tx(key, "s", "enroll", "admin", {"node": "a", "x": [1.5, {"y": None}]})
    entry = tx.chain(1, "0" * 64)
    assert Submission.decode(Submission(tx.to_dict()).encode()).tx == tx.to_dict()
    assert Entry.from_bytes(entry.canonical()) == entry
    assert event_entry(entry.canonical()) == entry.to_dict()
    status = Status("a", "agent", "online", 3, 5).signed(key.sign)
    assert Status.decode(status.encode()).verify(key.public_hex)
    tm = Telemetry("a", 3, {"bytes_out": 10, "acc": 0.5}, 7).signed(key.sign)
    assert Telemetry.decode(tm.encode()) == tm
    ack = Ack("0" * 32, "a", "done", "ok", {"lines": ["x"]}, 9).signed(key.sign)
    assert Ack.decode(ack.encode()).verify(key.public_hex)


# --------------------------------------------------------------------------- rate limiting


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _raise(exc: Exception) -> None:
    raise exc


def _tracebacks(caplog: pytest.LogCaptureFixture) -> int:
    return caplog.text.count("Traceback (most recent call last)")


def test_errors_log_a_few_tracebacks_then_a_counted_line_now_and_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    errors = RateLimitedLog(logging.getLogger("test.hostile"), clock)
    caplog.set_level(logging.INFO, "test.hostile")
    for i in range(1000):
        clock.now = i * 0.1  # 100 s of a flood, ten a second
        try:
            _raise(RecursionError("deep"))
        except RecursionError as exc:
            errors.error("a ledger_events message", exc, "es/v1/s/ledger/events")
    full = [r for r in caplog.records if r.exc_info]
    assert len(full) == RateLimitedLog.FIRST_ERRORS
    assert "RecursionError: deep" in caplog.text  # the traceback itself
    summaries = [r.getMessage() for r in caplog.records if not r.exc_info]
    # one line per SUMMARY_S of the flood, each with its count
    assert len(summaries) == int(100 // RateLimitedLog.SUMMARY_S)
    assert "RecursionError" in summaries[0] and "(303 in all)" in summaries[0]
    assert errors.errors[("a ledger_events message", "RecursionError")] == 1000
    # Another exception type (or place) has its own few tracebacks.
    caplog.clear()
    errors.error("a ledger_events message", TypeError("x"), "t")
    errors.error("a callback", TypeError("x"), "t")
    assert len([r for r in caplog.records if r.exc_info]) == 2


def test_drops_stay_one_line_each_and_thin_out(caplog: pytest.LogCaptureFixture) -> None:
    drops = RateLimitedLog(logging.getLogger("test.hostile"))
    caplog.set_level(logging.INFO, "test.hostile")
    for _ in range(1000):
        drops.drop("bad reply", "x" * 10_000)
    assert len(caplog.records) == 3 + 10
    assert max(len(r.getMessage()) for r in caplog.records) < 400
    assert drops.counts["bad reply"] == 1000


class _Failing(NodeRuntime):
    """Just enough of a node to run its dispatch: every message and callback fails."""

    def __init__(self) -> None:  # no keys, no broker: only what _dispatch and _run touch
        self.topics = Topics("s")
        self.drops = RateLimitedLog(logging.getLogger("edge_swarm.node.base"))

    def on_message(self, kind: str, rnd: int | None, node: str | None, msg: Message) -> None:
        json.loads(msg.payload)  # the unguarded parse of the issue: RecursionError


def test_a_node_loop_logs_a_flood_of_failures_with_a_few_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = _Failing()
    caplog.set_level(logging.INFO)
    for _ in range(300):
        node._dispatch(Message("es/v1/s/ledger/events", b"[" * DEEP))
        node._dispatch(Message("es/v1/s/fleet/cmd/all", b"\xff"))
        node._run(lambda: _raise(KeyError("k")))
    assert _tracebacks(caplog) == 3 * RateLimitedLog.FIRST_ERRORS  # three (kind, type) keys
    counts = node.drops.errors
    assert counts[("a ledger_events message", "RecursionError")] == 300
    assert counts[("a fleet_cmd message", "UnicodeDecodeError")] == 300
    assert counts[("a callback", "KeyError")] == 300


def test_handle_until_goes_on_after_a_failing_message() -> None:
    inbox: queue.Queue[Message] = queue.Queue()
    for i in range(5):
        inbox.put(Message("t", str(i).encode()))
    handled: list[bytes] = []
    failed: list[tuple[bytes, str]] = []

    def handle(msg: Message) -> None:
        if msg.payload in (b"1", b"3"):
            raise RecursionError("deep")
        handled.append(msg.payload)

    held = handle_until(
        inbox,
        handle,
        lambda: len(handled) == 3,
        5.0,
        lambda m, e: failed.append((m.payload, type(e).__name__)),
    )
    assert held and handled == [b"0", b"2", b"4"]
    assert failed == [(b"1", "RecursionError"), (b"3", "RecursionError")]
    inbox.put(Message("t", b"1"))
    with pytest.raises(RecursionError):  # without on_error: the caller's to handle
        handle_until(inbox, handle, lambda: False, 5.0)


def test_the_observer_survives_garbage_on_every_topic(caplog: pytest.LogCaptureFixture) -> None:
    obs = SwarmObserver("s", "127.0.0.1", 1)  # never started: messages are fed by hand
    caplog.set_level(logging.INFO)
    t = obs.topics
    topics = [
        t.ledger_events(),
        t.model_latest(),
        t.model_chunk(0),
        t.fleet_status("agent-01"),
        t.fleet_telemetry("agent-01"),
        t.delta(1, "agent-01"),
    ]
    payloads = [*_deep(DEEP), *ODD, os.urandom(5000)]
    # a well-formed entry whose payload has the wrong shape for its kind
    key = SigningKey.generate()
    odd_entry = make_tx(key, "s", "round_open", "gw", {"round": [1], "x": {}}).chain(3, "0" * 64)
    payloads.append(odd_entry.canonical())
    for topic in topics:
        for payload in payloads:
            obs._queue.put(Message(topic, payload))
    assert obs.wait_for(obs._queue.empty, 60)
    assert obs.entries == [] and obs.status == {} and obs.telemetry == {}
    assert sum(obs.drops.counts.values()) >= 4 * len(payloads)
    assert sum(obs.drops.errors.values()) == 0  # every one refused by a decoder
    assert _tracebacks(caplog) == 0
    assert len(caplog.records) <= 3 * 6 + 10


def test_the_observer_reports_only_numbers_from_free_form_metrics() -> None:
    obs = SwarmObserver("s", "127.0.0.1", 1)
    key = SigningKey.generate()
    commit = {"round": 1, "node": "a", "envelope_sha256": "0" * 64, "n_samples": 5}
    for metrics in ({"train_s": "x"}, {"train_s": [1]}, {"train_s": True}, {"train_s": 2.5}):
        tx = make_tx(key, "s", "delta_commit", "a", {**commit, "metrics": metrics})
        obs._queue.put(Message(obs.topics.ledger_events(), tx.chain(1, "0" * 64).canonical()))
    assert obs.wait_for(obs._queue.empty, 10)
    assert obs.rounds[1].slowest_train_s == 2.5
