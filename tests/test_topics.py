"""The topic scheme: every built topic parses back; anything else raises only TopicError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_swarm.swarm.topics import (
    ALL,
    MAX_ROUND,
    ParsedTopic,
    TopicError,
    TopicKind,
    Topics,
)

ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
rounds = st.integers(min_value=0, max_value=MAX_ROUND)


def test_layout_is_the_documented_one() -> None:
    t = Topics("clinic-a")
    assert t.delta(3, "pi-7") == "es/v1/clinic-a/round/3/delta/pi-7"
    assert t.delta_filter() == "es/v1/clinic-a/round/+/delta/+"
    assert t.model_latest() == "es/v1/clinic-a/model/latest"
    assert t.ledger_submit() == "es/v1/clinic-a/ledger/submit"
    assert t.ledger_events() == "es/v1/clinic-a/ledger/events"
    assert t.ledger_query() == "es/v1/clinic-a/ledger/query"
    assert t.ledger_reply("op.1") == "es/v1/clinic-a/ledger/reply/op.1"
    assert t.fleet_status("pi-7") == "es/v1/clinic-a/fleet/status/pi-7"
    assert t.fleet_status_filter() == "es/v1/clinic-a/fleet/status/+"
    assert t.fleet_telemetry("pi-7") == "es/v1/clinic-a/fleet/telemetry/pi-7"
    assert t.fleet_telemetry_filter() == "es/v1/clinic-a/fleet/telemetry/+"
    assert t.fleet_cmd(ALL) == "es/v1/clinic-a/fleet/cmd/all"


@given(swarm=ids, r=rounds, node=ids)
def test_round_trip(swarm: str, r: int, node: str) -> None:
    t = Topics(swarm)
    cases = {
        t.delta(r, node): ParsedTopic(TopicKind.DELTA, r, node),
        t.resend(r, node): ParsedTopic(TopicKind.RESEND, r, node),
        t.model_offer(r, node): ParsedTopic(TopicKind.MODEL_OFFER, r, node),
        t.model_latest(): ParsedTopic(TopicKind.MODEL_LATEST),
        t.ledger_submit(): ParsedTopic(TopicKind.LEDGER_SUBMIT),
        t.ledger_events(): ParsedTopic(TopicKind.LEDGER_EVENTS),
        t.ledger_query(): ParsedTopic(TopicKind.LEDGER_QUERY),
        t.ledger_reply(node): ParsedTopic(TopicKind.LEDGER_REPLY, node=node),
        t.fleet_status(node): ParsedTopic(TopicKind.FLEET_STATUS, node=node),
        t.fleet_telemetry(node): ParsedTopic(TopicKind.FLEET_TELEMETRY, node=node),
        t.fleet_cmd(node): ParsedTopic(TopicKind.FLEET_CMD, node=node),
    }
    for topic, parsed in cases.items():
        assert t.parse(topic) == parsed
        assert "+" not in topic and "#" not in topic


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 65, "a+b", "#", "é", "a b", None, 3])
def test_bad_ids_refused(bad: object) -> None:
    with pytest.raises(TopicError):
        Topics(bad)  # type: ignore[arg-type]
    with pytest.raises(TopicError):
        Topics("s").delta(1, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, MAX_ROUND + 1, True, 1.0, "1"])
def test_bad_rounds_refused(bad: object) -> None:
    with pytest.raises(TopicError):
        Topics("s").delta(bad, "n")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic",
    [
        "es/v1/s/round/01/delta/n",  # leading zero: not the canonical spelling
        "es/v1/s/round/4294967296/delta/n",  # past u32
        "es/v1/s/round/+/delta/+",  # a filter is not a topic
        "es/v1/s/round/1/delta/n/extra",
        "es/v1/other/model/latest",  # another swarm
        "es/v1/s/model/latest/",
        "es/v1/s/fleet/cmd/",
        "es/v1/s/fleet/status/a/b",
        "es/v2/s/model/latest",
        "es/v1/s/",
        "",
    ],
)
def test_parse_refuses(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics("s").parse(topic)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=50), st.integers(), st.none()))
def test_parse_raises_only_topic_error(topic: object) -> None:
    t = Topics("s")
    with contextlib.suppress(TopicError):
        t.parse(topic)


@given(
    st.lists(
        st.one_of(st.sampled_from(["round", "delta", "fleet", "cmd", "0", "1", "+"]), ids),
        max_size=6,
    )
)
def test_parse_structured_garbage(levels: list[str]) -> None:
    t = Topics("s")
    topic = t.root + "/".join(levels)
    try:
        parsed = t.parse(topic)
    except TopicError:
        return
    assert isinstance(parsed, ParsedTopic)


def test_model_chunk_topics_parse_with_their_index() -> None:
    t = Topics("s1")
    assert t.model_chunk(3) == "es/v1/s1/model/chunk/3"
    assert t.parse(t.model_chunk(3)) == ParsedTopic("model_chunk", None, "3")
    assert t.model_chunk_filter() == "es/v1/s1/model/chunk/+"
