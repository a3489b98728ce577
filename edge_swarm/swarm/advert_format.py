"""What a DNS-SD (zeroconf) advert of a swarm says: its service type, its TXT record, and
the ``Advert`` a node reads them from.

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

``swarm_txt`` and ``broker_txt`` build the TXT of our own adverts. An adapter
(``io/discovery.py``) turns what python-zeroconf resolves into ``Advert``s, their TXT parsed
by ``parse_txt``; the ``Advert`` properties read the keys above, and ``adverts.choose``
judges the adverts.

Invariants
----------
- ``parse_txt`` and the ``Advert`` properties take untrusted input: ``parse_txt`` raises only
  ``AdvertError``; a property gives None for a key that is absent or malformed, never raises.
- ``swarm_txt`` and ``broker_txt`` validate their arguments (ValueError on misuse), so what
  we advertise always parses back to the same values.

Pure: no sockets, no threads, no logging, no zeroconf import.
"""

from __future__ import annotations

import hashlib
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
    "broker_txt",
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
