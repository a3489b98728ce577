"""JSON messages on the ledger and fleet topics, parsed once at the boundary.

Each decoder takes untrusted bytes and returns a frozen value or raises ``MessageError``
(too large, not UTF-8 JSON, wrong shape). Ledger entries and transactions inside these
messages are parsed and validated by ``ledger_lite`` afterwards; here only the envelope
around them is checked.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_swarm.swarm import jsonsafe

MAX_JSON = 1024 * 1024  # a query reply carries a page of entries; nothing else comes close
MAX_PAGE = 500


class MessageError(ValueError):
    """Bytes that are not the message the topic carries."""


def _load(data: bytes, max_size: int = MAX_JSON) -> dict[str, Any]:
    if len(data) > max_size:
        raise MessageError(f"message of {len(data)} bytes exceeds {max_size}")
    try:
        obj = jsonsafe.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting recurses
        raise MessageError(f"not JSON: {exc!r:.200}") from None
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


QUERY_OPS = ("entries", "inclusion", "consistency")


@dataclass(frozen=True)
class Query:
    """A request on ``ledger/query``.

    ``op`` "entries": entries from ``start`` (at most ``limit``); "inclusion": a signed proof
    that the entry at height ``start`` is in the ledger; "consistency": a signed proof that
    the ledger of ``start`` entries is a prefix of today's.
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


@dataclass(frozen=True)
class Status:
    """A node's retained status on ``fleet/status/{node}`` (its last will says offline)."""

    node: str
    role: str
    state: str
    round: int = 0

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
        )
        if st.state not in ("online", "offline", "paused"):
            raise MessageError(f"unknown state {st.state!r}")
        return st


@dataclass(frozen=True)
class Telemetry:
    """Periodic numbers from a node on ``fleet/telemetry/{node}``."""

    node: str
    round: int
    values: dict[str, float]

    def encode(self) -> bytes:
        return _dump(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Telemetry:
        obj = _load(data, 16 * 1024)
        values = _typed(obj, "values", dict)
        if not all(_finite_number(v) for v in values.values()):
            raise MessageError("telemetry values must be finite numbers")
        return cls(node=_typed(obj, "node", str), round=_typed(obj, "round", int), values=values)
