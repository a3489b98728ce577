"""What a DNS-SD (zeroconf) advert of a swarm says, and which adverts a node trusts.

How it works
------------
Three service types are browsed on the LAN::

    _edgeswarm._tcp.local.      a gateway, agent or observer of a swarm (SERVICE_SWARM)
    _mqtt._tcp.local.           a plain MQTT broker of a swarm           (SERVICE_MQTT)
    _secure-mqtt._tcp.local.    a TLS MQTT broker of a swarm             (SERVICE_MQTTS)

Each advert's TXT record names the swarm and its genesis hash, so nodes of several swarms
share one LAN without mixing, plus (``swarm_txt``, ``broker_txt``)::

    swarm     the swarm id                          every advert
    genesis   the ledger's genesis hash (64 hex)    every advert
    proto     the wire protocol version (PROTOCOL)  ours always; optional for other tools
    fp        key_fingerprint of the advertiser     swarm adverts; brokers when a gateway
                                                    advertises the broker it uses
    role      gateway | agent | observer            swarm adverts
    node      the node id                           swarm adverts
    state     online | offline | paused             swarm adverts, optional
    round     the current round (decimal)           swarm adverts, optional

An adapter (``io/discovery.py``) turns what python-zeroconf resolves into ``Advert``s, their
TXT parsed by ``parse_txt``, and calls ``choose`` with what this node expects
(``Expectation``): the broker to connect to, the gateways and agents of its swarm, and every
advert it turned down with the reason (``Rejected``).

TXT records are unauthenticated: anyone on the LAN can advertise anything, so an advert is
only a hint of where to connect. Trust comes from elsewhere — envelopes and ledger entries
are signed, the ledger is pinned to the genesis hash, TLS brokers must present the swarm
CA's certificate — so a rogue advert that copies the swarm id and genesis hash can at worst
point a node at a rogue broker where nothing it is sent verifies: a denial of service. The
key fingerprint check narrows even that once the node knows the enrolled gateways.

Invariants
----------
- ``parse_txt`` and the ``Advert`` properties take untrusted input: ``parse_txt`` raises only
  ``AdvertError``; a property gives None for a key that is absent or malformed, never raises.
- ``choose`` is pure, deterministic (the order of its input does not matter) and total: it
  never raises on an Advert. After keeping the newest advert of each name, every advert is
  either accepted or rejected, exactly once.
- ``swarm_txt`` and ``broker_txt`` validate their arguments (ValueError on misuse), so what
  we advertise always parses back to the same values.

Pure: no sockets, no threads, no logging, no zeroconf import.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge_swarm.swarm.topics import MAX_ROUND, TopicError, validate_id, validate_round

__all__ = [
    "MAX_TXT_KEY",
    "MAX_TXT_KEYS",
    "MAX_TXT_VALUE",
    "PROTOCOL",
    "ROLES",
    "SERVICE_MQTT",
    "SERVICE_MQTTS",
    "SERVICE_SWARM",
    "SERVICE_TYPES",
    "STATES",
    "Advert",
    "AdvertError",
    "Choice",
    "Endpoint",
    "Expectation",
    "Reason",
    "Rejected",
    "broker_txt",
    "choose",
    "key_fingerprint",
    "parse_txt",
    "swarm_txt",
]

SERVICE_SWARM = "_edgeswarm._tcp.local."
"""Gateways, agents and observers advertise themselves under this type."""
SERVICE_MQTT = "_mqtt._tcp.local."
"""A plain MQTT broker of a swarm."""
SERVICE_MQTTS = "_secure-mqtt._tcp.local."
"""A TLS MQTT broker of a swarm."""
SERVICE_TYPES = (SERVICE_SWARM, SERVICE_MQTT, SERVICE_MQTTS)

PROTOCOL = "1"
"""TXT ``proto``: the wire protocol version an advertiser speaks (``es/v1/`` topics)."""

ROLES = ("gateway", "agent", "observer")
"""TXT ``role`` of a swarm advert."""
STATES = ("online", "offline", "paused")
"""TXT ``state`` of a swarm advert."""

MAX_TXT_VALUE = 255
"""Longest TXT value in bytes (one TXT string is at most 255 bytes, key included)."""
MAX_TXT_KEY = 9
"""Longest TXT key: RFC 6763 section 6.4 asks for keys of at most 9 characters."""
MAX_TXT_KEYS = 32
"""Most TXT keys ``parse_txt`` takes; ours have 8, so more is a broken or hostile advert."""

_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_FP_RE = re.compile(r"[0-9a-f]{16}")
_ROUND_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_FP_LEN = 16
_BROKERS = (SERVICE_MQTT, SERVICE_MQTTS)


class AdvertError(ValueError):
    """A TXT record or advert from the network that is malformed or too large."""


class Reason:
    """Why ``choose`` turned an advert down, as plain strings (so they print and compare)."""

    OTHER_SWARM = "other swarm"
    WRONG_GENESIS = "wrong genesis"
    UNKNOWN_KEY = "unknown key"
    WRONG_PROTOCOL = "wrong protocol"
    BAD_ADVERT = "bad advert"
    WRONG_TRANSPORT = "wrong transport"


# --------------------------------------------------------------------------- building TXT


def key_fingerprint(public_hex: str) -> str:
    """The short fingerprint advertised for a key: the first 16 hex chars of the sha256 of
    its raw public key bytes. ``public_hex`` is the key as the ledger holds it (64 lowercase
    hex chars, ``SigningKey.public_hex``); anything else raises ValueError."""
    if not isinstance(public_hex, str) or _HEX64_RE.fullmatch(public_hex) is None:
        raise ValueError(f"public key must be 64 lowercase hex chars, got {public_hex!r}")
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:_FP_LEN]


def _check_common(swarm: str, genesis_hash: str) -> None:
    try:
        validate_id(swarm, "swarm id")
    except TopicError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(genesis_hash, str) or _HEX64_RE.fullmatch(genesis_hash) is None:
        raise ValueError(f"genesis_hash must be 64 lowercase hex chars, got {genesis_hash!r}")


def _check_fp(fp: object) -> str:
    if not isinstance(fp, str) or _FP_RE.fullmatch(fp) is None:
        raise ValueError(f"fp must be a key_fingerprint (16 lowercase hex chars), got {fp!r}")
    return fp


def swarm_txt(
    swarm: str,
    genesis_hash: str,
    role: str,
    node: str,
    fp: str,
    state: str | None = None,
    round: int | None = None,
) -> dict[str, str]:
    """The TXT of a node's own ``SERVICE_SWARM`` advert (ValueError on a bad argument).

    ``fp`` is ``key_fingerprint`` of the node's signing key; ``state`` one of STATES and
    ``round`` a round number, both left out of the TXT when None.
    """
    _check_common(swarm, genesis_hash)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    try:
        validate_id(node, "node id")
        if round is not None:
            validate_round(round)
    except TopicError as exc:
        raise ValueError(str(exc)) from None
    txt = {
        "swarm": swarm,
        "genesis": genesis_hash,
        "role": role,
        "node": node,
        "proto": PROTOCOL,
        "fp": _check_fp(fp),
    }
    if state is not None:
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        txt["state"] = state
    if round is not None:
        txt["round"] = str(round)
    return txt


def broker_txt(swarm: str, genesis_hash: str, fp: str | None = None) -> dict[str, str]:
    """The TXT of a broker advert (``SERVICE_MQTT`` or ``SERVICE_MQTTS``).

    ``fp`` is the advertiser's ``key_fingerprint`` when a gateway advertises the broker it
    uses (nodes then prefer a broker an enrolled gateway vouches for); a broker advertising
    itself has no key, so no fp. ValueError on a bad argument.
    """
    _check_common(swarm, genesis_hash)
    txt = {"swarm": swarm, "genesis": genesis_hash, "proto": PROTOCOL}
    if fp is not None:
        txt["fp"] = _check_fp(fp)
    return txt


# --------------------------------------------------------------------------- parsing TXT


def _txt_key(key: object) -> str:
    # RFC 6763 section 6.4: keys are printable US-ASCII without "=", compared case-insensitively.
    if isinstance(key, (bytes, bytearray)):
        codes: Iterable[int] = key
    elif isinstance(key, str):
        codes = map(ord, key)
    else:
        raise AdvertError(f"TXT key is not bytes or str: {type(key).__name__}")
    if len(key) > MAX_TXT_KEY:
        return ""  # not one of ours (e.g. an avahi file's "description"): ignored
    if any(c < 0x20 or c > 0x7E or c == 0x3D for c in codes):
        raise AdvertError(f"TXT key is not printable ASCII without '=': {key!r}")
    text = key.decode("ascii") if isinstance(key, (bytes, bytearray)) else key
    return text.lower()


def _txt_value(key: str, value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise AdvertError(f"TXT value of {key!r} is not valid Unicode") from None
    else:
        raise AdvertError(f"TXT value of {key!r} is not bytes or str: {type(value).__name__}")
    if len(data) > MAX_TXT_VALUE:
        raise AdvertError(f"TXT value of {key!r} longer than {MAX_TXT_VALUE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AdvertError(f"TXT value of {key!r} is not UTF-8") from None


def parse_txt(raw: Mapping[bytes | str, bytes | str | None]) -> dict[str, str]:
    """Decode untrusted TXT properties as python-zeroconf gives them (``ServiceInfo.properties``).

    Keys become lowercase str, values UTF-8-decoded str. A key without a value (None: a
    boolean attribute, which none of ours is) is dropped, and so is an empty key (RFC 6763
    says to ignore it). When keys repeat up to case, the first wins, as zeroconf keeps the
    first of repeated keys. Keys longer than MAX_TXT_KEY are not ours (another tool's, such
    as an avahi service file's) and are skipped. At most MAX_TXT_KEYS keys, printable ASCII,
    each value at most MAX_TXT_VALUE bytes. Raises only AdvertError.
    """
    if not isinstance(raw, Mapping):
        raise AdvertError(f"TXT properties are not a mapping: {type(raw).__name__}")
    # The size bound comes before any decoding, so a flood of keys costs nothing.
    if len(raw) > MAX_TXT_KEYS:
        raise AdvertError(f"TXT has {len(raw)} keys, more than {MAX_TXT_KEYS}")
    txt: dict[str, str] = {}
    seen: set[str] = set()
    for raw_key, raw_value in raw.items():
        key = _txt_key(raw_key)
        if not key or key in seen:
            continue
        seen.add(key)
        if raw_value is not None:
            txt[key] = _txt_value(key, raw_value)
    return txt


# --------------------------------------------------------------------------- adverts


def _valid_id(value: object) -> str | None:
    try:
        return validate_id(value)
    except TopicError:
        return None


@dataclass(frozen=True)
class Advert:
    """One service seen on the LAN, as the adapter resolved it. Built from untrusted data and
    not validated: ``choose`` judges it. The properties read ``txt`` (from ``parse_txt``) and
    give None for a key that is absent or malformed; they never raise.

    ``name`` is the full instance name (``gateway-1._edgeswarm._tcp.local.``), ``addresses``
    the textual IPv4/IPv6 addresses as advertised, ``seen_at`` the monotonic time the adapter
    last saw it (of two adverts with one name, the newer wins). ``txt`` is copied into a
    read-only mapping, and left out of the hash (so an Advert can sit in a set).
    """

    service: str
    name: str
    addresses: tuple[str, ...]
    port: int
    txt: Mapping[str, str] = field(hash=False)
    seen_at: float = 0.0

    def __post_init__(self) -> None:
        # A copy: the adapter's dict may change after the advert was judged.
        object.__setattr__(self, "txt", MappingProxyType(dict(self.txt)))

    def _match(self, key: str, pattern: re.Pattern[str]) -> str | None:
        value = self.txt.get(key)
        return value if isinstance(value, str) and pattern.fullmatch(value) else None

    @property
    def swarm(self) -> str | None:
        """The swarm id."""
        return _valid_id(self.txt.get("swarm"))

    @property
    def genesis(self) -> str | None:
        """The genesis hash of the swarm's ledger (64 lowercase hex)."""
        return self._match("genesis", _HEX64_RE)

    @property
    def role(self) -> str | None:
        """gateway, agent or observer (swarm adverts)."""
        value = self.txt.get("role")
        return value if value in ROLES else None

    @property
    def node(self) -> str | None:
        """The advertiser's node id (swarm adverts)."""
        return _valid_id(self.txt.get("node"))

    @property
    def fp(self) -> str | None:
        """The advertiser's key fingerprint (``key_fingerprint``)."""
        return self._match("fp", _FP_RE)

    @property
    def proto(self) -> str | None:
        """The protocol version, as advertised: any string is a version (only PROTOCOL is ours)."""
        value = self.txt.get("proto")
        return value if isinstance(value, str) else None

    @property
    def state(self) -> str | None:
        """online, offline or paused (swarm adverts, optional)."""
        value = self.txt.get("state")
        return value if value in STATES else None

    @property
    def round(self) -> int | None:
        """The advertiser's current round (swarm adverts, optional)."""
        value = self._match("round", _ROUND_RE)
        if value is None or int(value) > MAX_ROUND:
            return None
        return int(value)

    @property
    def is_broker(self) -> bool:
        """An MQTT broker advert (plain or TLS)."""
        return self.service in _BROKERS

    @property
    def tls(self) -> bool:
        """A TLS MQTT broker advert."""
        return self.service == SERVICE_MQTTS


@dataclass(frozen=True)
class Expectation:
    """What this node knows of its swarm, to judge adverts by (ValueError on bad fields).

    ``gateway_fps``: fingerprints of the enrolled gateways' keys, or None before the first
    ledger sync (any fingerprint goes). ``tls``: True takes only TLS brokers, False only
    plain ones, None either with TLS preferred.
    """

    swarm: str
    genesis_hash: str
    gateway_fps: frozenset[str] | None = None
    tls: bool | None = None

    def __post_init__(self) -> None:
        _check_common(self.swarm, self.genesis_hash)
        if self.gateway_fps is not None:
            if isinstance(self.gateway_fps, (str, bytes)):
                raise ValueError("gateway_fps must be a set of fingerprints, not one string")
            fps = frozenset(self.gateway_fps)
            for fp in fps:
                _check_fp(fp)
            object.__setattr__(self, "gateway_fps", fps)
        if self.tls is not None and not isinstance(self.tls, bool):
            raise ValueError(f"tls must be True, False or None, got {self.tls!r}")


@dataclass(frozen=True)
class Rejected:
    """An advert ``choose`` turned down, and why (one of the Reason strings)."""

    advert: Advert
    reason: str

    @property
    def warn(self) -> bool:
        """Whether to log it as a warning: another swarm on the LAN is normal (debug), any
        other reason is a rogue or broken advert."""
        return self.reason != Reason.OTHER_SWARM


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: a host address and port, over TLS or not; ``source`` is the name of
    the advert it came from (for logs)."""

    host: str
    port: int
    tls: bool
    source: str


@dataclass(frozen=True)
class Choice:
    """What ``choose`` made of the adverts: the broker to use (None if no advert qualifies),
    the trusted gateway and agent adverts of our swarm (each sorted by node, then name), and
    the adverts turned down (sorted by name). Accepted observer adverts and brokers other than
    the chosen one appear in none of these."""

    broker: Endpoint | None
    gateways: tuple[Advert, ...]
    agents: tuple[Advert, ...]
    rejected: tuple[Rejected, ...]


# --------------------------------------------------------------------------- choosing


def _well_typed(a: object) -> bool:
    # The adapter builds Adverts from parse_txt output, so this only fails on a bug; checking
    # keeps choose total (every comparison below is between values of one type).
    return (
        isinstance(a, Advert)
        and isinstance(a.service, str)
        and isinstance(a.name, str)
        and isinstance(a.addresses, tuple)
        and all(isinstance(x, str) for x in a.addresses)
        and isinstance(a.port, int)
        and not isinstance(a.port, bool)
        and isinstance(a.seen_at, (int, float))
        and not isinstance(a.seen_at, bool)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in a.txt.items())
    )


def _seen(a: Advert) -> float:
    try:
        seen = float(a.seen_at)
    except OverflowError:  # an int beyond float range
        seen = math.inf if a.seen_at > 0 else -math.inf
    # NaN would make "newest" depend on input order; it counts as never seen.
    return -math.inf if math.isnan(seen) else seen


def _newest_key(a: Advert) -> tuple[float, str, tuple[str, ...], int, tuple[tuple[str, str], ...]]:
    # seen_at first; the rest only breaks ties between same-name adverts, so that the kept
    # one does not depend on the order adverts came in.
    return (_seen(a), a.service, a.addresses, a.port, tuple(sorted(a.txt.items())))


def _hosts(a: Advert) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    hosts: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in a.addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue  # not an address literal: never hand a name from the LAN to connect()
        if not (ip.is_unspecified or ip.is_multicast):
            hosts.append(ip)
    return hosts


def _judge(a: Advert, want: Expectation) -> str | None:
    """The reason to reject ``a``, or None to accept it. The first failing check names the
    reason: another swarm's advert is "other swarm" whatever else is wrong with it (it is not
    ours to warn about), and one that copies our swarm id but not the genesis is "wrong
    genesis" before its shape is looked at (a rogue, whatever it looks like)."""
    if a.service not in SERVICE_TYPES:
        return Reason.BAD_ADVERT
    if a.swarm is None:
        return Reason.BAD_ADVERT
    if a.swarm != want.swarm:
        return Reason.OTHER_SWARM
    if a.genesis is None:
        return Reason.BAD_ADVERT
    if a.genesis != want.genesis_hash:
        return Reason.WRONG_GENESIS
    # Our own adverts always carry proto; a broker advertised by another tool (an avahi
    # service file) may not, and a broker speaks MQTT whatever our protocol version.
    proto_ok = a.proto == PROTOCOL or (a.proto is None and a.is_broker)
    if not proto_ok:
        return Reason.WRONG_PROTOCOL
    # A broker must say where to connect; a node advert says who is here, and carries port
    # 0 when the node serves nothing (DNS-SD needs a port; ours is not for connecting).
    low_port = 1 if a.is_broker else 0
    if not _hosts(a) or not low_port <= a.port <= 65535:
        return Reason.BAD_ADVERT
    if a.is_broker:
        if "fp" in a.txt and a.fp is None:
            return Reason.BAD_ADVERT
    elif a.role is None or a.node is None or a.fp is None:
        return Reason.BAD_ADVERT
    # Gateways are enrolled, so their keys are known; an agent is not a gateway and its fp
    # is only carried. A broker advert with an fp claims a gateway vouches for it.
    fps = want.gateway_fps
    checks_key = a.is_broker or a.role == "gateway"
    if fps is not None and checks_key and a.fp is not None and a.fp not in fps:
        return Reason.UNKNOWN_KEY
    if a.is_broker and want.tls is not None and a.tls != want.tls:
        return Reason.WRONG_TRANSPORT
    return None


def _broker_rank(a: Advert, want: Expectation) -> tuple[bool, bool, float, str]:
    # Smallest first: TLS (when either goes), vouched for by an enrolled gateway, newest, name.
    not_tls = want.tls is None and not a.tls
    vouched = a.fp is not None and want.gateway_fps is not None and a.fp in want.gateway_fps
    return (not_tls, not vouched, -_seen(a), a.name)


def _endpoint(a: Advert) -> Endpoint:
    hosts = _hosts(a)
    host = next((ip for ip in hosts if ip.version == 4), hosts[0])
    return Endpoint(host=str(host), port=a.port, tls=a.tls, source=a.name)


def choose(adverts: Iterable[Advert], want: Expectation) -> Choice:
    """Judge the adverts seen on the LAN against what this node expects of its swarm.

    Of adverts with one name only the newest (``seen_at``) counts; the others are dropped
    silently (they are older views of the same service). Each remaining advert is accepted or
    rejected once (see ``Reason``, and ``_judge`` for the order of the checks):

    - "bad advert": no valid swarm or genesis, no usable address, a port outside 1..65535, a
      malformed fp, or a swarm advert without a valid role, node and fp;
    - "other swarm", "wrong genesis": not our swarm, or a rogue copying our swarm id;
    - "wrong protocol": proto is not PROTOCOL (absent proto: fine for a broker advert made by
      another tool, wrong for a swarm advert, which ours always carry);
    - "unknown key": a gateway advert, or a broker advert carrying an fp, whose fp is not an
      enrolled gateway's (only once ``want.gateway_fps`` is known);
    - "wrong transport": a plain broker when only TLS is wanted, or the reverse.

    The broker is the best accepted broker advert: TLS first when ``want.tls`` is None, then
    one vouched for by an enrolled gateway (fp in ``want.gateway_fps``), then the newest, then
    by name; its host is the advert's first IPv4 address, else its first address.

    TXT records are unauthenticated, so this only filters hints. A rogue advert that copies
    the genesis hash can at worst point a node at a rogue broker, where nothing verifies:
    envelopes and ledger entries are signed, the ledger is pinned to the genesis hash, TLS
    brokers must present the swarm CA's certificate. That is a denial of service, which the
    fingerprint check narrows once the node knows the enrolled gateways.

    Pure, deterministic (the input order does not matter) and total: never raises on an Advert.
    """
    rejected: list[Rejected] = []
    newest: dict[str, Advert] = {}
    for a in adverts:
        if not _well_typed(a):
            rejected.append(Rejected(a, Reason.BAD_ADVERT))
            continue
        kept = newest.get(a.name)
        if kept is None or _newest_key(a) > _newest_key(kept):
            newest[a.name] = a
    gateways: list[Advert] = []
    agents: list[Advert] = []
    brokers: list[Advert] = []
    for a in newest.values():
        reason = _judge(a, want)
        if reason is not None:
            rejected.append(Rejected(a, reason))
        elif a.is_broker:
            brokers.append(a)
        elif a.role == "gateway":
            gateways.append(a)
        elif a.role == "agent":
            agents.append(a)
        # An accepted observer is listed nowhere: nothing connects to an observer.
    broker = min(brokers, key=lambda a: _broker_rank(a, want), default=None)

    def by_node(a: Advert) -> tuple[str, str]:
        return (a.node or "", a.name)

    def by_name(r: Rejected) -> tuple[str, str, str]:
        name: object = getattr(r.advert, "name", None)
        return (name if isinstance(name, str) else repr(name), r.reason, repr(r.advert))

    return Choice(
        broker=None if broker is None else _endpoint(broker),
        gateways=tuple(sorted(gateways, key=by_node)),
        agents=tuple(sorted(agents, key=by_node)),
        rejected=tuple(sorted(rejected, key=by_name)),
    )
