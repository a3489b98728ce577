"""Zeroconf adverts: TXT building and parsing, and which adverts ``choose`` trusts."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.swarm.adverts import (
    MAX_TXT_KEYS,
    MAX_TXT_VALUE,
    PROTOCOL,
    SERVICE_MQTT,
    SERVICE_MQTTS,
    SERVICE_SWARM,
    SERVICE_TYPES,
    Advert,
    AdvertError,
    Choice,
    Endpoint,
    Expectation,
    Reason,
    Rejected,
    broker_txt,
    choose,
    key_fingerprint,
    parse_txt,
    swarm_txt,
)
from ledger_lite.keys import SigningKey

SWARM = "clinic-a"
GENESIS = hashlib.sha256(b"genesis of clinic-a").hexdigest()
OTHER_GENESIS = hashlib.sha256(b"a rogue genesis").hexdigest()
GW_FP = key_fingerprint(hashlib.sha256(b"gateway key").hexdigest())
GW2_FP = key_fingerprint(hashlib.sha256(b"second gateway key").hexdigest())
AGENT_FP = key_fingerprint(hashlib.sha256(b"agent key").hexdigest())
ROGUE_FP = key_fingerprint(hashlib.sha256(b"rogue key").hexdigest())

WANT = Expectation(SWARM, GENESIS)
WANT_KNOWN = Expectation(SWARM, GENESIS, gateway_fps=frozenset({GW_FP, GW2_FP}))


def node_advert(
    node: str,
    role: str = "agent",
    fp: str = AGENT_FP,
    *,
    swarm: str = SWARM,
    genesis: str = GENESIS,
    addresses: tuple[str, ...] = ("192.168.1.20",),
    port: int = 7000,
    seen_at: float = 1.0,
    **txt: str,
) -> Advert:
    props = {**swarm_txt(swarm, genesis, role, node, fp), **txt}
    return Advert(SERVICE_SWARM, f"{node}.{SERVICE_SWARM}", addresses, port, props, seen_at)


def broker_advert(
    instance: str,
    *,
    tls: bool = False,
    fp: str | None = None,
    swarm: str = SWARM,
    genesis: str = GENESIS,
    addresses: tuple[str, ...] = ("192.168.1.10",),
    port: int = 1883,
    seen_at: float = 1.0,
    **txt: str,
) -> Advert:
    service = SERVICE_MQTTS if tls else SERVICE_MQTT
    props = {**broker_txt(swarm, genesis, fp), **txt}
    return Advert(service, f"{instance}.{service}", addresses, port, props, seen_at)


def with_txt(advert: Advert, **txt: str) -> Advert:
    new = {**advert.txt, **txt}
    return Advert(advert.service, advert.name, advert.addresses, advert.port, new, advert.seen_at)


def without(advert: Advert, *keys: str) -> Advert:
    txt = {k: v for k, v in advert.txt.items() if k not in keys}
    return Advert(advert.service, advert.name, advert.addresses, advert.port, txt, advert.seen_at)


def reasons(choice: Choice) -> dict[str, str]:
    return {r.advert.name: r.reason for r in choice.rejected}


def only_rejection(advert: Advert, want: Expectation = WANT) -> str | None:
    choice = choose([advert], want)
    assert len(choice.rejected) <= 1
    return choice.rejected[0].reason if choice.rejected else None


# --------------------------------------------------------------------------- fingerprints


def test_key_fingerprint_known_value() -> None:
    # RFC 8032 test vector 1: its seed gives this public key.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public_hex = SigningKey.from_seed(seed).public_hex
    assert public_hex == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key_fingerprint(public_hex) == "21fe31dfa154a261"
    assert key_fingerprint(public_hex) == hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:16]


@pytest.mark.parametrize("bad", ["", "ab" * 31, "AB" * 32, "g" * 64, "ab" * 33, b"ab" * 32, None])
def test_key_fingerprint_refuses_anything_but_64_lowercase_hex(bad: object) -> None:
    with pytest.raises(ValueError):
        key_fingerprint(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- TXT


def as_zeroconf(txt: Mapping[str, str]) -> dict[bytes, bytes | None]:
    """What python-zeroconf's ServiceInfo.properties gives back for TXT we registered."""
    return {k.encode(): v.encode("utf-8") for k, v in txt.items()}


def test_swarm_txt_round_trip() -> None:
    txt = swarm_txt(SWARM, GENESIS, "gateway", "gw-1", GW_FP, state="online", round=42)
    assert txt == {
        "swarm": SWARM,
        "genesis": GENESIS,
        "role": "gateway",
        "node": "gw-1",
        "proto": PROTOCOL,
        "fp": GW_FP,
        "state": "online",
        "round": "42",
    }
    a = Advert(
        SERVICE_SWARM, "gw-1." + SERVICE_SWARM, ("10.0.0.1",), 7000, parse_txt(as_zeroconf(txt))
    )
    assert a.txt == txt
    assert (a.swarm, a.genesis, a.role, a.node, a.fp, a.proto) == (
        SWARM,
        GENESIS,
        "gateway",
        "gw-1",
        GW_FP,
        PROTOCOL,
    )
    assert (a.state, a.round, a.is_broker, a.tls) == ("online", 42, False, False)


def test_swarm_txt_optional_keys_are_left_out() -> None:
    txt = swarm_txt(SWARM, GENESIS, "agent", "pi-3", AGENT_FP)
    assert "state" not in txt and "round" not in txt
    a = Advert(
        SERVICE_SWARM, "pi-3." + SERVICE_SWARM, ("10.0.0.2",), 7000, parse_txt(as_zeroconf(txt))
    )
    assert (a.state, a.round, a.role, a.node) == (None, None, "agent", "pi-3")


def test_broker_txt_round_trip() -> None:
    mine = broker_txt(SWARM, GENESIS)
    assert mine == {"swarm": SWARM, "genesis": GENESIS, "proto": PROTOCOL}
    vouched = broker_txt(SWARM, GENESIS, fp=GW_FP)
    assert vouched == {**mine, "fp": GW_FP}
    a = Advert(
        SERVICE_MQTTS, "b." + SERVICE_MQTTS, ("10.0.0.3",), 8883, parse_txt(as_zeroconf(vouched))
    )
    assert (a.swarm, a.genesis, a.proto, a.fp, a.role, a.node) == (
        SWARM,
        GENESIS,
        PROTOCOL,
        GW_FP,
        None,
        None,
    )
    assert a.is_broker and a.tls


@pytest.mark.parametrize(
    "kwargs",
    [
        {"swarm": "bad/swarm"},
        {"genesis_hash": "ab" * 31},
        {"genesis_hash": GENESIS.upper()},
        {"role": "admin"},
        {"node": ""},
        {"node": "a+b"},
        {"fp": "xyz"},
        {"fp": GW_FP.upper()},
        {"state": "asleep"},
        {"round": -1},
        {"round": 2**32},
        {"round": True},
    ],
)
def test_swarm_txt_refuses_misuse(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = dict(
        swarm=SWARM, genesis_hash=GENESIS, role="agent", node="pi-1", fp=AGENT_FP
    )
    with pytest.raises(ValueError):
        swarm_txt(**{**args, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"swarm": "a b"}, {"genesis_hash": "00"}, {"fp": "00"}, {"fp": ""}]
)
def test_broker_txt_refuses_misuse(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = dict(swarm=SWARM, genesis_hash=GENESIS)
    with pytest.raises(ValueError):
        broker_txt(**{**args, **kwargs})  # type: ignore[arg-type]


def test_parse_txt_decodes_lowercases_and_drops() -> None:
    raw: dict[bytes | str, bytes | str | None] = {
        b"Swarm": b"clinic-a",
        b"SWARM": b"ignored: the first of a repeated key wins",
        b"flag": None,  # a boolean attribute: none of ours
        b"": b"a missing key is ignored (RFC 6763 6.4)",
        "node": "pi-\u00e9",
        b"note": "caf\u00e9".encode(),
        b"empty": b"",
    }
    assert parse_txt(raw) == {
        "swarm": "clinic-a",
        "node": "pi-\u00e9",
        "note": "caf\u00e9",
        "empty": "",
    }


def test_parse_txt_a_none_first_occurrence_shadows_later_ones() -> None:
    assert parse_txt({b"fp": None, b"FP": GW_FP.encode()}) == {}


@pytest.mark.parametrize(
    "raw",
    [
        {f"k{i}".encode(): b"v" for i in range(MAX_TXT_KEYS + 1)},
        {b"a=b": b"v"},
        {b"tab\t": b"v"},
        {b"\xc3\xa9": b"v"},
        {"\u00e9": b"v"},
        {b"k": b"\xff"},
        {b"k": b"v" * (MAX_TXT_VALUE + 1)},
        {b"k": "\u00e9" * 128},  # 256 bytes in UTF-8
        {b"k": "\ud800"},
        {b"k": 5},
        {5: b"v"},
        [(b"k", b"v")],
        None,
    ],
)
def test_parse_txt_refuses_with_advert_error(raw: object) -> None:
    with pytest.raises(AdvertError):
        parse_txt(raw)  # type: ignore[arg-type]


def test_parse_txt_skips_long_keys_of_other_tools() -> None:
    """An avahi service file may add e.g. "description": not ours, skipped, not fatal."""
    assert parse_txt({b"description": b"site broker", b"swarm": b"a"}) == {"swarm": "a"}


def test_parse_txt_limits_are_inclusive() -> None:
    raw = {f"key{i:06d}".encode(): b"v" * MAX_TXT_VALUE for i in range(MAX_TXT_KEYS)}
    assert len(parse_txt(raw)) == MAX_TXT_KEYS


@given(
    st.dictionaries(
        st.one_of(st.binary(max_size=12), st.text(max_size=12)),
        st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=300)),
        max_size=40,
    )
)
def test_parse_txt_raises_only_advert_error(raw: dict[bytes | str, bytes | str | None]) -> None:
    try:
        txt = parse_txt(raw)
    except AdvertError:
        return
    assert len(txt) <= MAX_TXT_KEYS
    for key, value in txt.items():
        assert key == key.lower() and 0 < len(key) <= 9
        assert len(value.encode("utf-8")) <= MAX_TXT_VALUE


def test_properties_are_none_when_malformed_and_never_raise() -> None:
    txt = {
        "swarm": "no/slashes",
        "genesis": GENESIS[:-1],
        "role": "king",
        "node": "",
        "fp": "not hex at all!!",
        "state": "ONLINE",
        "round": "007",
    }
    a = Advert(SERVICE_SWARM, "x." + SERVICE_SWARM, (), 0, txt)
    assert (a.swarm, a.genesis, a.role, a.node, a.fp, a.state, a.round) == (None,) * 7
    assert a.proto is None
    assert Advert(SERVICE_SWARM, "x", (), 0, {"round": str(2**32)}).round is None
    assert Advert(SERVICE_SWARM, "x", (), 0, {"round": "4294967295"}).round == 2**32 - 1
    assert Advert(SERVICE_SWARM, "x", (), 0, {"proto": ""}).proto == ""


def test_advert_copies_its_txt() -> None:
    txt = dict(broker_txt(SWARM, GENESIS))
    a = Advert(SERVICE_MQTT, "b", ("10.0.0.1",), 1883, txt)
    txt["swarm"] = "changed"
    assert a.swarm == SWARM
    with pytest.raises(TypeError):
        a.txt["swarm"] = "changed"  # type: ignore[index]
    assert a in {a}  # hashable, txt aside


# --------------------------------------------------------------------------- rejections


def test_a_good_swarm_is_accepted() -> None:
    gw = node_advert("gw-1", "gateway", GW_FP)
    ag = node_advert("pi-1")
    obs = node_advert("obs-1", "observer", AGENT_FP)
    br = broker_advert("mosq", fp=GW_FP)
    choice = choose([ag, br, gw, obs], WANT_KNOWN)
    assert choice.rejected == ()
    assert choice.gateways == (gw,)
    assert choice.agents == (ag,)
    assert choice.broker == Endpoint("192.168.1.10", 1883, False, br.name)


def test_other_swarm_is_rejected_quietly() -> None:
    a = node_advert("pi-1", swarm="clinic-b")
    (r,) = choose([a], WANT).rejected
    assert r == Rejected(a, Reason.OTHER_SWARM) and r.reason == "other swarm"
    assert not r.warn
    # Whatever else is wrong with another swarm's advert, it is not ours to warn about.
    broken = node_advert("pi-2", swarm="clinic-b", genesis=OTHER_GENESIS, addresses=(), proto="9")
    assert only_rejection(broken) == Reason.OTHER_SWARM


def test_rogue_with_our_swarm_id_and_wrong_genesis_is_a_warning() -> None:
    rogue = broker_advert("evil", tls=True, genesis=OTHER_GENESIS, addresses=("10.6.6.6",))
    good = broker_advert("mosq")
    choice = choose([rogue, good], WANT)
    (r,) = choice.rejected
    assert (r.advert, r.reason, r.warn) == (rogue, "wrong genesis", True)
    # The rogue advertised TLS, which is preferred; it still does not get picked.
    assert choice.broker is not None and choice.broker.source == good.name
    # Also when its shape is broken: a copied swarm id is reported as what it is.
    assert only_rejection(without(rogue, "proto")) == Reason.WRONG_GENESIS


@pytest.mark.parametrize(
    "advert",
    [
        without(broker_advert("b"), "swarm"),
        without(node_advert("n"), "genesis"),
        with_txt(broker_advert("b"), genesis="ab"),
        broker_advert("b", addresses=()),
        broker_advert("b", addresses=("mosquitto.local",)),  # a name, not an address
        broker_advert("b", addresses=("0.0.0.0", "::", "224.0.0.251")),
        broker_advert("b", port=0),
        broker_advert("b", port=65536),
        broker_advert("b", port=-1),
        with_txt(broker_advert("b"), fp="nothex"),
        with_txt(node_advert("n"), role="king"),
        without(node_advert("n"), "role"),
        without(node_advert("n"), "node"),
        with_txt(node_advert("n"), node="a/b"),
        without(node_advert("n"), "fp"),
        with_txt(node_advert("n"), fp="short"),
        Advert("_http._tcp.local.", "web._http._tcp.local.", ("10.0.0.1",), 80, {}),
    ],
)
def test_bad_advert(advert: Advert) -> None:
    (r,) = choose([advert], WANT).rejected
    assert (r.reason, r.warn) == (Reason.BAD_ADVERT, True)


def test_wrong_protocol() -> None:
    assert only_rejection(node_advert("n", proto="2")) == Reason.WRONG_PROTOCOL
    assert only_rejection(node_advert("n", proto="")) == Reason.WRONG_PROTOCOL
    assert only_rejection(broker_advert("b", proto="2")) == Reason.WRONG_PROTOCOL
    # Required of swarm adverts; a broker advertised by another tool may leave it out.
    assert only_rejection(without(node_advert("n"), "proto")) == Reason.WRONG_PROTOCOL
    assert only_rejection(without(broker_advert("b"), "proto")) is None
    r = choose([node_advert("n", proto="2")], WANT).rejected[0]
    assert r.warn


def test_unknown_key() -> None:
    rogue_gw = node_advert("gw-9", "gateway", ROGUE_FP)
    rogue_br = broker_advert("b", fp=ROGUE_FP)
    assert only_rejection(rogue_gw, WANT_KNOWN) == Reason.UNKNOWN_KEY
    assert only_rejection(rogue_br, WANT_KNOWN) == Reason.UNKNOWN_KEY
    assert choose([rogue_gw], WANT_KNOWN).rejected[0].warn
    # Before the first ledger sync the enrolled gateways are not known: any fp goes.
    assert only_rejection(rogue_gw, WANT) is None
    assert only_rejection(rogue_br, WANT) is None
    # Agents are not gateways: their fp is carried, not checked against gateway_fps.
    assert only_rejection(node_advert("pi-1", fp=ROGUE_FP), WANT_KNOWN) is None
    assert only_rejection(node_advert("obs", "observer", ROGUE_FP), WANT_KNOWN) is None
    # A broker advertising itself carries no fp, and is not a rogue for that.
    assert only_rejection(broker_advert("b"), WANT_KNOWN) is None
    assert only_rejection(node_advert("gw-1", "gateway", GW_FP), WANT_KNOWN) is None


def test_wrong_transport() -> None:
    plain, tls = broker_advert("p"), broker_advert("t", tls=True, port=8883)
    only_tls = Expectation(SWARM, GENESIS, tls=True)
    only_plain = Expectation(SWARM, GENESIS, tls=False)
    c = choose([plain, tls], only_tls)
    assert reasons(c) == {plain.name: Reason.WRONG_TRANSPORT}
    assert c.broker == Endpoint("192.168.1.10", 8883, True, tls.name)
    assert c.rejected[0].warn
    c = choose([plain, tls], only_plain)
    assert reasons(c) == {tls.name: Reason.WRONG_TRANSPORT}
    assert c.broker == Endpoint("192.168.1.10", 1883, False, plain.name)
    # Node adverts have no transport.
    assert choose([node_advert("pi-1")], only_tls).rejected == ()


def test_no_broker_when_none_qualifies() -> None:
    c = choose([node_advert("gw-1", "gateway", GW_FP)], WANT)
    assert c.broker is None and len(c.gateways) == 1
    assert choose([], WANT) == Choice(None, (), (), ())


# --------------------------------------------------------------------------- broker ranking


def broker_of(adverts: list[Advert], want: Expectation = WANT) -> str:
    for order in (adverts, adverts[::-1]):  # the input order never matters
        c = choose(order, want)
        assert c.rejected == ()
        assert c.broker is not None
        picked = c.broker.source
        assert picked == choose(adverts, want).broker.source  # type: ignore[union-attr]
    return picked


def test_rank_tls_first_when_either_goes() -> None:
    plain = broker_advert("p", fp=GW_FP, seen_at=9.0)
    tls = broker_advert("t", tls=True, seen_at=1.0)
    # TLS beats both "vouched for" and "newer".
    assert broker_of([plain, tls], WANT_KNOWN) == tls.name


def test_rank_vouched_for_by_an_enrolled_gateway_next() -> None:
    bare = broker_advert("a", seen_at=9.0)
    vouched = broker_advert("z", fp=GW2_FP, seen_at=1.0)
    assert broker_of([bare, vouched], WANT_KNOWN) == vouched.name
    # Before the gateways are known nothing is vouched for: the newer wins.
    assert broker_of([bare, vouched], WANT) == bare.name


def test_rank_newest_next() -> None:
    old = broker_advert("a", seen_at=1.0)
    new = broker_advert("z", seen_at=2.0)
    assert broker_of([old, new]) == new.name


def test_rank_name_last() -> None:
    a = broker_advert("a", seen_at=5.0, addresses=("10.0.0.2",))
    b = broker_advert("b", seen_at=5.0, addresses=("10.0.0.1",))
    assert broker_of([a, b]) == a.name


def test_broker_host_is_the_first_ipv4_address() -> None:
    b = broker_advert("b", addresses=("fe80::1%eth0", "bogus", "10.0.0.7", "10.0.0.8"))
    c = choose([b], WANT)
    assert c.broker == Endpoint("10.0.0.7", 1883, False, b.name)
    v6 = broker_advert("b", addresses=("bogus", "fd00::7", "fd00::8"))
    assert choose([v6], WANT).broker == Endpoint("fd00::7", 1883, False, v6.name)


# --------------------------------------------------------------------------- de-duplication


def test_same_name_keeps_the_newest() -> None:
    old = broker_advert("b", seen_at=1.0, addresses=("10.0.0.1",))
    new = broker_advert("b", seen_at=2.0, addresses=("10.0.0.2",))
    for order in ([old, new], [new, old]):
        c = choose(order, WANT)
        assert c.broker == Endpoint("10.0.0.2", 1883, False, new.name)
        assert c.rejected == ()
    # The newest is judged, not the best: an old good view does not hide a new bad one.
    bad = broker_advert("b", seen_at=3.0, genesis=OTHER_GENESIS)
    c = choose([old, bad, new], WANT)
    assert c.broker is None and reasons(c) == {bad.name: Reason.WRONG_GENESIS}


def test_same_name_same_time_does_not_depend_on_order() -> None:
    a = broker_advert("b", addresses=("10.0.0.1",))
    b = broker_advert("b", addresses=("10.0.0.2",))
    assert choose([a, b], WANT) == choose([b, a], WANT)


def test_gateways_and_agents_sorted_by_node() -> None:
    ads = [node_advert(n, "gateway", GW_FP) for n in ("gw-c", "gw-a", "gw-b")]
    ads += [node_advert(n) for n in ("pi-9", "pi-1", "pi-10")]
    c = choose(ads, WANT_KNOWN)
    assert [a.node for a in c.gateways] == ["gw-a", "gw-b", "gw-c"]
    assert [a.node for a in c.agents] == ["pi-1", "pi-10", "pi-9"]


# --------------------------------------------------------------------------- two swarms


def test_two_swarms_on_one_lan_do_not_mix() -> None:
    genesis_b = hashlib.sha256(b"genesis of clinic-b").hexdigest()
    fp_b = key_fingerprint(hashlib.sha256(b"clinic-b gateway").hexdigest())
    a_side = [
        node_advert("gw-1", "gateway", GW_FP),
        node_advert("pi-1"),
        broker_advert("mosq-a", fp=GW_FP, tls=True),
    ]
    b_side = [
        node_advert("gw-b", "gateway", fp_b, swarm="clinic-b", genesis=genesis_b),
        node_advert("pi-b", swarm="clinic-b", genesis=genesis_b),
        broker_advert("mosq-b", fp=fp_b, tls=True, swarm="clinic-b", genesis=genesis_b),
    ]
    lan = a_side + b_side
    ca = choose(lan, Expectation(SWARM, GENESIS, frozenset({GW_FP})))
    cb = choose(lan, Expectation("clinic-b", genesis_b, frozenset({fp_b})))
    assert ca.broker is not None and cb.broker is not None
    assert (ca.broker.source, cb.broker.source) == (a_side[2].name, b_side[2].name)
    assert ca.gateways + ca.agents == (a_side[0], a_side[1])
    assert cb.gateways + cb.agents == (b_side[0], b_side[1])
    assert {r.advert for r in ca.rejected} == set(b_side)
    assert {r.advert for r in cb.rejected} == set(a_side)
    assert all(r.reason == Reason.OTHER_SWARM and not r.warn for r in ca.rejected + cb.rejected)


# --------------------------------------------------------------------------- totality

_names = st.sampled_from([f"n{i}.{s}" for i in range(4) for s in SERVICE_TYPES] + ["", "x"])
_txt_keys = st.sampled_from(["swarm", "genesis", "role", "node", "proto", "fp", "state", "round"])
_txt_values = st.one_of(
    st.text(max_size=70),
    st.sampled_from([SWARM, "clinic-b", GENESIS, OTHER_GENESIS, PROTOCOL, "2", "gateway"]),
    st.sampled_from(["agent", "observer", GW_FP, ROGUE_FP, "pi-1", "online", "7"]),
)


_good_addresses = st.sampled_from(["10.0.0.1", "192.168.1.2", "fd00::1", "fe80::1%2"])
_addresses = st.one_of(_good_addresses, st.sampled_from(["0.0.0.0", "::"]), st.text(max_size=40))
_seen_ats = st.one_of(st.floats(), st.integers(min_value=-(2**53), max_value=2**53))


@st.composite
def _plausible_adverts(draw: st.DrawFn) -> Advert:
    """One of our adverts (either kind), sometimes with a key dropped or changed: reaches
    acceptance and every reason."""
    index = draw(st.integers(min_value=0, max_value=3))
    if draw(st.booleans()):
        service = SERVICE_SWARM
        role = draw(st.sampled_from(["gateway", "agent", "observer"]))
        fp = draw(st.sampled_from([GW_FP, GW2_FP, AGENT_FP, ROGUE_FP]))
        txt = swarm_txt(SWARM, GENESIS, role, f"pi-{index}", fp)
    else:
        service = draw(st.sampled_from([SERVICE_MQTT, SERVICE_MQTTS]))
        txt = broker_txt(SWARM, GENESIS, draw(st.sampled_from([None, GW_FP, ROGUE_FP])))
    for key in draw(st.lists(_txt_keys, max_size=1)):
        txt.pop(key, None)
    txt.update(draw(st.dictionaries(_txt_keys, _txt_values, max_size=1)))
    addresses = tuple(draw(st.lists(_good_addresses, min_size=1, max_size=3)))
    port = draw(st.sampled_from([1883, 8883, 1, 65535]))
    return Advert(service, f"n{index}.{service}", addresses, port, txt, draw(_seen_ats))


_random_adverts = st.builds(
    Advert,
    service=st.one_of(st.sampled_from(SERVICE_TYPES + ("_http._tcp.local.",)), st.text()),
    name=_names,
    addresses=st.lists(_addresses, max_size=3).map(tuple),
    port=st.integers(min_value=-(2**70), max_value=2**70),
    txt=st.one_of(
        st.dictionaries(_txt_keys, _txt_values, max_size=8),
        st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    ),
    seen_at=_seen_ats,
)
_adverts = st.one_of(_plausible_adverts(), _random_adverts)
_expectations = st.builds(
    Expectation,
    swarm=st.sampled_from([SWARM, SWARM, "clinic-b"]),
    genesis_hash=st.sampled_from([GENESIS, GENESIS, OTHER_GENESIS]),
    gateway_fps=st.one_of(st.none(), st.frozensets(st.sampled_from([GW_FP, ROGUE_FP, AGENT_FP]))),
    tls=st.sampled_from([None, True, False]),
)


def _newness(a: Advert) -> float:
    return -math.inf if math.isnan(a.seen_at) else a.seen_at


@settings(max_examples=300)
@given(st.lists(_adverts, max_size=12), _expectations, st.randoms(use_true_random=False))
def test_choose_is_total_and_accounts_for_every_advert(
    adverts: list[Advert], want: Expectation, rnd: random.Random
) -> None:
    choice = choose(adverts, want)
    # Deterministic: the input order does not matter. (Compared as repr: a NaN seen_at makes
    # two identical adverts unequal, and either may be the one kept.)
    shuffled = list(adverts)
    rnd.shuffle(shuffled)
    assert repr(choose(shuffled, want)) == repr(choice)

    rejected = {}
    for r in choice.rejected:
        assert r.advert.name not in rejected, "a name rejected twice"
        rejected[r.advert.name] = r.advert
        assert r.reason in {
            "other swarm",
            "wrong genesis",
            "unknown key",
            "wrong protocol",
            "bad advert",
            "wrong transport",
        }
        assert r.warn == (r.reason != "other swarm")
    listed = {}
    for a in choice.gateways + choice.agents:
        assert a.name not in listed, "a name listed twice"
        listed[a.name] = a
        assert (a.swarm, a.genesis, a.proto) == (want.swarm, want.genesis_hash, PROTOCOL)
    assert not set(listed) & set(rejected), "an advert both accepted and rejected"

    groups: dict[str, list[Advert]] = {}
    for a in adverts:
        groups.setdefault(a.name, []).append(a)
    assert set(rejected) | set(listed) <= set(groups)
    for name, group in groups.items():
        newest = max(_newness(a) for a in group)
        top = [a for a in group if _newness(a) == newest]
        judged = rejected.get(name) or listed.get(name)
        if judged is not None:
            # The one advert of this name that counted is a newest one.
            assert any(judged is a for a in top)
        else:
            # Accepted, listed nowhere: a broker (maybe the chosen one) or an observer.
            assert any(a.is_broker or a.role == "observer" for a in top)
    if choice.broker is not None:
        assert choice.broker.source in groups
        assert choice.broker.source not in rejected and choice.broker.source not in listed
        assert 1 <= choice.broker.port <= 65535
        assert want.tls is None or choice.broker.tls == want.tls


def test_choose_takes_any_seen_at() -> None:
    ads = [
        broker_advert("b", seen_at=math.nan, addresses=("10.0.0.1",)),
        broker_advert("b", seen_at=-math.inf, addresses=("10.0.0.2",)),
        broker_advert("c", seen_at=2**2000),  # type: ignore[arg-type]
        broker_advert("c", seen_at=-(2**2000)),  # type: ignore[arg-type]
        broker_advert("d", seen_at=math.inf),
    ]
    c = choose(ads, WANT)
    assert c.rejected == () and c.broker is not None
    assert c == choose(ads[::-1], WANT)


def test_choose_rejects_ill_typed_adverts_instead_of_raising() -> None:
    weird = [
        Advert(SERVICE_MQTT, "b", ["10.0.0.1"], 1883, broker_txt(SWARM, GENESIS)),  # type: ignore[arg-type]
        Advert(SERVICE_MQTT, None, ("10.0.0.1",), 1883, broker_txt(SWARM, GENESIS)),  # type: ignore[arg-type]
        Advert(SERVICE_MQTT, "c", ("10.0.0.1",), True, broker_txt(SWARM, GENESIS)),  # type: ignore[arg-type]
        Advert(SERVICE_MQTT, "d", ("10.0.0.1",), 1883, {b"swarm": b"x"}),  # type: ignore[dict-item]
        Advert(SERVICE_MQTT, "e", ("10.0.0.1",), 1883, {}, "now"),  # type: ignore[arg-type]
    ]
    c = choose(weird, WANT)
    assert c.broker is None
    assert sorted(r.reason for r in c.rejected) == [Reason.BAD_ADVERT] * len(weird)


def test_expectation_refuses_misuse() -> None:
    with pytest.raises(ValueError):
        Expectation("a/b", GENESIS)
    with pytest.raises(ValueError):
        Expectation(SWARM, "00")
    with pytest.raises(ValueError):
        Expectation(SWARM, GENESIS, gateway_fps=GW_FP)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Expectation(SWARM, GENESIS, gateway_fps=frozenset({"nothex"}))
    with pytest.raises(ValueError):
        Expectation(SWARM, GENESIS, tls=1)  # type: ignore[arg-type]
    # Any iterable of fingerprints is taken, and frozen.
    assert Expectation(SWARM, GENESIS, gateway_fps={GW_FP}).gateway_fps == frozenset({GW_FP})  # type: ignore[arg-type]


def test_a_node_advert_may_carry_port_zero_a_broker_may_not() -> None:
    """Nodes serve nothing to connect to, so they advertise port 0; a broker must say where."""
    assert only_rejection(node_advert("pi-1", port=0)) is None
    assert only_rejection(broker_advert("b", port=0)) == "bad advert"
