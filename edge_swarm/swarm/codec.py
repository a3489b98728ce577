"""The delta envelope: a versioned, signed binary frame carrying one parameter delta.

How it works
------------
All integers little-endian, packed with ``struct``::

    offset  size  field
    0       4     magic  b"ESWD"
    4       1     version (u8, = 1)
    5       1     codec (u8; see CODEC_*)
    6       1     flags (u8; see FLAG_*)
    7       1+n   swarm id (u8 length + UTF-8)
    ...     4     round (u32)
    ...     1+n   node id (u8 length + UTF-8)
    ...     32    base model hash (raw sha256 bytes)
    ...     4     n_params (u32)
    ...     4     n_samples (u32)
    ...     4     body_len (u32)
    ...     4     epoch (u32; present only when flags has FLAG_SEALED)
    ...     body_len  codec body, or when sealed the sealed blob of it (see below)
    ...     1+n   signature (u8 length + bytes: 64 for Ed25519, 0 for unsigned)

The signature covers every byte before its length byte (``Envelope.signed_bytes``).

A *sealed* frame (flag ``FLAG_SEALED``) carries the swarm data key's ``epoch`` and, as its
body, ``trust.payload.seal(codec body, data_key, envelope_aad(header))`` = nonce (12) ||
ciphertext || tag (16), so ``body_len = len(codec body) + OVERHEAD``. The AAD binds every
header field (swarm, round, node, base hash, codec, flags, n_params, n_samples, epoch), so a
ciphertext re-framed under any other header does not open; the signature covers the
ciphertext, so it can be checked before any decryption. An unsealed frame has no epoch
field and is byte-identical to frames made before sealing existed (still version 1).

Invariants
----------
- ``decode_envelope`` takes untrusted bytes and raises only ``EnvelopeError``: the size
  limit is checked before any parsing, then every field, then that nothing trails the
  signature. A frame it returns is well formed, but not yet trusted: call
  ``Envelope.verify`` with the sender's enrolled key, and ``decode_delta`` for the numbers.
- Arrays cross the wire as raw little-endian bytes, dtype fixed by the codec id, length by
  ``n_params``; never pickle network data. The codec body is ``quantize``'s (or masked
  ring elements, ``CODEC_MASKED``): self-describing given (codec id, flags, n_params), so
  one swarm can mix codecs; ``body_len`` is bounded (plus ``OVERHEAD`` when sealed) before
  anything is decoded. A sealed body needs the data key: ``open_envelope`` (after
  ``verify``) gives the plaintext codec body, which ``decode_delta`` takes as ``body``.
- Misuse by our own code (e.g. an unknown codec) raises ValueError/TypeError; bad input
  from a peer raises EnvelopeError (a ValueError subclass) and nothing else.

Pure: no sockets, no threads, no logging.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from edge_swarm.swarm import quantize, ring_codec
from edge_swarm.swarm.topics import TopicError, validate_id, validate_round

__all__ = [
    "CODEC_FLOAT16",
    "CODEC_FLOAT32",
    "CODEC_INT4",
    "CODEC_INT8",
    "CODEC_MASKED",
    "CODEC_SIGN1",
    "DEFAULT_MAX",
    "FLAG_SEALED",
    "FLAG_TOPK",
    "MAGIC",
    "SIGNATURE_LEN",
    "VERSION",
    "Envelope",
    "EnvelopeError",
    "EnvelopeHeader",
    "decode_delta",
    "decode_envelope",
    "encode_envelope",
    "envelope_aad",
    "open_envelope",
]

MAGIC = b"ESWD"
VERSION = 1

CODEC_FLOAT32 = quantize.CODEC_IDS["float32"]
"""Raw little-endian float32, 4 bytes a parameter."""
CODEC_FLOAT16 = quantize.CODEC_IDS["float16"]
CODEC_INT8 = quantize.CODEC_IDS["int8"]
CODEC_INT4 = quantize.CODEC_IDS["int4"]
CODEC_SIGN1 = quantize.CODEC_IDS["sign1"]
# Secure aggregation's masked ring elements (swarm/ring_codec.py): decode_delta gives uint32.
CODEC_MASKED, CODEC_MASKED24 = ring_codec.CODEC_MASKED, ring_codec.CODEC_MASKED24

FLAG_TOPK = quantize.FLAG_TOPK
"""The body is a top-k sparse encoding (indices + values) of the codec."""
FLAG_SEALED = 0x80
"""The body is the AES-256-GCM sealed blob of the codec body; the header carries ``epoch``.

An envelope flag, not a codec one: ``quantize`` never sees it (``EnvelopeHeader.codec_flags``).
"""

SIGNATURE_LEN = 64
"""Ed25519 signature length; the only non-zero signature length accepted."""

DEFAULT_MAX = 16 * 1024 * 1024
"""Largest frame ``decode_envelope`` accepts by default (4M float32 parameters)."""

_U32_MAX = 2**32 - 1
_HASH_LEN = 32
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_FIXED_HEAD = struct.Struct("<4sBBB")  # magic, version, codec, flags
_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_COUNTS = struct.Struct("<III")  # n_params, n_samples, body_len


class EnvelopeError(ValueError):
    """A frame from the network that is malformed, too large or unsupported."""


# --------------------------------------------------------------------------- codecs

_CODEC_IDS = frozenset({*quantize.CODEC_IDS.values(), *ring_codec.WIDTH})
_SUPPORTED_FLAGS = FLAG_TOPK | FLAG_SEALED


def _payload() -> ModuleType:
    # Imported lazily: cryptography is slow to import on a Pi, and unsealed frames never need it.
    from edge_swarm.trust import payload

    return payload


def _max_body(codec: int, flags: int, n_params: int) -> int:
    """The longest body a frame with these fields may carry (codec maximum, plus seal overhead)."""
    width, plain = ring_codec.WIDTH.get(codec), flags & ~FLAG_SEALED
    limit = width * n_params if width else quantize.max_body_len(codec, plain, n_params)
    return limit + _payload().OVERHEAD if flags & FLAG_SEALED else limit


# --------------------------------------------------------------------------- header


def _check_u32(value: object, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _U32_MAX:
        raise ValueError(f"{what} must be an int in [{minimum}, {_U32_MAX}], got {value!r}")
    return value


@dataclass(frozen=True)
class EnvelopeHeader:
    """The header of a delta envelope, validated when built (ValueError on bad fields).

    ``base_hash`` is the sha256 of the base model as 64 lowercase hex characters; ``codec``
    an implemented codec id; ``flags`` a combination of ``FLAG_TOPK`` and ``FLAG_SEALED``;
    ``n_params`` >= 1; ``round`` and ``n_samples`` fit in u32. ``epoch`` is the key epoch of
    the data key a sealed body is sealed under: set (a u32) exactly when ``FLAG_SEALED`` is,
    so a header can never claim to be sealed without saying which key opens it.
    """

    swarm: str
    round: int
    node: str
    base_hash: str
    codec: int
    n_params: int
    n_samples: int
    flags: int = 0
    epoch: int | None = None

    def __post_init__(self) -> None:
        try:
            validate_id(self.swarm, "swarm id")
            validate_id(self.node, "node id")
            validate_round(self.round)
        except TopicError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(self.base_hash, str) or _HEX64_RE.fullmatch(self.base_hash) is None:
            raise ValueError(f"base_hash must be 64 lowercase hex chars, got {self.base_hash!r}")
        if isinstance(self.codec, bool) or self.codec not in _CODEC_IDS:
            raise ValueError(f"unsupported codec id {self.codec!r}")
        if isinstance(self.flags, bool) or not isinstance(self.flags, int):
            raise ValueError(f"flags must be an int, got {self.flags!r}")
        if self.flags & ~_SUPPORTED_FLAGS:
            raise ValueError(f"unsupported flags {self.flags:#04x}")
        _check_u32(self.n_params, "n_params", minimum=1)
        _check_u32(self.n_samples, "n_samples")
        if self.sealed:
            if self.epoch is None:
                raise ValueError("a sealed header needs an epoch")
            _check_u32(self.epoch, "epoch")
        elif self.epoch is not None:
            raise ValueError("an epoch is only meaningful with FLAG_SEALED")

    @property
    def sealed(self) -> bool:
        """Whether the body is a sealed blob (``FLAG_SEALED``) rather than a codec body."""
        return bool(self.flags & FLAG_SEALED)

    @property
    def codec_flags(self) -> int:
        """The flags that describe the codec body, i.e. what ``quantize`` is given."""
        return self.flags & ~FLAG_SEALED

    @property
    def max_body_len(self) -> int:
        """The longest body this header allows on the wire, in bytes.

        The codec's maximum for ``codec_flags`` and ``n_params``, plus ``OVERHEAD`` when
        sealed (the body on the wire is then the sealed blob).
        """
        return _max_body(self.codec, self.flags, self.n_params)


def envelope_aad(header: EnvelopeHeader) -> bytes:
    """The AAD a sealed header's body is sealed under: ``payload.delta_aad`` of its fields.

    Sender and receiver both derive it from the header alone, so the ciphertext opens only
    under the exact header it was sealed for. Raises ValueError for an unsealed header.
    """
    if not isinstance(header, EnvelopeHeader):
        raise TypeError("header must be an EnvelopeHeader")
    if not header.sealed or header.epoch is None:
        raise ValueError("only a sealed header has an AAD")
    return _payload().delta_aad(
        header.swarm,
        header.round,
        header.node,
        header.base_hash,
        header.codec,
        header.flags,
        header.n_params,
        header.n_samples,
        header.epoch,
    )


def _pack_header(h: EnvelopeHeader, body_len: int) -> bytes:
    swarm = h.swarm.encode("ascii")
    node = h.node.encode("ascii")
    return b"".join(
        [
            _FIXED_HEAD.pack(MAGIC, VERSION, h.codec, h.flags),
            _U8.pack(len(swarm)),
            swarm,
            _U32.pack(h.round),
            _U8.pack(len(node)),
            node,
            bytes.fromhex(h.base_hash),
            _COUNTS.pack(h.n_params, h.n_samples, body_len),
            _U32.pack(h.epoch) if h.epoch is not None else b"",
        ]
    )


# --------------------------------------------------------------------------- encode


def encode_envelope(
    header: EnvelopeHeader,
    delta: np.ndarray | bytes,
    sign: Callable[[bytes], bytes] | None,
    data_key: bytes | None = None,
) -> bytes:
    """Frame a delta under ``header``, signed by ``sign`` if given, sealed if the header is.

    ``delta`` is either a codec body already made by ``quantize.encode`` (or by error
    feedback) for the header's codec and ``codec_flags``, or a 1-D float32 array of
    ``n_params`` finite values, which only a float32 header without codec flags takes.
    ``sign`` takes the bytes to sign and returns a 64-byte Ed25519 signature.

    A sealed header needs ``data_key`` (the 32-byte data key of ``header.epoch``): the codec
    body is checked against the codec's maximum, then replaced by its sealed blob under
    ``envelope_aad(header)``, and the signature covers that ciphertext. A key for an unsealed
    header is refused rather than ignored, so a caller never believes it sent ciphertext when
    it sent plaintext.

    Raises ValueError on misuse (wrong shape, length or codec, non-finite values, a body
    longer than the codec allows, a bad signature length, a missing, superfluous or
    malformed data key).
    """
    if not isinstance(header, EnvelopeHeader):
        raise TypeError("header must be an EnvelopeHeader")
    if header.sealed and data_key is None:
        raise ValueError("a sealed header needs the data key of its epoch")
    if not header.sealed and data_key is not None:
        raise ValueError("a data key was given for an unsealed header; set FLAG_SEALED")
    if isinstance(delta, (bytes, bytearray, memoryview)):
        body = bytes(delta)
    else:
        if header.codec != CODEC_FLOAT32 or header.codec_flags:
            raise ValueError("a quantized envelope takes its body from quantize.encode")
        arr = np.asarray(delta)
        if arr.ndim != 1 or arr.shape[0] != header.n_params:
            raise ValueError(f"delta must have shape ({header.n_params},), got {arr.shape}")
        # Never pickle network data: the body is raw little-endian bytes of a fixed dtype.
        with np.errstate(over="ignore"):  # an overflow becomes inf, which encode refuses
            f32 = arr.astype(np.float32)
        body = quantize.encode(f32, quantize.CodecSpec("float32"))
    codec_max = _max_body(header.codec, header.codec_flags, header.n_params)
    if len(body) > codec_max:
        raise ValueError(f"a body of {len(body)} bytes exceeds {codec_max}")
    if data_key is not None:
        body = _payload().seal(body, data_key, envelope_aad(header))
    signed = _pack_header(header, len(body)) + body
    signature = b"" if sign is None else bytes(sign(signed))
    if sign is not None and len(signature) != SIGNATURE_LEN:
        raise ValueError(f"signature must be {SIGNATURE_LEN} bytes, got {len(signature)}")
    return signed + _U8.pack(len(signature)) + signature


# --------------------------------------------------------------------------- decode


@dataclass(frozen=True)
class Envelope:
    """A well-formed frame, not yet trusted: verify it before using it.

    ``body`` is the codec body, or for a sealed header the sealed blob (``open_envelope``
    gives the plaintext). ``signed_bytes`` are the bytes the signature covers, ``sha256`` the
    lowercase hex digest of the whole frame (what a ledger ``delta_commit`` names).
    """

    header: EnvelopeHeader
    body: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    signed_bytes: bytes = field(repr=False)
    sha256: str

    @property
    def is_signed(self) -> bool:
        """Whether the frame carries a signature at all."""
        return bool(self.signature)

    def verify(self, public_hex: str) -> bool:
        """Check the Ed25519 signature against a raw 32-byte public key given as hex.

        Returns True only for a valid signature; False for an unsigned frame, a malformed key
        or a bad signature. Never raises.
        """
        if not self.signature:
            return False
        # ledger_lite's verifier: OpenSSL (cached per key), about 6x pycryptodome's speed.
        from ledger_lite.keys import verify

        return verify(public_hex, self.signed_bytes, self.signature)


class _Reader:
    """Sequential reader over a frame; every short read raises EnvelopeError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise EnvelopeError(f"truncated frame reading {what} at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, st: struct.Struct, what: str) -> tuple[int, ...]:
        return st.unpack(self.take(st.size, what))

    def short_str(self, what: str) -> str:
        (n,) = self.unpack(_U8, f"{what} length")
        raw = self.take(n, what)
        try:
            text = raw.decode("ascii")
            return validate_id(text, what)
        except (UnicodeDecodeError, TopicError):
            raise EnvelopeError(f"invalid {what}: {raw[:64]!r}") from None


def _parse_head(r: _Reader) -> tuple[int, int, str, int, str, str, int, int, int, int | None]:
    magic, version, codec, flags = r.unpack(_FIXED_HEAD, "fixed header")
    if magic != MAGIC:
        raise EnvelopeError(f"bad magic {magic!r}")
    if version != VERSION:
        raise EnvelopeError(f"unsupported version {version}")
    if codec not in _CODEC_IDS:
        raise EnvelopeError(f"unsupported codec id {codec}")
    if flags & ~_SUPPORTED_FLAGS:
        raise EnvelopeError(f"unsupported flags {flags:#04x}")
    swarm = r.short_str("swarm id")
    (rnd,) = r.unpack(_U32, "round")
    node = r.short_str("node id")
    base_hash = r.take(_HASH_LEN, "base hash").hex()
    n_params, n_samples, body_len = r.unpack(_COUNTS, "sizes")
    epoch = r.unpack(_U32, "epoch")[0] if flags & FLAG_SEALED else None
    return codec, flags, swarm, rnd, node, base_hash, n_params, n_samples, body_len, epoch


def decode_envelope(data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX) -> Envelope:
    """Parse a frame from the network.

    Checks, in order: type and size (``len(data) > max_size`` is refused before parsing),
    magic, version, codec, flags, ids, that ``body_len`` matches the codec and ``n_params``
    (plus the seal overhead when sealed), signature length (0 or 64) and that nothing trails
    the frame. Returns an Envelope whose signature is NOT yet checked and whose sealed body,
    if any, is not yet opened. Raises only EnvelopeError.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"frame must be bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise EnvelopeError(f"frame of {len(data)} bytes exceeds limit {max_size}")
    try:
        return _decode(bytes(data))
    except EnvelopeError:
        raise
    except Exception as exc:  # noqa: BLE001 - belt and braces: decode raises one error type
        raise EnvelopeError(f"malformed frame: {exc!r}") from None


def _decode(data: bytes) -> Envelope:
    r = _Reader(data)
    codec, flags, swarm, rnd, node, base_hash, n_params, n_samples, body_len, epoch = _parse_head(r)
    if n_params < 1:
        raise EnvelopeError("n_params is 0")
    limit = _max_body(codec, flags, n_params)
    if body_len > limit:
        raise EnvelopeError(f"body_len {body_len} exceeds {limit} for {n_params} params")
    if flags & FLAG_SEALED and body_len < _payload().OVERHEAD:
        raise EnvelopeError(f"sealed body_len {body_len} is shorter than the seal overhead")
    body = r.take(body_len, "body")
    signed_end = r.pos
    (sig_len,) = r.unpack(_U8, "signature length")
    if sig_len not in (0, SIGNATURE_LEN):
        raise EnvelopeError(f"unsupported signature length {sig_len}")
    signature = r.take(sig_len, "signature")
    if r.pos != len(data):
        raise EnvelopeError(f"{len(data) - r.pos} trailing bytes after the signature")
    try:
        header = EnvelopeHeader(
            swarm, rnd, node, base_hash, codec, n_params, n_samples, flags, epoch
        )
    except ValueError as exc:
        raise EnvelopeError(f"invalid header: {exc}") from None
    return Envelope(
        header=header,
        body=body,
        signature=signature,
        signed_bytes=data[:signed_end],
        sha256=hashlib.sha256(data).hexdigest(),
    )


def open_envelope(env: Envelope, data_key: bytes) -> bytes:
    """The plaintext codec body of a (verified) sealed envelope; ``env.body`` if unsealed.

    ``data_key`` is the 32-byte data key of ``env.header.epoch``. A blob that does not open
    (wrong key or epoch, a ciphertext moved under another header, any flipped byte) raises
    EnvelopeError starting "undecryptable", and nothing else; a malformed key is misuse
    (ValueError/TypeError). Whether an unsealed envelope is acceptable at all is the
    caller's policy: check ``env.header.sealed``.
    """
    if not isinstance(env, Envelope):
        raise TypeError("env must be an Envelope")
    h = env.header
    if not h.sealed:
        return env.body
    payload = _payload()
    try:
        return payload.open_sealed(env.body, data_key, envelope_aad(h), max_len=h.max_body_len)
    except payload.TrustError as exc:
        raise EnvelopeError(f"undecryptable sealed body (epoch {h.epoch}): {exc}") from None


def decode_delta(env: Envelope, expected_n_params: int, body: bytes | None = None) -> np.ndarray:
    """Decode the codec body of a (verified) envelope into a fresh float32 array (uint32
    ring elements for ``CODEC_MASKED``). ``body``: the plaintext from ``open_envelope``;
    None means ``env.body``, which a sealed envelope refuses (it is ciphertext). Raises
    EnvelopeError for another ``n_params``, a body that does not decode, or non-finite values.
    """
    h = env.header
    if body is None:
        if h.sealed:
            raise EnvelopeError("sealed envelope: open it first")
        body = env.body
    if h.n_params != expected_n_params:
        raise EnvelopeError(f"delta has {h.n_params} params, model has {expected_n_params}")
    ring = ring_codec.unpack(body, h.codec, h.n_params, h.codec_flags)
    if ring is not None:
        return ring
    try:
        delta = quantize.decode(body, h.codec, h.codec_flags, h.n_params)
    except quantize.CodecError as exc:
        raise EnvelopeError(f"bad codec body: {exc}") from None
    if not np.all(np.isfinite(delta)):
        raise EnvelopeError("delta holds NaN or Inf")
    return delta
