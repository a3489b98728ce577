"""The merge committee: a deterministic, fair draw; majority quorums; signatures that count
only from members, once each, over exactly the statement; a wire form that refuses garbage."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.swarm.committee import (
    Committee,
    CommitteeError,
    Reason,
    UpdateStatement,
    check_quorum,
    draw_committee,
    encode_signatures,
    parse_signatures,
    sign_statement,
)
from ledger_lite import SigningKey, verify

H1 = hashlib.sha256(b"round_open 1").hexdigest()
H2 = hashlib.sha256(b"round_open 2").hexdigest()
FLEET = [f"agent-{i:02d}" for i in range(20)]
MODEL = hashlib.sha256(b"model").hexdigest()
UPDATE = hashlib.sha256(b"update").hexdigest()

ids = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)


def reference_draw(h: str, agents: list[str], gateways: list[str], k: int) -> list[str]:
    """The draw as the issue states it, written out independently of the module."""
    pool = sorted(set(agents) - set(gateways))
    prefix = b"edge-swarm/committee/v1\0" + bytes.fromhex(h)
    scored = sorted((hashlib.sha256(prefix + a.encode()).digest(), a) for a in pool)
    return sorted(a for _, a in scored[:k])


# -- the draw


def test_draw_matches_the_specified_rendezvous_hash() -> None:
    c = draw_committee(H1, FLEET, ["gw-1"], 5)
    assert list(c.agents) == reference_draw(H1, FLEET, ["gw-1"], 5)
    assert c.round_open_hash == H1 and c.gateways == ("gw-1",) and len(c.agents) == 5
    assert c.members == tuple(sorted(("gw-1", *c.agents)))


@settings(max_examples=200, deadline=None)
@given(
    h=hashes,
    agents=st.lists(ids, max_size=25),
    gateways=st.lists(ids, max_size=4),
    k=st.integers(0, 30),
    data=st.data(),
)
def test_draw_ignores_order_and_duplicates(
    h: str, agents: list[str], gateways: list[str], k: int, data: st.DataObject
) -> None:
    c = draw_committee(h, agents, gateways, k)
    shuffled = data.draw(st.permutations(agents + agents[:3]))
    assert draw_committee(h, shuffled, list(reversed(gateways)) * 2, k) == c
    assert list(c.agents) == reference_draw(h, agents, gateways, k)
    pool = set(agents) - set(gateways)
    assert set(c.gateways) == set(gateways)  # every gateway, always
    assert set(c.agents) <= pool and len(c.agents) == min(k, len(pool))
    assert all(n in c for n in c.members) and len(set(c.members)) == len(c.members)


def test_gateways_are_always_members_and_take_no_draw_slot() -> None:
    gateways = ["gw-a", "gw-b", FLEET[0]]  # a gateway that is also listed as an agent
    c = draw_committee(H1, FLEET, gateways, 3)
    assert c.gateways == tuple(sorted(gateways))
    assert FLEET[0] not in c.agents and len(c.agents) == 3
    assert len(c.members) == 6


def test_k_larger_than_the_fleet_takes_every_agent() -> None:
    c = draw_committee(H1, FLEET[:4], ["gw"], 50)
    assert c.agents == tuple(FLEET[:4]) and c.quorum == 3


def test_k_zero_is_the_gateways_alone() -> None:
    c = draw_committee(H1, FLEET, ["gw-2", "gw-1"], 0)
    assert c.agents == () and c.members == ("gw-1", "gw-2") and c.quorum == 2


def test_a_different_round_open_hash_draws_differently() -> None:
    assert draw_committee(H1, FLEET, [], 5).agents != draw_committee(H2, FLEET, [], 5).agents
    drawn = {
        draw_committee(hashlib.sha256(b"%d" % i).hexdigest(), FLEET, [], 5) for i in range(100)
    }
    # 15,504 possible 5-sets: 100 draws repeating more than a few times would be no draw at all
    assert len({c.agents for c in drawn}) >= 95


def test_every_agent_is_drawn_about_equally_often() -> None:
    rng = random.Random(16)  # fixed: the test gives the same counts on every run
    n, k = 2000, 5
    counts: Counter[str] = Counter()
    for _ in range(n):
        counts.update(draw_committee(rng.randbytes(32).hex(), FLEET, [], k).agents)
    p = k / len(FLEET)
    mean, sd = n * p, math.sqrt(n * p * (1 - p))  # each agent: Binomial(2000, 1/4) marginally
    # Six standard deviations (about ±116 around 500): a fair hash passes with certainty;
    # a draw biased towards some ids, or one taking the first k, fails by hundreds.
    assert sum(counts.values()) == n * k
    assert all(abs(counts[a] - mean) <= 6 * sd for a in FLEET), counts


@pytest.mark.parametrize(
    "h", [H1.upper(), H1[:-1], H1 + "0", "", None, bytes.fromhex(H1), "g" * 64]
)
def test_a_malformed_round_open_hash_is_misuse(h: Any) -> None:
    with pytest.raises(ValueError):
        draw_committee(h, FLEET, [], 1)


@pytest.mark.parametrize("k", [-1, -100, True, 1.0, None])
def test_a_bad_k_is_misuse(k: Any) -> None:
    with pytest.raises(ValueError):
        draw_committee(H1, FLEET, [], k)


@pytest.mark.parametrize(
    ("agents", "gateways"), [("agent-00", []), (FLEET, "gw"), (["a/b"], []), (FLEET, [""])]
)
def test_bad_ids_are_misuse(agents: Any, gateways: Any) -> None:
    with pytest.raises(ValueError):
        draw_committee(H1, agents, gateways, 1)


def test_a_committee_built_by_hand_must_hold_together() -> None:
    Committee(H1, ("g",), ("a", "b"))
    for gws, agents in [(("g",), ("b", "a")), (("g", "g"), ()), (("g",), ("g",)), (["g"], ())]:
        with pytest.raises(CommitteeError):
            Committee(H1, gws, agents)  # type: ignore[arg-type]


# -- quorum arithmetic


@pytest.mark.parametrize(
    ("gateways", "k", "size", "quorum"),
    [(1, 0, 1, 1), (1, 2, 3, 2), (2, 0, 2, 2), (2, 2, 4, 3), (3, 0, 3, 2), (3, 2, 5, 3)],
)
def test_quorum_is_a_strict_majority(gateways: int, k: int, size: int, quorum: int) -> None:
    c = draw_committee(H1, FLEET, [f"gw-{i}" for i in range(gateways)], k)
    assert len(c.members) == size and c.quorum == quorum
    assert 2 * c.quorum > size  # any two quorums share a member


def test_an_empty_committee_can_never_finalise() -> None:
    c = draw_committee(H1, [], [], 3)
    assert c.members == () and c.quorum == 1
    assert not check_quorum(statement(), {}, c, lambda n: None).ok


# -- statements and signatures


def statement(**kw: Any) -> UpdateStatement:
    fields: dict[str, Any] = dict(swarm="site-1", round=7, update_sha256=UPDATE, model_hash=MODEL)
    fields.update(kw)
    return UpdateStatement(**fields)


def test_signing_bytes_are_canonical_and_domain_separated() -> None:
    assert statement().signing_bytes() == (
        b'{"domain":"edge-swarm/update/v1","model_hash":"' + MODEL.encode() + b'",'
        b'"round":7,"swarm":"site-1","update_sha256":"' + UPDATE.encode() + b'"}'
    )
    others = [statement(swarm="site-2"), statement(round=8), statement(model_hash=UPDATE)]
    assert len({s.signing_bytes() for s in [statement(), *others]}) == 4


@pytest.mark.parametrize(
    "bad",
    [
        {"swarm": "a/b"},
        {"swarm": ""},
        {"swarm": "x" * 65},
        {"swarm": None},
        {"round": -1},
        {"round": 2**32},
        {"round": True},
        {"round": 1.0},
        {"round": "7"},
        {"update_sha256": UPDATE.upper()},
        {"update_sha256": UPDATE[:62]},
        {"update_sha256": bytes.fromhex(UPDATE)},
        {"model_hash": "z" * 64},
        {"model_hash": MODEL + "00"},
        {"model_hash": None},
    ],
)
def test_statement_refuses_bad_fields(bad: dict[str, Any]) -> None:
    with pytest.raises(CommitteeError):
        statement(**bad)


def test_a_signature_verifies_with_ledger_lite() -> None:
    key = SigningKey.from_seed(bytes(32))
    sig = sign_statement(statement(), key)
    assert len(sig) == 128 and sig == sig.lower()
    assert verify(key.public_hex, statement().signing_bytes(), bytes.fromhex(sig))
    assert not verify(key.public_hex, statement(round=8).signing_bytes(), bytes.fromhex(sig))


KEYS = {n: SigningKey.from_seed(hashlib.sha256(n.encode()).digest()) for n in [*FLEET, "gw"]}


def public_key(node: str) -> str | None:
    key = KEYS.get(node)
    return None if key is None else key.public_hex


@pytest.fixture
def committee() -> Committee:
    c = draw_committee(H1, FLEET, ["gw"], 2)  # one gateway + two agents: quorum 2
    assert c.quorum == 2
    return c


def outsider(c: Committee) -> str:
    return next(a for a in FLEET if a not in c)


def sigs(nodes: list[str], signed: UpdateStatement | None = None) -> dict[str, str]:
    return {n: sign_statement(signed or statement(), KEYS[n]) for n in nodes}


def test_a_majority_of_members_finalises(committee: Committee) -> None:
    q = check_quorum(statement(), sigs(["gw", committee.agents[0]]), committee, public_key)
    assert q.ok and q.signers == (committee.agents[0], "gw") and q.needed == 2
    assert q.rejected == ()
    q = check_quorum(statement(), sigs(list(committee.members)), committee, public_key)
    assert q.ok and q.signers == committee.members


def test_the_gateway_alone_cannot_finalise(committee: Committee) -> None:
    q = check_quorum(statement(), sigs(["gw"]), committee, public_key)
    assert not q.ok and q.signers == ("gw",) and q.needed == 2


def test_a_non_members_signature_is_rejected_and_not_counted(committee: Committee) -> None:
    other = outsider(committee)
    q = check_quorum(statement(), sigs(["gw", other]), committee, public_key)
    assert not q.ok and q.signers == ("gw",)
    assert q.rejected == ((other, Reason.NOT_MEMBER),)


def test_a_signature_over_a_different_model_is_rejected(committee: Committee) -> None:
    a = committee.agents[0]
    forged = sigs(["gw"]) | sigs([a], statement(model_hash=UPDATE))
    q = check_quorum(statement(), forged, committee, public_key)
    assert not q.ok and q.signers == ("gw",) and q.rejected == ((a, Reason.BAD_SIGNATURE),)


def test_a_signature_under_another_members_name_is_rejected(committee: Committee) -> None:
    a, b = committee.agents
    q = check_quorum(
        statement(), {"gw": sigs(["gw"])["gw"], a: sigs([b])[b]}, committee, public_key
    )
    assert not q.ok and q.rejected == ((a, Reason.BAD_SIGNATURE),)


def test_a_member_without_a_key_is_not_counted(committee: Committee) -> None:
    a = committee.agents[0]
    q = check_quorum(
        statement(), sigs(["gw", a]), committee, lambda n: None if n == a else public_key(n)
    )
    assert not q.ok and q.rejected == ((a, Reason.UNKNOWN_KEY),)


def test_a_member_counts_once() -> None:
    # "gw" is a gateway and listed as an agent: one member, one vote, in a committee of 3.
    c = draw_committee(H1, ["gw", *FLEET], ["gw"], 2)
    assert len(c.members) == 3 and c.quorum == 2
    assert not check_quorum(statement(), sigs(["gw"]), c, public_key).ok
    # The wire form cannot name a node twice.
    pair = encode_signatures(sigs(["gw"]))[0]
    with pytest.raises(CommitteeError):
        parse_signatures([pair, pair])


@pytest.mark.parametrize(
    "garbage", ["", "zz", "ab" * 63, "AB" * 64, "ab" * 65, None, 5, b"\x00" * 64, ["ab" * 64]]
)
def test_garbage_signatures_are_rejected_without_raising(
    committee: Committee, garbage: Any
) -> None:
    a = committee.agents[0]
    q = check_quorum(statement(), {"gw": sigs(["gw"])["gw"], a: garbage}, committee, public_key)
    assert not q.ok and q.signers == ("gw",) and q.rejected == ((a, Reason.MALFORMED),)
    q = check_quorum(statement(), {a: "ab" * 64}, committee, public_key)  # well-formed, false
    assert q.rejected == ((a, Reason.BAD_SIGNATURE),)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=140),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(ids, json_values, max_size=6))
def test_check_quorum_never_raises_on_any_values(signatures: dict[str, Any]) -> None:
    c = draw_committee(H1, list(signatures), ["gw"], 3)
    q = check_quorum(statement(), signatures, c, public_key)
    assert q.signers == () and len(q.rejected) == len(signatures)


# -- the wire form


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_signatures_raises_only_committee_error(obj: Any) -> None:
    try:
        out = parse_signatures(obj)
    except CommitteeError:
        return
    assert encode_signatures(out) == obj  # it parsed: it was the one spelling of a set


pair = st.tuples(
    ids | st.sampled_from(["a/b", "", 7, None]),
    st.sampled_from(["ab" * 64, "cd" * 64, "AB" * 64, "ab" * 63, None, 3]),
).map(list)
near_valid = st.lists(pair, max_size=6) | st.lists(pair, max_size=6).map(
    lambda ps: sorted(ps, key=lambda p: str(p[0]))  # sorted often enough to parse
)


@settings(max_examples=300, deadline=None)
@given(near_valid)
def test_near_valid_lists_raise_only_committee_error(obj: list[Any]) -> None:
    try:
        out = parse_signatures(obj)
    except CommitteeError:
        return
    assert encode_signatures(out) == obj


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(ids, st.binary(min_size=64, max_size=64).map(bytes.hex), max_size=20))
def test_signatures_round_trip(signatures: dict[str, str]) -> None:
    wire = encode_signatures(signatures)
    assert [n for n, _ in wire] == sorted(signatures)
    assert parse_signatures(wire) == signatures


def test_the_wire_form_is_refused_unsorted_oversized_or_malformed() -> None:
    wire = encode_signatures({"a": "ab" * 64, "b": "cd" * 64})
    assert parse_signatures(wire) == {"a": "ab" * 64, "b": "cd" * 64}
    for bad in [
        list(reversed(wire)),  # one set, one spelling
        {"a": "ab" * 64},  # the dict form is not the wire form
        [["a", "ab" * 64, "x"]],
        [["a/b", "ab" * 64]],
        [["a", "AB" * 64]],
        "[]",
    ]:
        with pytest.raises(CommitteeError):
            parse_signatures(bad)
    with pytest.raises(CommitteeError):
        parse_signatures(wire, max_entries=1)
    with pytest.raises(CommitteeError):
        encode_signatures({"a": "not hex"})
