"""The model checkpoint: the global model after a round, as published retained on MQTT.

Frame (little-endian): magic ``b"ESCK"``, version u8, header length u32, header (canonical
JSON: swarm, round, spec, model_hash, state_hash, n_params, state_len), the parameters as
raw float32, then the merge rule's state as raw float32. Arrays cross the wire as raw bytes
with an explicit dtype and length, never pickled.

A checkpoint is not trusted for what it says: the receiver recomputes the model hash from
the spec and the bytes and compares it with the ledger's ``model_final`` before using it.

Sealed checkpoint
-----------------
The retained checkpoint holds the whole model, so a swarm that seals its deltas seals it too:
the broker and every subscriber could otherwise read what the deltas hide. Frame
(little-endian, ``struct``)::

    offset  size  field
    0       4     magic b"ESCS"
    4       1     version (u8, = 1)
    5       4     epoch (u32): key epoch of the data key
    9       4     round (u32)
    13      1+n   swarm id (u8 length + ASCII)
    ...     rest  payload.seal(checkpoint frame, data_key, build_aad("checkpoint", swarm,
                  round, epoch)) = nonce (12) || ciphertext || tag (16)

The outer fields are in the clear so a receiver can pick the epoch's key and refuse a frame
for another swarm before decrypting; the AAD binds them, so a blob re-framed under another
swarm, round or epoch does not open, and ``open_checkpoint`` also requires the inner
checkpoint to name the same swarm and round. Parsing (``parse_sealed_checkpoint``) needs no
key; both it and ``open_checkpoint`` raise only ``CheckpointError`` on bad bytes.
``edge_swarm.trust`` is imported only by the functions that seal or open, so decoding
plain checkpoints does not load it (nor its AES-GCM and X25519 code).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from edge_swarm.swarm.topics import TopicError, validate_id
from ledger_lite.canonical import parse_json

MAGIC = b"ESCK"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")
MAX_HEADER = 64 * 1024
MAX_CHECKPOINT = 256 * 1024 * 1024

SEALED_MAGIC = b"ESCS"
SEALED_VERSION = 1
_SEALED_PREFIX = struct.Struct("<4sBII")  # magic, version, epoch, round
_U8 = struct.Struct("<B")
_U32_MAX = 2**32 - 1
_SEAL_OVERHEAD = 28
"""``payload.OVERHEAD`` (nonce + tag), mirrored so that importing this module does not import
``edge_swarm.trust``; a test pins the two together."""
MAX_SEALED_CHECKPOINT = MAX_CHECKPOINT + _SEAL_OVERHEAD + 512
"""Default size limit of a sealed frame: the largest checkpoint, the seal, and the outer header
(at most 78 bytes) with room to spare."""


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
        header = parse_json(data[_PREFIX.size : _PREFIX.size + hlen])
        n_params, state_len = int(header["n_params"]), int(header["state_len"])
        fields = (
            str(header["swarm"]),
            int(header["round"]),
            dict(header["spec"]),
            str(header["model_hash"]),
            str(header["state_hash"]),
        )
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        # parse_json raises only DecodeError (a ValueError); OverflowError: int() of an inf
        raise CheckpointError(f"bad checkpoint header: {exc!r:.200}") from None
    body = data[_PREFIX.size + hlen :]
    if n_params < 0 or state_len < 0 or len(body) != 4 * (n_params + state_len):
        raise CheckpointError("checkpoint body length does not match its header")
    arr = np.frombuffer(body, dtype="<f4")
    params, state = arr[:n_params].astype(np.float32), arr[n_params:].astype(np.float32)
    if not (np.isfinite(params).all() and np.isfinite(state).all()):
        raise CheckpointError("checkpoint holds non-finite values")
    return Checkpoint(*fields, params=params, state=state)


# --------------------------------------------------------------------------- sealed


def _payload() -> ModuleType:
    # Imported lazily: cryptography is slow to import on a Pi, and plain checkpoints never need it.
    from edge_swarm.trust import payload

    return payload


def _check_u32(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32_MAX:
        raise ValueError(f"{what} must be an int in [0, {_U32_MAX}], got {value!r}")
    return value


SEALED_KINDS = ("checkpoint", "update")
"""What a sealed frame may hold: a checkpoint, or a committee's downlink update
(``swarm/downlink.py``). The kind is bound into the seal (its AAD), so one never opens as
the other."""


def _checkpoint_aad(swarm: str, round: int, epoch: int, kind: str = "checkpoint") -> bytes:
    if kind not in SEALED_KINDS:
        raise ValueError(f"sealed kind must be one of {SEALED_KINDS}, got {kind!r:.40}")
    return _payload().build_aad(kind, swarm, round, epoch)


@dataclass(frozen=True)
class SealedCheckpoint:
    """A parsed sealed-checkpoint frame: clear outer fields and the still-sealed blob.

    Validated when built (ValueError), so ``open_checkpoint`` can trust its own argument;
    ``parse_sealed_checkpoint`` is the way to get one from untrusted bytes.
    """

    swarm: str
    round: int
    epoch: int
    blob: bytes = field(repr=False)

    def __post_init__(self) -> None:
        try:
            validate_id(self.swarm, "swarm id")
        except TopicError as exc:
            raise ValueError(str(exc)) from None
        _check_u32(self.round, "round")
        _check_u32(self.epoch, "epoch")
        if not isinstance(self.blob, bytes):
            raise ValueError(f"blob must be bytes, got {type(self.blob).__name__}")


def seal_checkpoint(
    data: bytes, swarm: str, round: int, epoch: int, data_key: bytes, kind: str = "checkpoint"
) -> bytes:
    """Seal an ``encode_checkpoint`` frame under the swarm data key of ``epoch`` (or, with
    ``kind="update"``, a downlink update frame: ``open_frame`` opens it).

    ``data`` should be the checkpoint of ``swarm`` and ``round``: receivers refuse one whose
    inner fields differ (checked in ``open_checkpoint``, not here, to avoid decoding a model
    just to send it). Raises ValueError/TypeError on misuse (bad id, round or epoch outside
    u32, ``data`` not bytes or larger than ``MAX_CHECKPOINT``, a key that is not 32 bytes).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) > MAX_CHECKPOINT:
        raise ValueError(f"checkpoint of {len(data)} bytes exceeds {MAX_CHECKPOINT}")
    try:
        validate_id(swarm, "swarm id")
    except TopicError as exc:
        raise ValueError(str(exc)) from None
    _check_u32(round, "round")
    _check_u32(epoch, "epoch")
    blob = _payload().seal(bytes(data), data_key, _checkpoint_aad(swarm, round, epoch, kind))
    raw_swarm = swarm.encode("ascii")
    return b"".join(
        [
            _SEALED_PREFIX.pack(SEALED_MAGIC, SEALED_VERSION, epoch, round),
            _U8.pack(len(raw_swarm)),
            raw_swarm,
            blob,
        ]
    )


def is_sealed_checkpoint(data: object) -> bool:
    """Whether ``data`` starts like a sealed checkpoint (its magic); never raises.

    Lets a receiver route a retained payload to ``parse_sealed_checkpoint`` or
    ``decode_checkpoint`` without trying both.
    """
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:4]) == SEALED_MAGIC


def parse_sealed_checkpoint(data: bytes, max_size: int = MAX_SEALED_CHECKPOINT) -> SealedCheckpoint:
    """Parse an untrusted sealed-checkpoint frame without a key; raise only ``CheckpointError``.

    The size is checked before anything else, then magic, version, the swarm id and that the
    blob is at least a seal's overhead long. The blob is not opened: pick the data key of
    ``epoch`` and call ``open_checkpoint``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CheckpointError(f"sealed checkpoint must be bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise CheckpointError(f"sealed checkpoint of {len(data)} bytes exceeds {max_size}")
    data = bytes(data)
    if len(data) < _SEALED_PREFIX.size + _U8.size:
        raise CheckpointError("truncated sealed checkpoint prefix")
    magic, version, epoch, rnd = _SEALED_PREFIX.unpack_from(data)
    if magic != SEALED_MAGIC or version != SEALED_VERSION:
        raise CheckpointError("not a version-1 edge-swarm sealed checkpoint")
    (n,) = _U8.unpack_from(data, _SEALED_PREFIX.size)
    start = _SEALED_PREFIX.size + _U8.size
    if start + n > len(data):
        raise CheckpointError("truncated sealed checkpoint swarm id")
    raw = data[start : start + n]
    try:
        swarm = validate_id(raw.decode("ascii"), "swarm id")
    except (UnicodeDecodeError, TopicError):
        raise CheckpointError(f"invalid swarm id in sealed checkpoint: {raw!r}") from None
    blob = data[start + n :]
    if len(blob) < _SEAL_OVERHEAD:
        raise CheckpointError(f"sealed checkpoint blob of {len(blob)} bytes is truncated")
    return SealedCheckpoint(swarm=swarm, round=rnd, epoch=epoch, blob=blob)


def open_checkpoint(sealed: SealedCheckpoint, data_key: bytes) -> Checkpoint:
    """Open and decode a sealed checkpoint with the data key of ``sealed.epoch``.

    Raises CheckpointError if the blob does not open ("undecryptable ...": wrong key or
    epoch, a blob moved under another swarm, round or epoch, any flipped byte), if the
    plaintext is not a checkpoint, or if it names another swarm or round than the outer
    header (a sealer's mistake or a stale model re-sealed under a new round). A malformed
    key is misuse (ValueError/TypeError). As for a plain checkpoint, the model hash must
    still be checked against the ledger before use.
    """
    ck = decode_checkpoint(open_frame(sealed, data_key))
    if ck.swarm != sealed.swarm or ck.round != sealed.round:
        raise CheckpointError(
            f"sealed checkpoint for {sealed.swarm!r} round {sealed.round} holds "
            f"{ck.swarm!r:.80} round {ck.round}"
        )
    return ck


def open_frame(sealed: SealedCheckpoint, data_key: bytes, kind: str = "checkpoint") -> bytes:
    """The plaintext of a sealed frame of ``kind`` (``SEALED_KINDS``), not decoded.

    Raises CheckpointError if the blob does not open with ``data_key`` under this kind,
    swarm, round and epoch (wrong key, another kind, any flipped byte).
    """
    if not isinstance(sealed, SealedCheckpoint):
        raise TypeError("sealed must be a SealedCheckpoint")
    payload = _payload()
    aad = _checkpoint_aad(sealed.swarm, sealed.round, sealed.epoch, kind)
    try:
        return payload.open_sealed(
            sealed.blob, data_key, aad, max_len=MAX_CHECKPOINT + payload.OVERHEAD
        )
    except payload.TrustError as exc:
        raise CheckpointError(
            f"undecryptable sealed {kind} (epoch {sealed.epoch}): {exc}"
        ) from None
