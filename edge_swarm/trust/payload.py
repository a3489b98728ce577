"""Payload confidentiality and freshness: AES-256-GCM sealing, AAD builders, a replay guard.

How it works
------------
Every delta body (and any other parameter-bearing payload, such as the retained checkpoint)
is sealed with AES-256-GCM under the swarm's *data key* of the current key epoch (see
``keyring.py`` for how that key reaches each enrolled device and no one else)::

    sealed blob = nonce (12 random bytes) || ciphertext (len(body) bytes) || tag (16 bytes)

The associated data (AAD) is the header the blob travels under: swarm, round, node, base
model hash, codec, flags, sizes and key epoch. GCM authenticates it, so a ciphertext moved
under any other header (another round, node, swarm, base or epoch) fails to open. The
envelope's Ed25519 signature then covers header + sealed blob, i.e. the ciphertext.

``ReplayGuard`` remembers ``(node, round, nonce)`` of admitted messages and refuses
duplicates and rounds outside a window around the current round.

In the delta envelope (``swarm/codec.py``) a sealed frame sets an envelope flag ``SEALED``
and carries the key ``epoch`` (u32) in its header; its body is the sealed blob, so
``body_len = len(codec body) + OVERHEAD``, and the AAD is ``delta_aad`` of the header's
fields. Sender: quantize, ``seal`` under ``delta_aad``, frame, sign (the signature covers the
ciphertext). Receiver: size, frame, enrolled key + signature, ``ReplayGuard.check``, the
keyring's key for the epoch, ``open_sealed``, codec decode, finite values, then
``ReplayGuard.admit`` with ``sealed_nonce``.

Threat model
------------
- Protects against: a broker operator or anyone subscribed to the swarm's topics (they see
  ciphertext and header metadata only); a device revoked at epoch e (it holds no key for
  epochs > e, so it cannot read later rounds); an attacker who moves, truncates, flips or
  splices ciphertexts (every change fails the tag and raises ``TrustError``); replays of an
  earlier round's or an already-seen message (refused by ``ReplayGuard`` and by the AAD).
- Does not protect against: an enrolled, unrevoked device (it holds the data key and reads
  every delta of its epochs, by design: every participant merges every delta); inference of
  training data from deltas by such a participant; traffic analysis (sizes, timing, ids and
  rounds are in the clear); a compromised admin, who chooses the recipients of each epoch.
  Authenticity of a sender is the signature's job, not GCM's: every holder of the data key
  can seal, so verify the signature first.

Nonces: 96-bit random nonces are safe for up to 2**32 messages under one key (NIST SP
800-38D); a swarm seals one delta per node per round and rotates keys on revocation, many
orders of magnitude below that.

Library: AES-GCM comes from OpenSSL, the system's libcrypto that Python's ``hashlib`` and
``ssl`` already load, called through ``ledger_lite.libcrypto`` (which also supplies X25519
and Ed25519), so the whole scheme sits on one audited library and a device holds one copy
of it (``cryptography``'s own OpenSSL cost an agent 7.7 MiB, issue 20). Measured on this
project's x86 machines OpenSSL seals 4 MB at 8.6 GB/s (pycryptodome: 1.9 GB/s), and without
AES instructions, as on a Raspberry Pi 4, it uses its constant-time vector-permute AES (245
MB/s here with AES-NI masked) where pycryptodome falls back to table-based AES (147 MB/s,
and table lookups are a cache-timing target). The AEAD calls live in ``_encrypt``/
``_decrypt`` alone, so swapping the library is a two-function change.

Invariants
----------
- ``open_sealed`` takes untrusted bytes and raises only ``TrustError``; misuse by our own
  code (a key that is not 32 bytes, a nonce that is not 12) raises ValueError/TypeError.
- ``ReplayGuard.admit`` records a message; call it only once the message is authenticated
  (signature verified, blob opened), else a forgery could burn a genuine message's nonce.

Pure: no sockets, no threads, no files, no logging.
"""

from __future__ import annotations

import os
import re
import struct

from ledger_lite.libcrypto import aesgcm_open, aesgcm_seal

__all__ = [
    "DEFAULT_MAX_SEALED",
    "FUTURE_ROUND",
    "KEY_LEN",
    "NONCE_LEN",
    "OVERHEAD",
    "REPLAYED",
    "STALE_ROUND",
    "TAG_LEN",
    "TOO_MANY",
    "ReplayGuard",
    "TrustError",
    "build_aad",
    "delta_aad",
    "open_sealed",
    "seal",
    "sealed_nonce",
]

KEY_LEN = 32
"""AES-256 data key length, in bytes."""
NONCE_LEN = 12
"""GCM nonce length, in bytes (prepended to the ciphertext)."""
TAG_LEN = 16
"""GCM tag length, in bytes (appended to the ciphertext)."""
OVERHEAD = NONCE_LEN + TAG_LEN
"""Bytes a sealed blob adds to its plaintext: ``len(seal(b)) == len(b) + OVERHEAD``."""
DEFAULT_MAX_SEALED = 16 * 1024 * 1024 + OVERHEAD
"""Largest blob ``open_sealed`` accepts by default (the envelope's default frame limit)."""

_AAD_PREFIX = b"edge-swarm/aad/v1\x00"
_MAX_AAD_FIELD = 4096
_MAX_NONCE = 64
_U64_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


class TrustError(ValueError):
    """Bad input from a peer or the network: undecryptable, forged, malformed or replayed."""


# --------------------------------------------------------------------------- AEAD


def _check_key(data_key: object) -> bytes:
    if not isinstance(data_key, (bytes, bytearray, memoryview)):
        raise TypeError(f"data key must be bytes, got {type(data_key).__name__}")
    if len(data_key) != KEY_LEN:
        raise ValueError(f"data key must be {KEY_LEN} bytes, got {len(data_key)}")
    return bytes(data_key)


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _encrypt(key: bytes, nonce: bytes, body: bytes, aad: bytes) -> bytes:
    """ciphertext || tag."""
    return aesgcm_seal(key, nonce, body, aad)


def _decrypt(key: bytes, nonce: bytes, ct_and_tag: bytes, aad: bytes) -> bytes:
    """The plaintext; raises TrustError if the tag does not verify."""
    body = aesgcm_open(key, nonce, ct_and_tag, aad)
    if body is None:
        raise TrustError("sealed payload failed authentication (wrong key, AAD or data)")
    return body


def seal(body: bytes, data_key: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt and authenticate ``body`` under ``data_key``, bound to ``aad``.

    Returns ``nonce || ciphertext || tag`` (``len(body) + OVERHEAD`` bytes). ``nonce`` is
    drawn from ``os.urandom`` when None; pass one only in tests or golden vectors, and
    never reuse a nonce under one key. Raises TypeError/ValueError on misuse (non-bytes
    arguments, a key that is not 32 bytes, a nonce that is not 12 bytes).
    """
    key = _check_key(data_key)
    body = _check_bytes(body, "body")
    aad = _check_bytes(aad, "aad")
    nonce = os.urandom(NONCE_LEN) if nonce is None else _check_bytes(nonce, "nonce")
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    return nonce + _encrypt(key, nonce, body, aad)


def open_sealed(
    blob: bytes | bytearray | memoryview,
    data_key: bytes,
    aad: bytes,
    max_len: int = DEFAULT_MAX_SEALED,
) -> bytes:
    """Check and decrypt a blob made by ``seal``; returns the plaintext body.

    ``blob`` is untrusted: anything that is not bytes, longer than ``max_len`` (checked
    before any work), shorter than ``OVERHEAD``, or whose tag fails under ``data_key`` and
    ``aad`` raises ``TrustError`` and nothing else. A bad ``data_key`` (not 32 bytes) is
    misuse and raises ValueError/TypeError.
    """
    key = _check_key(data_key)
    aad = _check_bytes(aad, "aad")
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TrustError(f"sealed payload must be bytes, got {type(blob).__name__}")
    if len(blob) > max_len:
        raise TrustError(f"sealed payload of {len(blob)} bytes exceeds limit {max_len}")
    if len(blob) < OVERHEAD:
        raise TrustError(f"sealed payload of {len(blob)} bytes is shorter than {OVERHEAD}")
    data = bytes(blob)
    return _decrypt(key, data[:NONCE_LEN], data[NONCE_LEN:], aad)


def sealed_nonce(blob: bytes | bytearray | memoryview) -> bytes:
    """The 12-byte nonce of a sealed blob (its first bytes): the replay-guard nonce.

    Raises TrustError if ``blob`` is not bytes or too short to be sealed.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < OVERHEAD:
        raise TrustError("not a sealed payload")
    return bytes(blob[:NONCE_LEN])


# --------------------------------------------------------------------------- AAD


def _aad_field(value: object) -> bytes:
    # Typed and length-prefixed, so distinct field lists never encode to the same bytes.
    if isinstance(value, bool):
        raise TypeError("AAD fields are str, int or bytes, not bool")
    if isinstance(value, int):
        if not 0 <= value <= _U64_MAX:
            raise ValueError(f"AAD int field out of range: {value}")
        return b"i" + struct.pack("<Q", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        raise TypeError(f"AAD fields are str, int or bytes, got {type(value).__name__}")
    if len(raw) > _MAX_AAD_FIELD:
        raise ValueError(f"AAD field of {len(raw)} bytes exceeds {_MAX_AAD_FIELD}")
    tag = b"s" if isinstance(value, str) else b"b"
    return tag + struct.pack("<H", len(raw)) + raw


def build_aad(domain: str, *fields: str | int | bytes) -> bytes:
    """Canonical associated data for a sealed payload of kind ``domain``.

    ``prefix || domain || fields``, each field typed (str/int/bytes) and length-prefixed, so
    two different (domain, fields) lists never give the same bytes. Ints must fit u64;
    str/bytes fields are at most 4096 bytes. Raises TypeError/ValueError on misuse.
    """
    if not isinstance(domain, str) or not domain:
        raise ValueError("domain must be a non-empty str")
    return _AAD_PREFIX + _aad_field(domain) + b"".join(_aad_field(f) for f in fields)


def delta_aad(
    swarm: str,
    round: int,
    node: str,
    base_hash: str,
    codec: int,
    flags: int,
    n_params: int,
    n_samples: int,
    epoch: int,
) -> bytes:
    """The AAD of a sealed delta body: every header field it travels under, and the epoch.

    ``base_hash`` is 64 lowercase hex characters (bound as its 32 raw bytes); ``round``,
    ``n_params``, ``n_samples`` and ``epoch`` fit u32, ``codec`` and ``flags`` u8. Raises
    ValueError on misuse. Sender and receiver build it from the same header fields, so an
    envelope's ciphertext opens only under the header it was sealed for.
    """
    if not isinstance(base_hash, str) or _HEX64_RE.fullmatch(base_hash) is None:
        raise ValueError(f"base_hash must be 64 lowercase hex chars, got {base_hash!r}")
    for value, what, top in (
        (round, "round", _U32_MAX),
        (n_params, "n_params", _U32_MAX),
        (n_samples, "n_samples", _U32_MAX),
        (epoch, "epoch", _U32_MAX),
        (codec, "codec", 255),
        (flags, "flags", 255),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ValueError(f"{what} must be an int in [0, {top}], got {value!r}")
    return build_aad(
        "delta",
        swarm,
        round,
        node,
        bytes.fromhex(base_hash),
        codec,
        flags,
        n_params,
        n_samples,
        epoch,
    )


# --------------------------------------------------------------------------- freshness

REPLAYED = "replayed"
"""Reason: this (node, round, nonce) was admitted before."""
STALE_ROUND = "stale_round"
"""Reason: the round is older than the guard's window."""
FUTURE_ROUND = "future_round"
"""Reason: the round is further ahead of the current round than the guard allows."""
TOO_MANY = "too_many_nonces"
"""Reason: this node already used its quota of nonces in this round, or the guard is full."""


class ReplayGuard:
    """Remembers the ``(node, round, nonce)`` of admitted messages; refuses replays.

    A message is fresh when ``current - window <= round <= current + ahead`` and its
    ``(node, round, nonce)`` has not been admitted. ``current`` moves only through
    ``advance`` (from trusted ledger state, never from a message), which forgets rounds that
    fell out of the window. Memory is bounded by ``max_per_node`` nonces per node and round
    and ``max_entries`` in all. Not thread-safe; one owner drives it.
    """

    def __init__(
        self,
        window: int = 1,
        *,
        ahead: int = 1,
        current: int = 0,
        max_per_node: int = 8,
        max_entries: int = 65536,
    ) -> None:
        for value, what, low in (
            (window, "window", 0),
            (ahead, "ahead", 0),
            (current, "current", 0),
            (max_per_node, "max_per_node", 1),
            (max_entries, "max_entries", 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{what} must be an int >= {low}, got {value!r}")
        self.window = window
        self.ahead = ahead
        self.max_per_node = max_per_node
        self.max_entries = max_entries
        self._current = current
        self._seen: dict[int, dict[str, set[bytes]]] = {}
        self._count = 0

    @property
    def current(self) -> int:
        """The round the window is anchored at."""
        return self._current

    def __len__(self) -> int:
        """How many (node, round, nonce) triples are remembered."""
        return self._count

    def advance(self, round: int) -> None:
        """Move the window to ``round`` and forget rounds older than it.

        Raises ValueError if ``round`` is below the current round (rounds only go up).
        """
        if isinstance(round, bool) or not isinstance(round, int) or round < self._current:
            raise ValueError(f"cannot move the replay window from {self._current} to {round!r}")
        self._current = round
        for old in [r for r in self._seen if r < round - self.window]:
            self._count -= sum(len(n) for n in self._seen.pop(old).values())

    def check(self, node: str, round: int, nonce: bytes) -> str | None:
        """Why ``(node, round, nonce)`` would be refused (a reason constant), or None if fresh.

        Records nothing; safe to call on unauthenticated messages. ``round`` is an int and
        ``nonce`` 1..64 bytes (TypeError/ValueError otherwise: parse before you check).
        """
        nonce = _check_bytes(nonce, "nonce")
        if not 0 < len(nonce) <= _MAX_NONCE:
            raise ValueError(f"a replay nonce is 1..{_MAX_NONCE} bytes, got {len(nonce)}")
        if isinstance(round, bool) or not isinstance(round, int):
            raise TypeError(f"round must be an int, got {type(round).__name__}")
        if round < self._current - self.window:
            return STALE_ROUND
        if round > self._current + self.ahead:
            return FUTURE_ROUND
        nonces = self._seen.get(round, {}).get(node)
        if nonces is not None and bytes(nonce) in nonces:
            return REPLAYED
        if (nonces is not None and len(nonces) >= self.max_per_node) or (
            self._count >= self.max_entries
        ):
            return TOO_MANY
        return None

    def admit(self, node: str, round: int, nonce: bytes) -> str | None:
        """``check``, and record the triple if fresh. Returns the refusal reason or None.

        Call only for an authenticated message (signature verified, payload opened).
        """
        reason = self.check(node, round, nonce)
        if reason is None:
            self._seen.setdefault(round, {}).setdefault(node, set()).add(bytes(nonce))
            self._count += 1
        return reason
