"""Transactions and entries: the frozen values of the ledger.

An author builds and signs a `Tx` (swarm, kind, author, ts, payload); the signature covers
``canonical_bytes`` of those five fields. The orderer chains it into an `Entry` by adding
``height`` and ``prev_hash``; ``Entry.hash`` is the SHA-256 of the canonical bytes of all
eight fields, and the next entry's ``prev_hash``. ``tx_id`` = SHA-256(signed bytes +
signature) identifies a transaction whatever height it lands at (replay detection).

Values check their *shape* when built (types, id syntax, hex lengths, JSON-pure payload);
whether the chain may accept them (known kind, schema, size, author, role, signature) is
`LedgerState.validate`'s job, so a well-formed entry of a kind this version does not know
is refused there with a clear reason rather than failing to decode. Payloads are plain
JSON values: treat them as read-only, since the hash is cached.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_bytes, json_too_deep, sha256_hex, to_json_value
from .detached import hashed_payload
from .errors import DecodeError
from .keys import SigningKey

MAX_ENTRY_BYTES = 64 * 1024
"""Largest canonical entry the chain accepts (bytes)."""
GENESIS_PREV = "0" * 64
MAX_INT = 2**63 - 1  # heights and times must fit SQLite's INTEGER
ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
SIG_RE = re.compile(r"[0-9a-f]{128}")

KINDS: frozenset[str] = frozenset(
    {
        "genesis",
        "enroll",
        "revoke",
        "config",
        "fleet_command",
        "round_open",
        "delta_commit",
        "round_close",
        "model_attest",
        "model_final",
        "key_epoch",
        "campaign",
    }
)
ROLES: tuple[str, ...] = ("admin", "gateway", "agent", "observer")
"""An ``observer`` authors nothing under the default policy; it is enrolled so that it can
be given the swarm's data key (an engineer's laptop watching accuracy) and revoked."""

DEFAULT_POLICY: dict[str, list[str]] = {
    "enroll": ["admin"],
    "revoke": ["admin"],
    "config": ["admin"],
    "fleet_command": ["admin"],
    "round_open": ["gateway"],
    "round_close": ["gateway"],
    "model_final": ["gateway"],
    "delta_commit": ["agent"],
    "model_attest": ["agent", "gateway"],
    "key_epoch": ["gateway", "admin"],
    # Admins steer training campaigns; a gateway may only end one, with a reason (the
    # coordinator's convergence stop): LedgerState._check_semantics holds that line.
    "campaign": ["admin", "gateway"],
}

TX_FIELDS = ("swarm", "kind", "author", "ts", "payload", "sig")
ENTRY_FIELDS = ("height", "prev_hash", *TX_FIELDS)


def is_id(value: object) -> bool:
    """True iff `value` is a str matching ``[A-Za-z0-9_.-]{1,64}``."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def is_hex64(value: object) -> bool:
    """True iff `value` is 64 lowercase hex chars (a SHA-256 or a public key)."""
    return isinstance(value, str) and HEX64_RE.fullmatch(value) is not None


def is_uint(value: object) -> bool:
    """True iff `value` is an int (not bool) in [0, 2**63)."""
    return type(value) is int and 0 <= value <= MAX_INT


def _check_tx_fields(swarm: Any, kind: Any, author: Any, ts: Any, payload: Any, sig: Any) -> None:
    """Raise ValueError unless the five signed fields and the signature are well-shaped."""
    for name, value in (("swarm", swarm), ("kind", kind), ("author", author)):
        if not is_id(value):
            raise ValueError(f"{name} must match [A-Za-z0-9_.-]{{1,64}}, got {value!r:.80}")
    if not is_uint(ts):
        raise ValueError(f"ts must be a non-negative int (ms), got {ts!r:.40}")
    if not isinstance(payload, dict):
        raise ValueError(f"payload must be a dict, got {type(payload).__name__}")
    if to_json_value(payload) != payload:  # raises EncodeError (a ValueError) on NaN etc.
        raise ValueError("payload must hold plain JSON values only (no bytes, tuples)")
    if not (isinstance(sig, str) and SIG_RE.fullmatch(sig)):
        raise ValueError("sig must be 128 lowercase hex chars")


def _decode_json(data: bytes | str, what: str) -> Any:
    """Strict JSON parse: no NaN/Infinity, no duplicate keys; only DecodeError escapes."""

    def no_constants(name: str) -> Any:
        raise DecodeError(f"{what}: {name} is not valid JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise DecodeError(f"{what}: duplicate key in JSON object")
        return out

    try:
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        if json_too_deep(raw):
            raise DecodeError(f"{what}: JSON nested too deeply")
        text = data.decode("utf-8") if isinstance(data, bytes) else data  # UTF-8 only, no BOMs
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except DecodeError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # includes JSONDecodeError
        raise DecodeError(f"{what}: not JSON ({exc.__class__.__name__})") from None


def _fields_from_dict(data: Any, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    """Check `data` is a dict with exactly `fields`; return it. DecodeError otherwise."""
    if not isinstance(data, dict):
        raise DecodeError(f"{what} must be a JSON object, got {type(data).__name__}")
    keys = set(data)
    if keys != set(fields):
        missing = sorted(str(k) for k in set(fields) - keys)
        extra = sorted(repr(k)[:40] for k in keys - set(fields))
        raise DecodeError(f"{what}: missing fields {missing}, unknown fields {extra}")
    return data


@dataclass(frozen=True)
class Tx:
    """A signed, not yet chained transaction. Raises ValueError if ill-shaped."""

    swarm: str
    kind: str
    author: str
    ts: int
    payload: dict[str, Any]
    sig: str

    def __post_init__(self) -> None:
        _check_tx_fields(self.swarm, self.kind, self.author, self.ts, self.payload, self.sig)

    def __hash__(self) -> int:
        return hash(self.tx_id)

    def signing_bytes(self) -> bytes:
        """The bytes the author signs: canonical {swarm, kind, author, ts, payload}."""
        return signing_bytes(self.swarm, self.kind, self.author, self.ts, self.payload)

    @functools.cached_property
    def tx_id(self) -> str:
        """SHA-256 hex of signing bytes + raw signature: the identity of this transaction."""
        return sha256_hex(self.signing_bytes() + bytes.fromhex(self.sig))

    def chain(self, height: int, prev_hash: str) -> Entry:
        """This transaction placed at `height` after the entry hashed `prev_hash`."""
        return Entry(
            height, prev_hash, self.swarm, self.kind, self.author, self.ts, self.payload, self.sig
        )

    def to_dict(self) -> dict[str, Any]:
        """The six fields as a dict (payload shared, not copied)."""
        return {name: getattr(self, name) for name in TX_FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> Tx:
        """Build from a decoded JSON object; raises only DecodeError."""
        d = _fields_from_dict(data, TX_FIELDS, "tx")
        return _build(cls, d, "tx")

    @classmethod
    def from_bytes(cls, data: bytes) -> Tx:
        """Parse JSON bytes (at most MAX_ENTRY_BYTES); raises only DecodeError."""
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_ENTRY_BYTES:
            raise DecodeError("tx: not bytes, or larger than MAX_ENTRY_BYTES")
        return cls.from_dict(_decode_json(bytes(data), "tx"))


@dataclass(frozen=True)
class Entry:
    """A chained transaction at `height`. Raises ValueError if ill-shaped."""

    height: int
    prev_hash: str
    swarm: str
    kind: str
    author: str
    ts: int
    payload: dict[str, Any]
    sig: str

    def __post_init__(self) -> None:
        if not is_uint(self.height):
            raise ValueError(f"height must be a non-negative int, got {self.height!r:.40}")
        if not is_hex64(self.prev_hash):
            raise ValueError("prev_hash must be 64 lowercase hex chars")
        _check_tx_fields(self.swarm, self.kind, self.author, self.ts, self.payload, self.sig)

    def __hash__(self) -> int:
        return hash(self.hash)

    @functools.cached_property
    def tx(self) -> Tx:
        """The transaction this entry carries."""
        return Tx(self.swarm, self.kind, self.author, self.ts, self.payload, self.sig)

    @property
    def tx_id(self) -> str:
        """Shorthand for ``self.tx.tx_id``."""
        return self.tx.tx_id

    def to_dict(self) -> dict[str, Any]:
        """The eight fields as a dict (payload shared, not copied)."""
        return {name: getattr(self, name) for name in ENTRY_FIELDS}

    @functools.cached_property
    def _canonical(self) -> bytes:
        return canonical_bytes(self.to_dict())

    def canonical(self) -> bytes:
        """Canonical bytes of all eight fields: what `hash` covers and the store keeps.
        Raises EncodeError if the payload holds a non-JSON value."""
        return self._canonical

    @functools.cached_property
    def hash(self) -> str:
        """SHA-256 hex of `canonical()` — with any detached field as its digest
        (``detached.py``), so that the full and the compact form share one hash."""
        hashed = hashed_payload(self.kind, self.payload)
        if hashed is self.payload:
            return sha256_hex(self._canonical)
        return sha256_hex(canonical_bytes({**self.to_dict(), "payload": hashed}))

    def compact(self) -> Entry:
        """This entry with its detached fields as digests (itself if it has none): what a
        light agent receives; the same hash and signature."""
        hashed = hashed_payload(self.kind, self.payload)
        if hashed is self.payload:
            return self
        return Entry(
            self.height,
            self.prev_hash,
            self.swarm,
            self.kind,
            self.author,
            self.ts,
            hashed,
            self.sig,
        )

    @classmethod
    def from_dict(cls, data: Any) -> Entry:
        """Build from a decoded JSON object, checking every type strictly.

        Raises only DecodeError (wrong/missing/extra fields, bad types, a payload that is
        not JSON-pure or has no canonical encoding).
        """
        d = _fields_from_dict(data, ENTRY_FIELDS, "entry")
        return _build(cls, d, "entry")

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        """Parse JSON bytes (at most MAX_ENTRY_BYTES); raises only DecodeError.
        The bytes need not be canonical; compare with `canonical()` where that matters."""
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_ENTRY_BYTES:
            raise DecodeError("entry: not bytes, or larger than MAX_ENTRY_BYTES")
        return cls.from_dict(_decode_json(bytes(data), "entry"))


def _build(cls: type[Any], d: dict[str, Any], what: str) -> Any:
    """Construct `cls` from a field dict, turning every shape error into DecodeError."""
    try:
        return cls(**d)
    except (ValueError, TypeError, RecursionError) as exc:
        raise DecodeError(f"{what}: {exc}") from None


def signing_bytes(swarm: str, kind: str, author: str, ts: int, payload: Mapping[str, Any]) -> bytes:
    """Canonical bytes of the five signed fields (detached fields as their digests)."""
    signed = hashed_payload(kind, payload)
    return canonical_bytes(
        {"swarm": swarm, "kind": kind, "author": author, "ts": ts, "payload": signed}
    )


def now_ms() -> int:
    """Wall-clock time in integer milliseconds."""
    return time.time_ns() // 1_000_000


def make_tx(
    key: SigningKey,
    swarm: str,
    kind: str,
    author: str,
    payload: Mapping[str, Any],
    ts: int | None = None,
) -> Tx:
    """Sign a transaction. `payload` is copied to plain JSON values (bytes become hex);
    `ts` defaults to now in ms. Raises ValueError/EncodeError on ill-shaped input."""
    ts = now_ms() if ts is None else ts
    body = to_json_value(dict(payload))
    _check_tx_fields(swarm, kind, author, ts, body, "0" * 128)
    sig = key.sign(signing_bytes(swarm, kind, author, ts, body)).hex()
    return Tx(swarm, kind, author, ts, body, sig)


def make_genesis(
    admin_key: SigningKey,
    admin_id: str,
    swarm: str,
    policy: Mapping[str, list[str]] | None = None,
    params: Mapping[str, Any] | None = None,
    ts: int | None = None,
    *,
    extra_admins: Mapping[str, str] | None = None,
) -> Entry:
    """The genesis entry (height 0, prev_hash GENESIS_PREV, kind ``genesis``) signed by
    `admin_key` as `admin_id`. Payload: {swarm, admins: {id: pubkey_hex}, policy, params};
    `policy` defaults to DEFAULT_POLICY, `params` to {}; `extra_admins` adds more admin ids.
    """
    admins = {admin_id: admin_key.public_hex, **(extra_admins or {})}
    payload = {
        "swarm": swarm,
        "admins": admins,
        "policy": {k: list(v) for k, v in (DEFAULT_POLICY if policy is None else policy).items()},
        "params": {} if params is None else dict(params),
    }
    return make_tx(admin_key, swarm, "genesis", admin_id, payload, ts).chain(0, GENESIS_PREV)
