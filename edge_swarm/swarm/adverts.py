"""Which DNS-SD (zeroconf) adverts of a swarm a node trusts, and where it connects.

How it works
------------
Nodes browse three service types on the LAN (``SERVICE_SWARM``: gateways, agents and
observers; ``SERVICE_MQTT`` and ``SERVICE_MQTTS``: plain and TLS brokers), whose TXT records
name the swarm and its genesis hash, so nodes of several swarms share one LAN without mixing.
``advert_format`` has what an advert says: the service types, the TXT keys (built by
``swarm_txt`` and ``broker_txt``, decoded by ``parse_txt``) and the ``Advert`` that reads
them; its names are re-exported here, so callers import from one place.

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
- ``choose`` is pure, deterministic (the order of its input does not matter) and total: it
  never raises on an Advert. After keeping the newest advert of each name, every advert is
  either accepted or rejected, exactly once.

Pure: no sockets, no threads, no logging, no zeroconf import.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass

from edge_swarm.swarm.advert_format import (
    MAX_TXT_KEY,
    MAX_TXT_KEYS,
    MAX_TXT_VALUE,
    PROTOCOL,
    ROLES,
    SERVICE_MQTT,
    SERVICE_MQTTS,
    SERVICE_SWARM,
    SERVICE_TYPES,
    STATES,
    Advert,
    AdvertError,
    _check_common,
    _check_fp,
    broker_txt,
    key_fingerprint,
    parse_txt,
    swarm_txt,
)

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


class Reason:
    """Why ``choose`` turned an advert down, as plain strings (so they print and compare)."""

    OTHER_SWARM = "other swarm"
    WRONG_GENESIS = "wrong genesis"
    UNKNOWN_KEY = "unknown key"
    WRONG_PROTOCOL = "wrong protocol"
    BAD_ADVERT = "bad advert"
    WRONG_TRANSPORT = "wrong transport"


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
