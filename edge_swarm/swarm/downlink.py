"""The downlink merged update: one compact, deterministic update per round for light agents.

How it works
------------
The round's committee merges the deltas with the genesis rule into ``merged`` (float32), then
every member runs ``make_update`` on the same inputs::

    target   = (merged - base) + residual     float32; residual None = zeros
    body     = quantize.encode(target, spec)  the genesis' downlink codec
    decoded  = quantize.decode(body, ...)     exactly what every agent will decode
    params   = base + decoded                 float32: the round's model, on every node
    residual = target - decoded               server-side error feedback, kept in the merge state

so the sum of published updates equals the sum of merged updates minus the current residual:
quantization error is delayed, never accumulated (as ``feedback.py`` does for senders). An
agent parses the frame (``parse_update``); ``apply_update`` gives it the same ``params`` bits.

Encoding without an rng is deterministic for every codec: nearest rounding (``np.rint``),
float16 conversion and top-k selection (ties to the lower index) depend only on the input
bits. Only ``rounding="stochastic"`` (int8/int4) draws random numbers, from an rng derived
from (swarm, round, base model hash) (``_derived_rng``): the same on every member running
the same numpy (which does not promise ``Generator`` streams across versions). A genesis
should prefer nearest rounding: error feedback already removes its bias.

Wire format
-----------
All integers little-endian (``struct``)::

    offset  size  field
    0       4     magic b"ESUP"
    4       1     version (u8, = 1)
    5       1+n   swarm id (u8 length + UTF-8; ``topics.validate_id``, so 1..64 ASCII)
    6+n     4     round (u32)
    10+n    32    base model hash (raw sha256 bytes of the model the update applies to)
    42+n    1     codec id (u8; ``quantize.CODEC_*``)
    43+n    1     flags (u8; ``quantize.FLAG_TOPK`` or 0)
    44+n    4     n_params (u32, >= 1)
    48+n    4     body_len (u32)
    52+n    body  the ``quantize`` codec body: raw little-endian numbers, never pickled

Nothing trails the body. The frame's sha256 (``Downlink.sha256``, ``Update.sha256``) is what
committee members sign and agents count a quorum on.

Invariants
----------
- ``make_update`` is a pure function of its arguments: every machine computing it from the
  same bytes gets the same frame bytes, the same ``params`` bits and the same ``residual``.
- ``apply_update(base, parse_update(frame))`` equals ``make_update(...).params`` bit for bit:
  both are one IEEE float32 addition of the same ``decode`` output.
- ``parse_update`` takes untrusted bytes and raises only ``DownlinkError``: the size limit is
  checked before any work, then every field, the exact length, and the body through
  ``quantize.decode``; a returned ``Update`` holds a finite float32 delta of ``n_params``.
- ``apply_update`` refuses (DownlinkError) an update for another swarm, round, base model or
  size, and never returns a non-finite model.
- Misuse by our own code raises ValueError/TypeError; bad input from a peer, DownlinkError.

Pure numpy: no I/O, no threads, no logging.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_swarm.swarm import quantize
from edge_swarm.swarm._quant_format import _TOPK_HEAD, _dense_len
from edge_swarm.swarm.topics import TopicError, validate_id

__all__ = [
    "MAGIC",
    "VERSION",
    "Downlink",
    "DownlinkError",
    "Update",
    "UpdateKey",
    "apply_update",
    "make_update",
    "parse_update",
    "update_bytes",
]

MAGIC = b"ESUP"
VERSION = 1
_PREFIX = struct.Struct("<4sBB")  # magic, version, swarm id length
_FIELDS = struct.Struct("<I32sBBII")  # round, base hash, codec id, flags, n_params, body_len
_U32_MAX = 2**32 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RNG_DOMAIN = b"edge-swarm/downlink-rng/v1\x00"


class DownlinkError(ValueError):
    """Downlink update bytes that are malformed, or an update for another swarm, round or model."""


class UpdateKey(NamedTuple):
    """What an update applies to; a plain ``(swarm, round, base_model_hash, n_params)`` works."""

    swarm: str
    round: int
    base_model_hash: str
    n_params: int


@dataclass(frozen=True, eq=False)
class Downlink:
    """A committee member's published update: the wire ``frame`` and its hex ``sha256``, the
    round's model ``params`` and the next ``residual`` (read-only float32 arrays)."""

    frame: bytes
    sha256: str
    params: np.ndarray
    residual: np.ndarray


@dataclass(frozen=True, eq=False)
class Update:
    """A parsed frame (``parse_update``): its header fields, its decoded ``delta`` (read-only,
    finite float32 of ``n_params``) and the hex ``sha256`` of the whole frame."""

    swarm: str
    round: int
    base_model_hash: str
    codec_id: int
    flags: int
    n_params: int
    delta: np.ndarray
    sha256: str

    @property
    def key(self) -> UpdateKey:
        """``(swarm, round, base_model_hash, n_params)``, as ``apply_update`` checks it."""
        return UpdateKey(self.swarm, self.round, self.base_model_hash, self.n_params)


# --------------------------------------------------------------------------- helpers


def _frozen(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


def _check_swarm(swarm: object) -> str:
    try:
        return validate_id(swarm, "swarm id")
    except TopicError as exc:
        raise ValueError(str(exc)) from None


def _check_key(swarm: object, round: object, base_model_hash: object) -> bytes:
    """Validate our own (swarm, round, hash) arguments; return the raw 32-byte hash."""
    _check_swarm(swarm)
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= _U32_MAX:
        raise ValueError(f"round must be an int in [0, {_U32_MAX}], got {round!r}")
    # Lowercase only: one spelling per hash, so equal keys compare equal as strings.
    if not isinstance(base_model_hash, str) or _HEX64.fullmatch(base_model_hash) is None:
        raise ValueError(
            f"base_model_hash must be 64 lowercase hex digits, got {base_model_hash!r}"
        )
    return bytes.fromhex(base_model_hash)


def _vector(name: str, arr: object, n: int | None = None) -> np.ndarray:
    # float32 only: a silent float64 -> float32 cast is exact-rounded, but a caller passing
    # float64 has probably not computed the same bytes as the other members.
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 1:
        raise TypeError(f"{name} must be a 1-D float32 array")
    if not 1 <= arr.size <= _U32_MAX or (n is not None and arr.size != n):
        raise ValueError(f"{name} has {arr.size} values, expected {n or '1..2**32-1'}")
    return arr


def _derived_rng(swarm: str, round: int, base_raw: bytes) -> np.random.Generator:
    """The rng of stochastic rounding: seeded from the update's key, the same on every member."""
    digest = hashlib.sha256(
        _RNG_DOMAIN + swarm.encode() + b"\x00" + round.to_bytes(4, "little") + base_raw
    ).digest()
    seed = np.random.SeedSequence(int.from_bytes(digest, "little"))
    return np.random.Generator(np.random.PCG64(seed))


def _finite(arr: np.ndarray) -> bool:
    # max/min propagate NaN and expose Inf without a boolean temporary of the whole vector.
    return bool(np.isfinite(arr.max()) and np.isfinite(arr.min()))


# --------------------------------------------------------------------------- committee side


def make_update(
    base: np.ndarray,
    merged: np.ndarray,
    residual: np.ndarray | None,
    spec: quantize.CodecSpec,
    swarm: str,
    round: int,
    base_model_hash: str,
) -> Downlink:
    """Build the round's downlink update from the committee's merge (see the module header).

    ``base``: the model every node holds (float32, 1-D); ``base_model_hash`` its hex hash.
    ``merged``: the merge rule's new params (same shape). ``residual``: the previous round's
    ``Downlink.residual`` from the merge state, or None (zeros). ``spec``: the genesis'
    downlink codec. Raises TypeError/ValueError on misuse: wrong dtype or shape, bad swarm id,
    round or hash, or a target or result that is not finite in float32.
    """
    if not isinstance(spec, quantize.CodecSpec):
        raise TypeError(f"spec must be a CodecSpec, got {type(spec).__name__}")
    base_raw = _check_key(swarm, round, base_model_hash)
    base = _vector("base", base)
    merged = _vector("merged", merged, base.size)
    with np.errstate(over="ignore", invalid="ignore"):
        target = np.subtract(merged, base, dtype=np.float32)
        if residual is not None:
            np.add(target, _vector("residual", residual, base.size), out=target)
    rng = _derived_rng(swarm, round, base_raw) if spec.rounding == "stochastic" else None
    body = quantize.encode(target, spec, rng)  # ValueError on a non-finite target
    decoded = quantize.decode(body, spec.codec_id, spec.flags, base.size)
    with np.errstate(over="ignore", invalid="ignore"):
        params = np.add(base, decoded, dtype=np.float32)
    # Every agent would refuse this model (apply_update), so the committee must not publish it.
    if not _finite(params):
        raise ValueError("base + update overflows float32")
    raw = swarm.encode()
    fields = _FIELDS.pack(round, base_raw, spec.codec_id, spec.flags, base.size, len(body))
    frame = _PREFIX.pack(MAGIC, VERSION, len(raw)) + raw + fields + body
    return Downlink(
        frame=frame,
        sha256=hashlib.sha256(frame).hexdigest(),
        params=_frozen(params),
        residual=_frozen(np.subtract(target, decoded, dtype=np.float32)),
    )


def update_bytes(n_params: int, spec: quantize.CodecSpec, swarm: str | None = None) -> int:
    """The size of an update frame for ``n_params`` parameters under ``spec``.

    ``swarm``: the swarm id, or None for the longest allowed (64 characters). Exact for dense
    codecs and for top-k with bitmap index packing; an upper bound for top-k with delta or auto
    packing, whose index size depends on which entries are kept. ValueError on misuse.
    """
    if isinstance(n_params, bool) or not isinstance(n_params, int) or not 1 <= n_params <= _U32_MAX:
        raise ValueError(f"n_params must be an int in [1, {_U32_MAX}], got {n_params!r}")
    if not isinstance(spec, quantize.CodecSpec):
        raise TypeError(f"spec must be a CodecSpec, got {type(spec).__name__}")
    id_len = 64 if swarm is None else len(_check_swarm(swarm))
    head = _PREFIX.size + id_len + _FIELDS.size
    if spec.topk is None:
        return head + _dense_len(spec.codec_id, n_params, spec.chunk)
    k = quantize.topk_count(n_params, spec.topk)
    bitmap = (n_params + 7) // 8
    varints = k * max(1, -(-(n_params - 1).bit_length() // 7))  # each gap < n_params
    index = {"bitmap": bitmap, "delta": varints, "auto": min(bitmap, varints)}[spec.index_packing]
    return head + _TOPK_HEAD.size + index + _dense_len(spec.codec_id, k, spec.chunk)


# --------------------------------------------------------------------------- agent side


def parse_update(data: bytes, max_size: int, *, max_params: int | None = None) -> Update:
    """Parse an untrusted update frame; raise only ``DownlinkError`` for any bytes.

    ``max_size``: the largest frame accepted, checked before anything else (``update_bytes``
    of the model gives a tight one). ``max_params``: the most parameters accepted, checked
    before decoding; pass the model's count. None allows ``8 * max_size`` (what a dense sign1
    body could hold), bounding the decoded array even for a top-k body, which is small for
    any ``n_params``. The update is well formed but not yet trusted: check its committee
    signatures on ``sha256`` and its key in ``apply_update``.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"max_size must be an int >= 0, got {max_size!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DownlinkError(f"update must be bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)  # bytes, not items
    if size > max_size:
        raise DownlinkError(f"update of {size} bytes exceeds {max_size}")
    data = bytes(data)
    limit = 8 * max_size if max_params is None else max_params
    if len(data) < _PREFIX.size:
        raise DownlinkError("truncated update prefix")
    magic, version, id_len = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise DownlinkError("not a version-1 edge-swarm downlink update")
    head = _PREFIX.size + id_len + _FIELDS.size
    if len(data) < head:
        raise DownlinkError("truncated update header")
    raw = data[_PREFIX.size : _PREFIX.size + id_len]
    try:
        swarm = validate_id(raw.decode("utf-8"), "swarm id")
    except (UnicodeDecodeError, TopicError):
        raise DownlinkError(f"invalid swarm id in update: {raw!r}") from None
    rnd, base_raw, cid, flags, n, body_len = _FIELDS.unpack_from(data, _PREFIX.size + id_len)
    if not 1 <= n <= limit:
        raise DownlinkError(f"update of {n} params outside 1..{limit}")
    try:
        body_max = quantize.max_body_len(cid, flags, n)
    except quantize.CodecError as exc:
        raise DownlinkError(f"bad update codec: {exc}") from None
    if body_len > body_max:
        raise DownlinkError(f"body_len {body_len} exceeds {body_max} for {n} params")
    if len(data) != head + body_len:
        raise DownlinkError(f"update of {len(data)} bytes, header says {head + body_len}")
    try:
        delta = quantize.decode(memoryview(data)[head:], cid, flags, n)
    except quantize.CodecError as exc:
        raise DownlinkError(f"bad update body: {exc}") from None
    # decode promises finite float32; re-checked here because apply_update relies on it.
    if delta.dtype != np.float32 or not _finite(delta):
        raise DownlinkError("update body decodes to non-finite values")
    return Update(
        swarm=swarm,
        round=rnd,
        base_model_hash=base_raw.hex(),
        codec_id=cid,
        flags=flags,
        n_params=n,
        delta=_frozen(delta),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def apply_update(
    base: np.ndarray, update: Update, expected: UpdateKey | tuple[str, int, str, int]
) -> np.ndarray:
    """The round's model: ``base + update.delta`` in float32, a fresh array.

    ``expected``: ``(swarm, round, base_model_hash, n_params)`` the agent is waiting for.
    Raises DownlinkError if the update names another swarm, round, base model or size, or if
    the result is not finite; TypeError/ValueError if ``base`` is not ``n_params`` float32.
    The result is bit-identical to ``Downlink.params`` of the ``make_update`` that built it.
    """
    if not isinstance(update, Update):
        raise TypeError(f"update must be an Update, got {type(update).__name__}")
    want = UpdateKey(*expected)
    got = update.key
    for name, w, g in zip(UpdateKey._fields, want, got, strict=True):
        if w != g:
            raise DownlinkError(f"update for {name} {g!r:.80}, expected {w!r:.80}")
    base = _vector("base", base, want.n_params)
    with np.errstate(over="ignore", invalid="ignore"):
        params = np.add(base, update.delta, dtype=np.float32)
    if not _finite(params):
        raise DownlinkError("update would make the model non-finite")
    return params
