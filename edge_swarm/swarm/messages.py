"""JSON messages on the ledger and fleet topics, parsed once at the boundary.

Each decoder takes untrusted bytes and returns a frozen value or raises ``MessageError``
(too large, not UTF-8 JSON, wrong shape). Ledger entries and transactions inside these
messages are parsed and validated by ``ledger_lite`` afterwards; here only the envelope
around them is checked.

Fleet messages (`Status`, `Telemetry`) carry an Ed25519 signature by the sending device's
enrolled key. A rogue client on the clinic Wi-Fi must not be able to mark a device offline
or fake its numbers: the broker ACL is the first line of defence, the signature the second
(it still holds if the ACL is misconfigured or a broker credential leaks). Decoding only
checks the signature's shape; the receiver calls ``verify(public_hex)`` with the key the
ledger enrolled for that node.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from ledger_lite import canonical_bytes
from ledger_lite import verify as verify_signature
from ledger_lite.canonical import parse_json
from ledger_lite.errors import DecodeError

MAX_JSON = 1024 * 1024  # a query reply carries a page of entries; nothing else comes close
MAX_PAGE = 500
MAX_TELEMETRY_VALUES = 256  # a node reports a few dozen numbers; bound what a hostile one costs
MAX_TELEMETRY_KEY = 64

# Domain labels: the "type" of every signed fleet message's dict. A status signature can then
# never pass as a telemetry one, and neither can pass as a ledger transaction (whose signed
# dict has no "type") or a tree head (labelled "ledger_lite/tree_head/v1").
STATUS_TYPE = "edge-swarm/status/v1"
TELEMETRY_TYPE = "edge-swarm/telemetry/v1"

SIGNATURE_BYTES = 64
_SIG_RE = re.compile(r"[0-9a-f]{128}")


class MessageError(ValueError):
    """Bytes that are not the message the topic carries."""


def _load(data: bytes, max_size: int = MAX_JSON) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray)):
        raise MessageError(f"a message is bytes, not {type(data).__name__}")
    if len(data) > max_size:
        raise MessageError(f"message of {len(data)} bytes exceeds {max_size}")
    try:
        obj = parse_json(data)  # bounded nesting, UTF-8 only, finite numbers
    except DecodeError as exc:
        raise MessageError(str(exc)) from None
    if not isinstance(obj, dict):
        raise MessageError("not a JSON object")
    return obj


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _typed(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise MessageError(f"field {key!r} missing or of the wrong type")
    return value


def _ts_ms(obj: dict[str, Any]) -> int:
    ts_ms = obj.get("ts_ms", 0)  # absent in messages from nodes older than signing
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool) or ts_ms < 0:
        raise MessageError("field 'ts_ms' must be an integer >= 0")
    return ts_ms


def _sig(obj: dict[str, Any]) -> str:
    sig = obj.get("sig", "")
    if not isinstance(sig, str) or sig and not _SIG_RE.fullmatch(sig):
        raise MessageError("field 'sig' must be empty or 128 lowercase hex characters")
    return sig


def _finite_number(value: Any) -> bool:
    # bool is an int to Python, and json.loads takes NaN and Infinity: refuse all three
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or isinstance(value, float) and math.isfinite(value)


@dataclass(frozen=True)
class Submission:
    """A signed transaction sent to ``ledger/submit``; ``tx`` is checked by ledger_lite."""

    tx: dict[str, Any]

    def encode(self) -> bytes:
        return _dump({"tx": self.tx})

    @classmethod
    def decode(cls, data: bytes) -> Submission:
        return cls(tx=_typed(_load(data, 128 * 1024), "tx", dict))


QUERY_OPS = ("entries", "inclusion", "consistency", "contribution")


@dataclass(frozen=True)
class Query:
    """A request on ``ledger/query``.

    ``op`` "entries": entries from ``start`` (at most ``limit``); "inclusion": a signed proof
    that the entry at height ``start`` is in the ledger; "consistency": a signed proof that
    the ledger of ``start`` entries is a prefix of today's; "contribution": the client's row
    in the round_close at height ``start`` with its Merkle path to the entry's signed digest
    (``ledger_lite/detached.py``).
    """

    client: str
    req: str
    start: int = 0
    limit: int = MAX_PAGE
    op: str = "entries"

    def encode(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Query:
        obj = _load(data, 4096)
        q = cls(
            client=_typed(obj, "client", str),
            req=_typed(obj, "req", str),
            start=_typed(obj, "start", int),
            limit=_typed(obj, "limit", int),
            op=obj.get("op", "entries"),
        )
        if q.start < 0 or not 0 < q.limit <= MAX_PAGE or len(q.req) > 64:
            raise MessageError("query out of range")
        if q.op not in QUERY_OPS:
            raise MessageError(f"unknown query op {q.op!r}")
        return q


@dataclass(frozen=True)
class Reply:
    """The gateway's answer on ``ledger/reply/{client}``: a page of entries or a refusal."""

    req: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    tip_height: int = -1
    refused: str | None = None
    proof: dict[str, Any] | None = None  # a ledger_lite ProofBundle, checked by the receiver

    def encode(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        obj = _load(data)
        entries = obj.get("entries", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise MessageError("entries must be a list of objects")
        refused = obj.get("refused")
        if refused is not None and not isinstance(refused, str):
            raise MessageError("refused must be a string")
        proof = obj.get("proof")
        if proof is not None and not isinstance(proof, dict):
            raise MessageError("proof must be an object")
        return cls(
            req=_typed(obj, "req", str),
            entries=entries,
            tip_height=_typed(obj, "tip_height", int),
            refused=refused,
            proof=proof,
        )


_S = TypeVar("_S", bound="_Signed")  # typing.Self needs Python 3.11; we support 3.10


class _Signed:
    """Signing and verification shared by the fleet messages (frozen dataclasses with a
    ``sig`` field and a ``signing_bytes`` method)."""

    sig: str

    def signing_bytes(self) -> bytes:
        raise NotImplementedError

    def signed(self: _S, sign: Callable[[bytes], bytes]) -> _S:
        """A copy whose ``sig`` is ``sign(signing_bytes())`` in hex.

        ``sign`` is the device key's signer (``SigningKey.sign``) and must return a 64-byte
        Ed25519 signature; anything else raises ValueError rather than send a message that
        no receiver could verify. Also ValueError (ledger_lite's ``EncodeError``) if a field
        has no canonical encoding, such as a NaN value.
        """
        sig = sign(self.signing_bytes())
        if not isinstance(sig, (bytes, bytearray)) or len(sig) != SIGNATURE_BYTES:
            raise ValueError(f"sign must return {SIGNATURE_BYTES} bytes of Ed25519 signature")
        return replace(self, sig=bytes(sig).hex())  # type: ignore[type-var]

    def verify(self, public_hex: str) -> bool:
        """Whether ``sig`` is a valid signature of this message by ``public_hex`` (the
        sender's enrolled key, 64 hex chars).

        False for an unsigned message, a malformed signature or key, or a field that has no
        canonical encoding; never raises, so a hostile message can only be dropped.
        """
        if not isinstance(self.sig, str) or not _SIG_RE.fullmatch(self.sig):
            return False
        try:
            msg = self.signing_bytes()
        except (ValueError, TypeError):  # EncodeError: NaN, lone surrogate, odd types
            return False
        return verify_signature(public_hex, msg, bytes.fromhex(self.sig))


@dataclass(frozen=True)
class Status(_Signed):
    """A node's retained status on ``fleet/status/{node}`` (its last will says offline).

    Signed by the node so that a rogue client cannot mark it offline or paused; ``ts_ms``
    (the sender's clock, in milliseconds) lets a receiver refuse a replayed older status.
    """

    node: str
    role: str
    state: str
    round: int = 0
    ts_ms: int = 0
    sig: str = ""

    def signing_bytes(self) -> bytes:
        """Canonical bytes of the domain label and every field but ``sig``."""
        return canonical_bytes(
            {
                "type": STATUS_TYPE,
                "node": self.node,
                "role": self.role,
                "state": self.state,
                "round": self.round,
                "ts_ms": self.ts_ms,
            }
        )

    def encode(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Status:
        obj = _load(data, 4096)
        st = cls(
            node=_typed(obj, "node", str),
            role=_typed(obj, "role", str),
            state=_typed(obj, "state", str),
            round=_typed(obj, "round", int),
            ts_ms=_ts_ms(obj),
            sig=_sig(obj),
        )
        if st.state not in ("online", "offline", "paused"):
            raise MessageError(f"unknown state {st.state!r}")
        return st


@dataclass(frozen=True)
class Telemetry(_Signed):
    """Periodic numbers from a node on ``fleet/telemetry/{node}``.

    Signed by the node so that a rogue client cannot fake its numbers. At most
    `MAX_TELEMETRY_VALUES` values with keys of at most `MAX_TELEMETRY_KEY` characters, so a
    hostile message stays cheap to parse, hash and verify.
    """

    node: str
    round: int
    values: dict[str, float]
    ts_ms: int = 0
    sig: str = ""

    def signing_bytes(self) -> bytes:
        """Canonical bytes of the domain label and every field but ``sig``."""
        return canonical_bytes(
            {
                "type": TELEMETRY_TYPE,
                "node": self.node,
                "round": self.round,
                "values": self.values,
                "ts_ms": self.ts_ms,
            }
        )

    def encode(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Telemetry:
        obj = _load(data, 16 * 1024)
        values = _typed(obj, "values", dict)
        if len(values) > MAX_TELEMETRY_VALUES:
            raise MessageError(f"more than {MAX_TELEMETRY_VALUES} telemetry values")
        if any(len(k) > MAX_TELEMETRY_KEY for k in values):
            raise MessageError(f"telemetry key longer than {MAX_TELEMETRY_KEY} characters")
        if not all(_finite_number(v) for v in values.values()):
            raise MessageError("telemetry values must be finite numbers")
        return cls(
            node=_typed(obj, "node", str),
            round=_typed(obj, "round", int),
            values=values,
            ts_ms=_ts_ms(obj),
            sig=_sig(obj),
        )
