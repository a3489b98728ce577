"""The model checkpoint: the global model after a round, as published retained on MQTT.

Frame (little-endian): magic ``b"ESCK"``, version u8, header length u32, header (canonical
JSON: swarm, round, spec, model_hash, state_hash, n_params, state_len), the parameters as
raw float32, then the merge rule's state as raw float32. Arrays cross the wire as raw bytes
with an explicit dtype and length, never pickled.

A checkpoint is not trusted for what it says: the receiver recomputes the model hash from
the spec and the bytes and compares it with the ledger's ``model_final`` before using it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_swarm.swarm import jsonsafe

MAGIC = b"ESCK"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")
MAX_HEADER = 64 * 1024
MAX_CHECKPOINT = 256 * 1024 * 1024


class CheckpointError(ValueError):
    """Bytes that are not a well-formed checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """A decoded checkpoint; ``params`` and ``state`` are float32 arrays."""

    swarm: str
    round: int
    spec: dict[str, Any]
    model_hash: str
    state_hash: str
    params: np.ndarray
    state: np.ndarray


def encode_checkpoint(ck: Checkpoint) -> bytes:
    """Serialise a checkpoint (see the module header for the frame)."""
    params = np.ascontiguousarray(ck.params, dtype="<f4").tobytes()
    state = np.ascontiguousarray(ck.state, dtype="<f4").tobytes()
    header = {
        "swarm": ck.swarm,
        "round": ck.round,
        "spec": ck.spec,
        "model_hash": ck.model_hash,
        "state_hash": ck.state_hash,
        "n_params": int(ck.params.size),
        "state_len": int(ck.state.size),
    }
    hdr = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(hdr)) + hdr + params + state


def decode_checkpoint(data: bytes, max_size: int = MAX_CHECKPOINT) -> Checkpoint:
    """Parse untrusted bytes; raise only ``CheckpointError``."""
    if len(data) > max_size:
        raise CheckpointError(f"checkpoint of {len(data)} bytes exceeds {max_size}")
    if len(data) < _PREFIX.size:
        raise CheckpointError("truncated checkpoint prefix")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise CheckpointError("not a version-1 edge-swarm checkpoint")
    if hlen > MAX_HEADER or _PREFIX.size + hlen > len(data):
        raise CheckpointError("bad checkpoint header length")
    try:
        header = jsonsafe.loads(data[_PREFIX.size : _PREFIX.size + hlen])
        n_params, state_len = int(header["n_params"]), int(header["state_len"])
        fields = (
            str(header["swarm"]),
            int(header["round"]),
            dict(header["spec"]),
            str(header["model_hash"]),
            str(header["state_hash"]),
        )
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        # OverflowError: int() of an infinite number; RecursionError: deeply nested JSON
        raise CheckpointError(f"bad checkpoint header: {exc!r:.200}") from None
    body = data[_PREFIX.size + hlen :]
    if n_params < 0 or state_len < 0 or len(body) != 4 * (n_params + state_len):
        raise CheckpointError("checkpoint body length does not match its header")
    arr = np.frombuffer(body, dtype="<f4")
    params, state = arr[:n_params].astype(np.float32), arr[n_params:].astype(np.float32)
    if not (np.isfinite(params).all() and np.isfinite(state).all()):
        raise CheckpointError("checkpoint holds non-finite values")
    return Checkpoint(*fields, params=params, state=state)
