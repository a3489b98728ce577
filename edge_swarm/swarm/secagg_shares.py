"""Secure aggregation, part two: the threshold shares of self seeds and the two wire messages.

How it works
------------
Each round an agent draws a fresh 16-byte self seed ``b`` (``secagg.new_self_seed``) and
splits it with Shamir's scheme over GF(2^128) (pycryptodome) among its *holders*: its
neighbours and itself, sorted, holder ``k`` (0-based) getting share index ``k + 1``. A share
travels as 17 bytes, ``index || value``, so it names its own x-coordinate and any
``threshold`` of them rebuild the seed (``split_seed`` / ``combine_seed``).

A share for neighbour ``j`` is sealed with AES-256-GCM under the pair's ``share_key`` (from
``secagg.pair_keys``) and an AAD binding swarm, round, sender and recipient
(``share_aad``), so the committee that relays it cannot read it, and a share cannot be
replayed into another round or turned back to its sender::

    blob = nonce (12, random) || ciphertext (17) || tag (16)          (45 bytes)

``ShareBundle`` carries one blob from ``sender`` to ``recipient`` through the committee;
``Reveal`` is what an agent sends once the ledger has fixed the included set: the shares it
holds of included agents' self seeds and the pair mask seeds of its edges that cross the
cut (``secagg.needed_reveals``).

Invariants
----------
- A message has one spelling: ``to_bytes`` writes canonical JSON (sorted keys, lowercase
  hex); ``from_bytes`` refuses anything ``to_bytes`` would not write back byte for byte, so
  a signature over the bytes covers exactly one value.
- ``from_bytes``, ``combine_seed`` and ``open_share`` take untrusted input and raise only
  ``SecAggError``; every length and count is bounded before any work is done.
- ``combine_seed`` uses exactly ``threshold`` shares (pycryptodome's contract) and, when
  more are given, rebuilds the seed from a second subset and refuses if the two disagree:
  a holder that lies about its share is detected, not silently folded into the sum.

Pure: no sockets, no threads, no logging. pycryptodome is imported inside the two Shamir
functions only (the rest of the module needs ``cryptography`` alone).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from edge_swarm.swarm.topics import TopicError, validate_id, validate_round
from ledger_lite.canonical import canonical_bytes, parse_json
from ledger_lite.errors import DecodeError
from ledger_lite.libcrypto import aesgcm_open, aesgcm_seal

__all__ = [
    "MAX_HOLDERS",
    "MAX_MESSAGE",
    "PAIR_SEED_LEN",
    "REVEAL_TYPE",
    "SEALED_LEN",
    "SEED_LEN",
    "SHARE_BUNDLE_TYPE",
    "SHARE_LEN",
    "Reveal",
    "SecAggError",
    "ShareBundle",
    "combine_seed",
    "open_share",
    "seal_share",
    "share_aad",
    "split_seed",
]

SEED_LEN = 16
"""Bytes of a self seed: the secret size pycryptodome's Shamir scheme handles."""
SHARE_LEN = 1 + SEED_LEN
"""Bytes of one share: the holder's index (1..255), then the 16-byte value."""
PAIR_SEED_LEN = 32
"""Bytes of a pairwise mask seed (``PairKeys.mask_seed``)."""
SEALED_LEN = 12 + SHARE_LEN + 16
"""Bytes of a sealed share: nonce, ciphertext, GCM tag (45)."""
MAX_HOLDERS = 255
"""Most holders of one seed: a share index is one byte and index 0 would be the secret."""
MAX_MESSAGE = 64 * 1024
"""Default bound on an encoded message; a ``Reveal`` at degree 14 is about 2 KiB."""
SHARE_BUNDLE_TYPE = "edge-swarm/secagg-share/v1"
REVEAL_TYPE = "edge-swarm/secagg-reveal/v1"

_AAD_DOMAIN = b"edge-swarm/secagg/share-aad/v1\0"
_KEY_LEN = 32
_NONCE_LEN = 12


class SecAggError(ValueError):
    """A secure-aggregation value that does not hold together: bad input from a peer, too
    few shares or seeds to unmask, or misuse by our own code (the message says which)."""


# --------------------------------------------------------------------------- shares


def split_seed(seed: bytes, holders: Sequence[str], threshold: int) -> dict[str, bytes]:
    """Split the 16-byte ``seed`` among ``holders`` so that any ``threshold`` rebuild it.

    Holders are sorted; the ``k``-th (0-based) gets the 17-byte share ``bytes([k + 1]) +
    value``. Fewer than ``threshold`` shares reveal nothing about the seed. With
    ``threshold == 1`` every share *is* the seed (only sensible for a one-agent swarm).
    Raises SecAggError on a seed that is not 16 bytes, holders that are not 1..255 unique
    valid ids, or a threshold outside ``1..len(holders)``.
    """
    from Crypto.Protocol.SecretSharing import Shamir  # pycryptodome: only where needed

    if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
        raise SecAggError(f"a self seed is {SEED_LEN} bytes")
    ordered = sorted(set(_ids(holders, "holder")))
    if len(ordered) != len(holders):
        raise SecAggError("holders must be unique")
    if not 1 <= len(ordered) <= MAX_HOLDERS:
        raise SecAggError(f"a seed needs 1..{MAX_HOLDERS} holders, not {len(ordered)}")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise SecAggError(f"threshold must be an int, not {threshold!r}")
    if not 1 <= threshold <= len(ordered):
        raise SecAggError(f"threshold {threshold} is outside 1..{len(ordered)} holders")
    pieces = Shamir.split(threshold, len(ordered), seed, ssss=False)
    return {h: bytes([idx]) + value for h, (idx, value) in zip(ordered, pieces, strict=True)}


def combine_seed(shares: Iterable[bytes], threshold: int) -> bytes:
    """Rebuild a self seed from 17-byte shares (any order; exact duplicates are ignored).

    Raises SecAggError on a malformed share (wrong size, index 0), two different values
    for one index, fewer than ``threshold`` distinct indices, or, when more than
    ``threshold`` are given, two subsets that rebuild different seeds (a lying holder, or
    a threshold other than the one the seed was split with).
    """
    from Crypto.Protocol.SecretSharing import Shamir

    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise SecAggError(f"threshold must be an int >= 1, not {threshold!r}")
    points: dict[int, bytes] = {}
    for share in shares:
        if not isinstance(share, (bytes, bytearray)) or len(share) != SHARE_LEN:
            raise SecAggError(f"a share is {SHARE_LEN} bytes")
        idx, value = share[0], bytes(share[1:])
        if idx == 0:
            raise SecAggError("share index 0 is not a share")
        if points.setdefault(idx, value) != value:
            raise SecAggError(f"two different shares claim index {idx}")
        if len(points) > MAX_HOLDERS:  # unreachable with 1-byte indices; a cheap guard
            raise SecAggError("too many shares")
    if len(points) < threshold:
        raise SecAggError(f"{len(points)} distinct shares, {threshold} needed")
    ordered = sorted(points.items())
    seed = Shamir.combine(ordered[:threshold], ssss=False)
    if len(ordered) > threshold and Shamir.combine(ordered[-threshold:], ssss=False) != seed:
        raise SecAggError("the shares do not lie on one polynomial (a bad share?)")
    return seed


# --------------------------------------------------------------------------- sealing


def share_aad(swarm: str, round_no: int, sender: str, recipient: str) -> bytes:
    """The AAD sealing a share from ``sender`` to ``recipient`` in a round: a blob opens
    only in the round and direction it was made for. Raises SecAggError on a bad id."""
    fields = [_id(swarm, "swarm"), _id(sender, "sender"), _id(recipient, "recipient")]
    out = bytearray(_AAD_DOMAIN)
    out += struct.pack(">Q", _round(round_no))
    for f in fields:
        raw = f.encode("ascii")  # ids are [A-Za-z0-9_.-]{1,64}
        out += bytes([len(raw)]) + raw
    return bytes(out)


def seal_share(share: bytes, share_key: bytes, *, aad: bytes) -> bytes:
    """Encrypt a 17-byte share for its holder: ``nonce || ciphertext || tag`` (45 bytes).
    The nonce is random: the pair's key seals one share each way per round."""
    if not isinstance(share, bytes) or len(share) != SHARE_LEN:
        raise SecAggError(f"a share is {SHARE_LEN} bytes")
    nonce = os.urandom(_NONCE_LEN)
    return nonce + aesgcm_seal(_key(share_key), nonce, share, _aad(aad))


def open_share(blob: bytes, share_key: bytes, *, aad: bytes) -> bytes:
    """Decrypt a sealed share. Raises SecAggError on a blob of the wrong size, or one that
    does not open under this key and AAD (tampered, misrouted, another round)."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) != SEALED_LEN:
        raise SecAggError(f"a sealed share is {SEALED_LEN} bytes")
    blob = bytes(blob)
    share = aesgcm_open(_key(share_key), blob[:_NONCE_LEN], blob[_NONCE_LEN:], _aad(aad))
    if share is None:
        raise SecAggError("sealed share does not open (bad tag)")
    return share


def _key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != _KEY_LEN:
        raise SecAggError(f"a share key is {_KEY_LEN} bytes")
    return key


def _aad(aad: bytes) -> bytes:
    if not isinstance(aad, bytes):
        raise SecAggError("aad must be bytes")
    return aad


# --------------------------------------------------------------------------- messages


def _id(value: object, what: str) -> str:
    try:
        return validate_id(value, what)
    except TopicError as exc:
        raise SecAggError(str(exc)) from None


def _ids(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, (str, bytes)):  # a lone id would be iterated as characters
        raise SecAggError(f"{what}s must be an iterable of ids, not a single string")
    return [_id(v, what) for v in values]


def _round(value: object) -> int:
    try:
        return validate_round(value)
    except TopicError as exc:
        raise SecAggError(str(exc)) from None


def _check_bytes(value: object, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise SecAggError(f"{what} must be {size} bytes")
    return value


def _frozen_map(
    value: object, size: int, what: str, *, owner: str, share: bool
) -> Mapping[str, bytes]:
    if not isinstance(value, Mapping):
        raise SecAggError(f"{what} must be a mapping of id to bytes")
    if len(value) > MAX_HOLDERS:
        raise SecAggError(f"more than {MAX_HOLDERS} {what}")
    out: dict[str, bytes] = {}
    for j in sorted(value, key=str):
        blob = _check_bytes(value[j], size, f"{what}[{j!r:.70}]")
        _id(j, what)
        if share and blob[0] == 0:
            raise SecAggError(f"{what}[{j}] has share index 0")
        if not share and j == owner:
            raise SecAggError(f"{owner} reveals a pair seed with itself")
        out[j] = blob
    return MappingProxyType(out)


def _load(data: object, max_bytes: int, kind: str) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray)):
        raise SecAggError(f"a message is bytes, not {type(data).__name__}")
    if len(data) > max_bytes:
        raise SecAggError(f"message of {len(data)} bytes exceeds {max_bytes}")
    try:
        obj = parse_json(bytes(data), max_depth=3)
    except DecodeError as exc:
        raise SecAggError(str(exc)) from None
    if not isinstance(obj, dict) or obj.get("type") != kind:
        raise SecAggError(f"not a {kind} message")
    return obj


def _hex(value: object, size: int, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise SecAggError(f"{what} must be {2 * size} hex chars")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise SecAggError(f"{what} is not hex") from None
    if raw.hex() != value:  # uppercase or spaces: not the one spelling
        raise SecAggError(f"{what} is not lowercase hex")
    return raw


def _hex_map(value: object, size: int, what: str) -> dict[str, bytes]:
    if not isinstance(value, dict):
        raise SecAggError(f"{what} must be an object")
    if len(value) > MAX_HOLDERS:
        raise SecAggError(f"more than {MAX_HOLDERS} {what}")
    return {k: _hex(v, size, f"{what}[{k!r:.70}]") for k, v in value.items()}


def _canonical(msg: Any, data: bytes | bytearray) -> None:
    if msg.to_bytes() != bytes(data):
        raise SecAggError("message is not in canonical form")


@dataclass(frozen=True)
class ShareBundle:
    """One sealed share of ``sender``'s self seed for ``recipient``, relayed by the
    committee. Raises SecAggError on a bad field."""

    swarm: str
    round_no: int
    sender: str
    recipient: str
    blob: bytes

    def __post_init__(self) -> None:
        _id(self.swarm, "swarm")
        _round(self.round_no)
        _id(self.sender, "sender")
        _id(self.recipient, "recipient")
        if self.sender == self.recipient:
            raise SecAggError("an agent keeps its own share; it never sends it")
        _check_bytes(self.blob, SEALED_LEN, "blob")

    def aad(self) -> bytes:
        """The AAD the blob is sealed with (``share_aad`` of the bundle's fields)."""
        return share_aad(self.swarm, self.round_no, self.sender, self.recipient)

    def to_bytes(self) -> bytes:
        """Canonical JSON with the blob in lowercase hex."""
        return canonical_bytes(
            {
                "blob": self.blob.hex(),
                "recipient": self.recipient,
                "round": self.round_no,
                "sender": self.sender,
                "swarm": self.swarm,
                "type": SHARE_BUNDLE_TYPE,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = 1024) -> ShareBundle:
        """Parse untrusted bytes. Raises only SecAggError."""
        obj = _load(data, max_bytes, SHARE_BUNDLE_TYPE)
        if set(obj) != {"blob", "recipient", "round", "sender", "swarm", "type"}:
            raise SecAggError("share bundle fields are not exactly the expected ones")
        msg = cls(
            swarm=obj["swarm"],
            round_no=obj["round"],
            sender=obj["sender"],
            recipient=obj["recipient"],
            blob=_hex(obj["blob"], SEALED_LEN, "blob"),
        )
        _canonical(msg, data)
        return msg


@dataclass(frozen=True)
class Reveal:
    """What ``node`` reveals once the ledger fixed the round's included set: ``shares``
    maps an included agent ``j`` to the 17-byte share of ``b_j`` that ``node`` holds (its
    own share of its own seed under ``node``); ``pairs`` maps a neighbour ``j`` across the
    cut to the 32-byte mask seed ``s_node,j``. Both are read-only after construction.
    Raises SecAggError on a bad field."""

    swarm: str
    round_no: int
    node: str
    shares: Mapping[str, bytes]
    pairs: Mapping[str, bytes]

    def __post_init__(self) -> None:
        _id(self.swarm, "swarm")
        _round(self.round_no)
        _id(self.node, "node")
        shares = _frozen_map(self.shares, SHARE_LEN, "shares", owner=self.node, share=True)
        pairs = _frozen_map(self.pairs, PAIR_SEED_LEN, "pairs", owner=self.node, share=False)
        object.__setattr__(self, "shares", shares)
        object.__setattr__(self, "pairs", pairs)

    def to_bytes(self) -> bytes:
        """Canonical JSON with every share and seed in lowercase hex."""
        return canonical_bytes(
            {
                "node": self.node,
                "pairs": {j: s.hex() for j, s in self.pairs.items()},
                "round": self.round_no,
                "shares": {j: s.hex() for j, s in self.shares.items()},
                "swarm": self.swarm,
                "type": REVEAL_TYPE,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_MESSAGE) -> Reveal:
        """Parse untrusted bytes. Raises only SecAggError."""
        obj = _load(data, max_bytes, REVEAL_TYPE)
        if set(obj) != {"node", "pairs", "round", "shares", "swarm", "type"}:
            raise SecAggError("reveal fields are not exactly the expected ones")
        msg = cls(
            swarm=obj["swarm"],
            round_no=obj["round"],
            node=obj["node"],
            shares=_hex_map(obj["shares"], SHARE_LEN, "shares"),
            pairs=_hex_map(obj["pairs"], PAIR_SEED_LEN, "pairs"),
        )
        _canonical(msg, data)
        return msg
