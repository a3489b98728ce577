"""Resend requests: the wire form of "send me these chunks of that message again".

A receiver whose ``chunking.Reassembler`` reports missing chunks (``due_resends``) asks the
sender with ``encode_resend_request``: UTF-8 JSON ``{"id": hex, "missing": [ints], "topic":
str}`` with sorted keys, at most MAX_MISSING_PER_REQUEST indices and MAX_REQUEST_BYTES bytes.
The sender reads it with ``parse_resend_request`` and rebuilds each chunk (``chunk_at``).

On the same topic a gateway that missed a whole envelope (it was down when it was published)
asks for it by the sha256 the ledger's commit names: ``{"sha256": hex, "want": "delta"}``
(``encode_delta_request`` / ``parse_delta_request``); the node sends exactly those bytes again
if it still holds them. A gateway whose model is older than the ledger's last final round
asks a node that attested it for that model by the hash the ledger names:
``{"model_hash": hex, "want": "model"}`` (``encode_model_request`` / ``parse_model_request``);
the node answers on ``round/{r}/model/{node}`` if it holds exactly that model.

Invariants
----------
- ``parse_resend_request`` takes untrusted input and raises only ``ChunkError``.

Misuse by our own code raises ValueError. Pure: no sockets, no threads, no logging.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edge_swarm.swarm.chunk_frames import MAX_COUNT, ChunkError
from ledger_lite.canonical import canonical_bytes, parse_json

MAX_MISSING_PER_REQUEST = 1024
"""Most chunk indices one resend request names; the rest are asked for the next time."""
MAX_REQUEST_BYTES = 16 * 1024
"""Largest resend request accepted, in bytes (1024 indices of 10 digits fit with room)."""

_HEX_ID = re.compile(r"[0-9a-f]{64}")
_DELTA_REQUEST_PREFIX = b'{"sha256":'  # how a delta request starts (sorted keys)
_MODEL_REQUEST_PREFIX = b'{"model_hash":'  # how a model request starts (sorted keys)
_WHOLE_REQUEST_BYTES = 256  # a delta or model request is one short JSON object


@dataclass(frozen=True)
class ResendRequest:
    """A request to publish chunks of message ``message_id`` (sent on ``topic``) again."""

    message_id: bytes
    missing: tuple[int, ...]
    topic: str


def encode_resend_request(mid: bytes, missing: list[int] | tuple[int, ...], topic: str) -> bytes:
    """The wire form: UTF-8 JSON ``{"id": hex, "missing": [ints], "topic": str}``, sorted keys.

    Raises ValueError on an id that is not 32 bytes, no or too many (> MAX_MISSING_PER_REQUEST)
    indices, or a result over MAX_REQUEST_BYTES.
    """
    if len(mid) != 32:
        raise ValueError("message id must be 32 bytes")
    if not 1 <= len(missing) <= MAX_MISSING_PER_REQUEST:
        raise ValueError(f"need 1..{MAX_MISSING_PER_REQUEST} missing indices")
    obj = {"id": mid.hex(), "missing": [int(i) for i in missing], "topic": topic}
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError("resend request too large")
    return data


def parse_resend_request(data: object) -> ResendRequest:
    """Parse a resend request from untrusted input; raise only ChunkError.

    Needs a JSON object with ``id`` (64 lowercase hex digits), ``missing`` (1 to
    MAX_MISSING_PER_REQUEST distinct ints in ``[0, 2**32 - 2]``) and ``topic`` (a non-empty
    string); other keys are ignored (newer senders may add some). At most MAX_REQUEST_BYTES.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ChunkError("resend request is not bytes")
    if len(data) > MAX_REQUEST_BYTES:
        raise ChunkError(f"resend request of {len(data)} bytes is too large")
    try:
        obj = parse_json(data)
    except ValueError as exc:  # parse_json raises only DecodeError, a ValueError
        raise ChunkError(f"resend request is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ChunkError("resend request is not a JSON object")
    hex_id, missing, topic = obj.get("id"), obj.get("missing"), obj.get("topic")
    if not isinstance(hex_id, str) or _HEX_ID.fullmatch(hex_id) is None:
        raise ChunkError("resend request id is not 64 lowercase hex digits")
    if not isinstance(topic, str) or not topic:
        raise ChunkError("resend request topic is not a non-empty string")
    if not isinstance(missing, list) or not 1 <= len(missing) <= MAX_MISSING_PER_REQUEST:
        raise ChunkError(f"resend request needs 1..{MAX_MISSING_PER_REQUEST} missing indices")
    for i in missing:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < MAX_COUNT:
            raise ChunkError(f"bad chunk index in resend request: {i!r}")
    if len(set(missing)) != len(missing):
        raise ChunkError("repeated chunk index in resend request")
    return ResendRequest(bytes.fromhex(hex_id), tuple(missing), topic)


def encode_delta_request(sha256: str) -> bytes:
    """Ask a node for its whole envelope with this sha256 (ValueError if not 64 hex)."""
    if _HEX_ID.fullmatch(sha256) is None:
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return canonical_bytes({"sha256": sha256, "want": "delta"})


def is_delta_request(data: object) -> bool:
    """Whether a message on a resend topic asks for a whole envelope (cheap; not a parse)."""
    return isinstance(data, (bytes, bytearray)) and bytes(data[:10]) == _DELTA_REQUEST_PREFIX


def parse_delta_request(data: object) -> str:
    """The sha256 a delta request names; raise only ChunkError on anything else."""
    return _parse_whole_request(data, "delta", "sha256")


def encode_model_request(model_hash: str) -> bytes:
    """Ask a node for the final model with this hash (ValueError if not 64 hex)."""
    if _HEX_ID.fullmatch(model_hash) is None:
        raise ValueError("model_hash must be 64 lowercase hex digits")
    return canonical_bytes({"model_hash": model_hash, "want": "model"})


def is_model_request(data: object) -> bool:
    """Whether a message on a resend topic asks for a final model (cheap; not a parse)."""
    n = len(_MODEL_REQUEST_PREFIX)
    return isinstance(data, (bytes, bytearray)) and bytes(data[:n]) == _MODEL_REQUEST_PREFIX


def parse_model_request(data: object) -> str:
    """The model hash a model request names; raise only ChunkError on anything else."""
    return _parse_whole_request(data, "model", "model_hash")


def _parse_whole_request(data: object, want: str, field: str) -> str:
    if not isinstance(data, (bytes, bytearray)) or len(data) > _WHOLE_REQUEST_BYTES:
        raise ChunkError(f"{want} request is not bytes of at most {_WHOLE_REQUEST_BYTES}")
    try:
        obj = parse_json(data)
    except ValueError as exc:
        raise ChunkError(f"{want} request is not JSON: {exc}") from None
    value = obj.get(field) if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or obj.get("want") != want or not isinstance(value, str):
        raise ChunkError(f"not a {want} request")
    if _HEX_ID.fullmatch(value) is None:
        raise ChunkError(f"{want} request {field} is not 64 lowercase hex digits")
    return value


def is_whole_request(data: object) -> bool:
    """Whether a message on a resend topic asks for a whole delta or model, not chunks."""
    return is_delta_request(data) or is_model_request(data)


def parse_whole_request(data: object) -> tuple[str, str]:
    """``("delta", sha256)`` or ``("model", model_hash)``; raise only ChunkError."""
    if is_model_request(data):
        return "model", parse_model_request(data)
    return "delta", parse_delta_request(data)
