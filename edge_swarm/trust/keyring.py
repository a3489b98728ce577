"""Device encryption keys, key epochs and the keyring of swarm data keys.

How it works
------------
Each device holds an X25519 key pair for encryption, separate from its Ed25519 signing key
(one key, one purpose: a signing key is never fed to a Diffie-Hellman and the two can be
rotated apart). Its public half is enrolled next to the signing key.

A *key epoch* ``e`` of a swarm is one random 32-byte data key (the AES-256-GCM key of
``payload.seal``) wrapped for each recipient alone::

    blob    = version 0x01 || ephemeral X25519 public (32) || ct (32) || tag (16)   (81 bytes)
    shared  = X25519(ephemeral private, recipient public)
    kek, iv = HKDF-SHA256(shared, salt=none,
                          info=label || ephemeral pub || recipient pub || context)[:32], [32:44]
    ct, tag = AES-256-GCM(kek, iv, data key, aad=b"")
    context = wrap_context(swarm, epoch, recipient id)

The ephemeral key is fresh for every wrap, so each (kek, iv) is used once and a fixed,
derived iv is safe (as in HPKE). Binding the swarm, epoch and recipient id in the HKDF info
means a blob opens only for the epoch and device it was made for. ``KeyEpoch`` carries the
blobs by node id; it travels as a dict (for a ledger entry) and is parsed from untrusted
input by ``KeyEpoch.from_dict``.

Revocation: a device revoked at epoch ``e`` is left out of epoch ``e + 1``'s recipients, so
it never holds the new data key and cannot read anything sealed under it.

Threat model
------------
- A wrap blob reveals nothing about the data key to anyone without the recipient's X25519
  private key; a flipped byte, another recipient's key or another context fails (TrustError).
- Anyone can wrap a key for a public key: a ``KeyEpoch`` is only as trustworthy as the
  channel that delivers it. Accept one only from an admin-signed (or coordinator-signed,
  per policy) ledger entry, never straight from MQTT.
- Not forward secret against a stolen device: its private key opens every epoch it was a
  recipient of (epochs are public on the ledger). Rotation limits the damage to the epochs
  before revocation.

Libraries: X25519 and AES-GCM come from the system's OpenSSL, which every Python on a device
already loads (``ledger_lite.libcrypto``: constant-time X25519 and AES, hardware AES where the
CPU has it); HKDF-SHA256 is two HMACs from ``hmac``. One library for the whole scheme (see
``payload.py`` for the AES-GCM measurements).

Files: ``EncryptionKey.save`` writes PKCS#8 PEM with mode 0600, atomically; ``load``
refuses a file group or other may access (``chmod 600``), as ssh does. Nothing else here
touches files, sockets or threads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from edge_swarm.trust.payload import KEY_LEN, TrustError, build_aad
from ledger_lite.entry import ID_RE
from ledger_lite.files import OpenToOthersError, read_private, write_private
from ledger_lite.keys import pem_of_seed, seed_of_fixed_pem
from ledger_lite.libcrypto import aesgcm_open, aesgcm_seal, hkdf_sha256, x25519, x25519_public

__all__ = [
    "MAX_RECIPIENTS",
    "PUBLIC_KEY_LEN",
    "WRAP_LEN",
    "EncryptionKey",
    "KeyEpoch",
    "KeyFileError",
    "Keyring",
    "NotRecipientError",
    "new_epoch",
    "unwrap_key",
    "wrap_context",
    "wrap_key",
]

PUBLIC_KEY_LEN = 32
"""Raw X25519 public key length, in bytes (64 hex characters)."""
WRAP_LEN = 1 + PUBLIC_KEY_LEN + KEY_LEN + 16
"""Length of a wrap blob, in bytes (81; 162 hex characters in a ``KeyEpoch``)."""
MAX_RECIPIENTS = 256
"""Most recipients in one epoch: keeps ``KeyEpoch.to_dict`` under a 64 KiB ledger entry."""

_WRAP_VERSION = 1
_HKDF_LABEL = b"edge-swarm/v1/key-wrap/x25519-hkdf-sha256-aes256gcm\x00"
_MAX_CONTEXT = 1024
_MAX_KEY_FILE = 16384
# RFC 8410 PKCS#8 v1 of an X25519 key (id-X25519, 1.3.101.110); its 32 bytes follow.
_X25519_PKCS8 = bytes.fromhex("302e020100300506032b656e04220420")
_U32_MAX = 2**32 - 1
_HEX_PUB_RE = re.compile(r"[0-9a-f]{64}")
_HEX_WRAP_RE = re.compile(rf"[0-9a-f]{{{2 * WRAP_LEN}}}")


class KeyFileError(TrustError):
    """A private key file that is missing, unreadable, too open (mode) or not a key."""


class NotRecipientError(TrustError):
    """This node is not among an epoch's recipients (revoked, or not yet enrolled)."""


# --------------------------------------------------------------------------- device key


class EncryptionKey:
    """A device's X25519 private key. Build with ``generate()``, ``from_bytes()``, ``load()``."""

    __slots__ = ("_private", "_public")

    def __init__(self, raw: bytes) -> None:
        """The key whose 32 raw private bytes are ``raw``; ValueError if not 32 bytes."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
            raise ValueError("an X25519 private key is 32 bytes")
        self._private = bytes(raw)
        self._public = x25519_public(self._private)

    @classmethod
    def generate(cls) -> EncryptionKey:
        """A fresh random key (the OS's CSPRNG; any 32 bytes are an X25519 private key)."""
        return cls(os.urandom(32))

    @classmethod
    def from_bytes(cls, raw: bytes) -> EncryptionKey:
        """The key whose 32 raw private bytes are ``raw``; ValueError if not 32 bytes."""
        return cls(raw)

    @property
    def private_bytes(self) -> bytes:
        """The 32 raw private bytes. Secret: never log or send them."""
        return self._private

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._public

    @property
    def public_hex(self) -> str:
        """The raw 32-byte public key as 64 lowercase hex characters (what is enrolled)."""
        return self._public.hex()

    def exchange(self, peer_public: bytes) -> bytes:
        """The X25519 shared secret with ``peer_public`` (32 raw bytes).

        Raises ValueError for a malformed or low-order peer key (an all-zero secret).
        """
        return x25519(self._private, peer_public)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key as PKCS#8 PEM, created with mode 0600 and moved into place
        atomically (a crash leaves either no file or the whole file).

        Raises FileExistsError if ``path`` exists and not ``overwrite``; OSError on I/O.
        """
        path = Path(path)
        pem = pem_of_seed(self.private_bytes, _X25519_PKCS8) + b"\n"  # as cryptography wrote it
        write_private(path, pem, overwrite=overwrite)  # never clobbers a key by accident

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EncryptionKey:
        """Read a key written by ``save`` (PEM) or a file holding 64 hex characters.

        Raises KeyFileError if the file is missing or unreadable, accessible by group or
        other (the message says to run ``chmod 600``), or does not hold an X25519 key.
        """
        path = Path(path)
        try:
            data = read_private(path, _MAX_KEY_FILE, "encryption key file")
        except OpenToOthersError as exc:
            raise KeyFileError(str(exc)) from None
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
        return cls._parse(data, path)

    @classmethod
    def _parse(cls, data: bytes, path: Path) -> EncryptionKey:
        text = data.strip()
        try:
            if text.startswith(b"-----BEGIN"):
                raw = seed_of_fixed_pem(text, _X25519_PKCS8)
                if raw is not None:
                    return cls.from_bytes(raw)
                # Another PKCS#8 form: cryptography's parser (2.6 MiB of imports on a device
                # that never needs it, issue 20).
                from cryptography.hazmat.primitives import serialization
                from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

                key = serialization.load_pem_private_key(text, password=None)
                if isinstance(key, X25519PrivateKey):
                    return cls(key.private_bytes_raw())
            elif len(text) == 64:
                return cls.from_bytes(bytes.fromhex(text.decode("ascii")))
        except (ValueError, TypeError, UnicodeDecodeError):
            pass
        raise KeyFileError(f"key file {path} does not hold an X25519 private key")

    def __repr__(self) -> str:
        return f"EncryptionKey(public_hex={self.public_hex[:16]}…)"


# --------------------------------------------------------------------------- wrapping


def wrap_context(swarm: str, epoch: int, node: str) -> bytes:
    """The context a data key is wrapped under: swarm id, epoch and recipient node id.

    Raises ValueError on misuse (ids outside ``[A-Za-z0-9_.-]{1,64}``, epoch not u32).
    """
    validate_id(swarm, "swarm id")
    validate_id(node, "node id")
    _check_epoch(epoch)
    return build_aad("key-wrap", swarm, epoch, node)


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a ledger id (``[A-Za-z0-9_.-]{1,64}``), else raise ValueError.

    The ledger's own rule (``ledger_lite.entry.ID_RE``), so trust needs nothing from ``swarm``.
    """
    if not isinstance(value, str) or ID_RE.fullmatch(value) is None:
        raise ValueError(f"invalid {what}: {value!r}")
    return value


def _check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= _U32_MAX:
        raise ValueError(f"epoch must be an int in [0, {_U32_MAX}], got {epoch!r}")
    return epoch


def _kek(shared: bytes, eph_pub: bytes, rcpt_pub: bytes, context: bytes) -> tuple[bytes, bytes]:
    okm = hkdf_sha256(shared, KEY_LEN + 12, info=_HKDF_LABEL + eph_pub + rcpt_pub + context)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def _check_context(context: object) -> bytes:
    if not isinstance(context, (bytes, bytearray)) or not 0 < len(context) <= _MAX_CONTEXT:
        raise ValueError(f"context must be 1..{_MAX_CONTEXT} bytes")
    return bytes(context)


def wrap_key(data_key: bytes, recipient_public_hex: str, context: bytes) -> bytes:
    """Wrap ``data_key`` (32 bytes) so only the holder of ``recipient_public_hex`` opens it.

    ``context`` (from ``wrap_context``) is bound into the key derivation; ``unwrap_key``
    needs the same bytes. Returns a ``WRAP_LEN``-byte blob. Uses a fresh ephemeral X25519
    key each call, so two wraps of one key differ. Raises ValueError on misuse (key not 32
    bytes, a public key that is not 64 lowercase hex characters or is of low order, an empty
    or oversized context).
    """
    if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != KEY_LEN:
        raise ValueError(f"data key must be {KEY_LEN} bytes")
    if not isinstance(recipient_public_hex, str) or not _HEX_PUB_RE.fullmatch(recipient_public_hex):
        raise ValueError("recipient public key must be 64 lowercase hex characters")
    context = _check_context(context)
    rcpt_pub = bytes.fromhex(recipient_public_hex)
    eph = EncryptionKey.generate()
    shared = eph.exchange(rcpt_pub)  # ValueError for a low-order point
    kek, iv = _kek(shared, eph.public_bytes, rcpt_pub, context)
    sealed = aesgcm_seal(kek, iv, bytes(data_key))
    return bytes([_WRAP_VERSION]) + eph.public_bytes + sealed


def unwrap_key(blob: bytes, private_key: EncryptionKey, context: bytes) -> bytes:
    """Open a blob made by ``wrap_key`` for ``private_key`` under ``context``.

    ``blob`` is untrusted: a wrong length or version, a bad ephemeral key, another
    recipient, another context or any flipped byte raises ``TrustError`` and nothing else.
    Returns the 32-byte data key. A bad ``private_key`` or ``context`` is misuse
    (TypeError/ValueError).
    """
    if not isinstance(private_key, EncryptionKey):
        raise TypeError("private_key must be an EncryptionKey")
    context = _check_context(context)
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) != WRAP_LEN:
        raise TrustError(f"a wrapped key is {WRAP_LEN} bytes")
    blob = bytes(blob)
    if blob[0] != _WRAP_VERSION:
        raise TrustError(f"unsupported key-wrap version {blob[0]}")
    eph_pub = blob[1 : 1 + PUBLIC_KEY_LEN]
    try:
        shared = private_key.exchange(eph_pub)
        kek, iv = _kek(shared, eph_pub, private_key.public_bytes, context)
        key = aesgcm_open(kek, iv, blob[1 + PUBLIC_KEY_LEN :])
    except ValueError:  # a low-order ephemeral key: cannot open either
        key = None
    if key is None:
        raise TrustError("wrapped key does not open for this device and context")
    return key


# --------------------------------------------------------------------------- epochs


@dataclass(frozen=True)
class KeyEpoch:
    """One epoch's data key, wrapped for each recipient: ``wrapped[node] = blob hex``.

    Validated when built (ValueError): ids match ``[A-Za-z0-9_.-]{1,64}``, ``epoch`` fits
    u32, 1..``MAX_RECIPIENTS`` recipients, each blob ``2 * WRAP_LEN`` lowercase hex
    characters. ``wrapped`` is stored as a read-only mapping sorted by node id.
    """

    swarm: str
    epoch: int
    wrapped: Mapping[str, str] = field(hash=False)

    def __post_init__(self) -> None:
        validate_id(self.swarm, "swarm id")
        _check_epoch(self.epoch)
        if not isinstance(self.wrapped, Mapping):
            raise ValueError("wrapped must be a mapping of node id to hex")
        if not 1 <= len(self.wrapped) <= MAX_RECIPIENTS:
            raise ValueError(f"an epoch has 1..{MAX_RECIPIENTS} recipients")
        for node, blob_hex in self.wrapped.items():
            validate_id(node, "node id")
            if not isinstance(blob_hex, str) or not _HEX_WRAP_RE.fullmatch(blob_hex):
                raise ValueError(f"wrapped key for {node} must be {2 * WRAP_LEN} hex chars")
        frozen = MappingProxyType(dict(sorted(self.wrapped.items())))
        object.__setattr__(self, "wrapped", frozen)

    @property
    def recipients(self) -> tuple[str, ...]:
        """The recipients' node ids, sorted."""
        return tuple(self.wrapped)

    def blob_for(self, node: str) -> bytes | None:
        """The wrap blob for ``node``, or None if it is not a recipient."""
        blob_hex = self.wrapped.get(node)
        return None if blob_hex is None else bytes.fromhex(blob_hex)

    def to_dict(self) -> dict[str, object]:
        """``{"swarm", "epoch", "wrapped": {node: hex}}``: JSON-ready, canonical-ready."""
        return {"swarm": self.swarm, "epoch": self.epoch, "wrapped": dict(self.wrapped)}

    @classmethod
    def from_dict(cls, obj: object) -> KeyEpoch:
        """Parse an untrusted dict (as from a ledger entry's JSON payload).

        Exactly the keys ``swarm``, ``epoch``, ``wrapped``; anything else, any bad type or
        value, or more than ``MAX_RECIPIENTS`` recipients raises ``TrustError`` only.
        """
        if not isinstance(obj, Mapping) or set(obj) != {"swarm", "epoch", "wrapped"}:
            raise TrustError("a key epoch is a dict with exactly swarm, epoch, wrapped")
        wrapped = obj["wrapped"]
        if not isinstance(wrapped, Mapping) or len(wrapped) > MAX_RECIPIENTS:
            raise TrustError(f"wrapped must be a dict of at most {MAX_RECIPIENTS} entries")
        try:
            return cls(obj["swarm"], obj["epoch"], dict(wrapped))
        except (ValueError, TypeError) as exc:
            raise TrustError(f"invalid key epoch: {exc}") from None


RandomBytes = Callable[[int], bytes]
"""A source of random bytes; ``os.urandom`` unless a test injects a seeded one."""


def new_epoch(
    swarm: str,
    epoch: int,
    recipients: Mapping[str, str],
    rng: RandomBytes = os.urandom,
) -> tuple[KeyEpoch, bytes]:
    """Draw a fresh data key and wrap it for each recipient (node id -> X25519 public hex).

    Returns ``(KeyEpoch, data_key)``; the caller publishes the epoch (signed, on the ledger)
    and may keep the data key if it is itself a recipient. ``rng`` draws only the data key;
    ephemeral wrap keys always come from OpenSSL. Raises ValueError on misuse (bad ids,
    keys or epoch, no recipients or more than ``MAX_RECIPIENTS``, ``rng`` not giving 32
    bytes).
    """
    if not isinstance(recipients, Mapping) or not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise ValueError(f"an epoch has 1..{MAX_RECIPIENTS} recipients")
    data_key = bytes(rng(KEY_LEN))
    if len(data_key) != KEY_LEN:
        raise ValueError(f"rng gave {len(data_key)} bytes, not {KEY_LEN}")
    wrapped = {
        node: wrap_key(data_key, public_hex, wrap_context(swarm, epoch, node)).hex()
        for node, public_hex in recipients.items()
    }
    return KeyEpoch(swarm, epoch, wrapped), data_key


# --------------------------------------------------------------------------- keyring


class Keyring:
    """The data keys one swarm member can open, by epoch; at most ``max_epochs`` newest.

    Keys live in memory only: on restart a node re-opens the epochs from the ledger with
    its device key. Not thread-safe; one owner drives it.
    """

    def __init__(self, swarm: str, max_epochs: int = 8) -> None:
        validate_id(swarm, "swarm id")
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be an int >= 1, got {max_epochs!r}")
        self.swarm = swarm
        self.max_epochs = max_epochs
        self._keys: dict[int, bytes] = {}

    def add(self, epoch: KeyEpoch, node_id: str, private_key: EncryptionKey) -> bytes:
        """Open ``node_id``'s blob in ``epoch`` with ``private_key``, keep and return the key.

        Raises ``NotRecipientError`` if ``node_id`` is not a recipient (revoked), and
        ``TrustError`` if the epoch is for another swarm, its blob does not open, or the
        epoch is already held with a different key. Re-adding the same epoch is a no-op.
        When more than ``max_epochs`` are held, the oldest is forgotten (possibly this one).
        """
        if not isinstance(epoch, KeyEpoch):
            raise TypeError("epoch must be a KeyEpoch")
        if epoch.swarm != self.swarm:
            raise TrustError(f"key epoch for swarm {epoch.swarm!r}, not {self.swarm!r}")
        blob = epoch.blob_for(node_id)
        if blob is None:
            raise NotRecipientError(f"{node_id} is not a recipient of epoch {epoch.epoch}")
        key = unwrap_key(blob, private_key, wrap_context(self.swarm, epoch.epoch, node_id))
        held = self._keys.get(epoch.epoch)
        if held is not None and held != key:
            raise TrustError(f"epoch {epoch.epoch} already holds a different data key")
        self._keys[epoch.epoch] = key
        while len(self._keys) > self.max_epochs:
            del self._keys[min(self._keys)]
        return key

    def key(self, epoch: int) -> bytes | None:
        """The data key of ``epoch``, or None if not held (never added, or forgotten)."""
        return self._keys.get(epoch)

    @property
    def current(self) -> int | None:
        """The newest epoch held, or None when empty."""
        return max(self._keys) if self._keys else None

    @property
    def epochs(self) -> tuple[int, ...]:
        """The epochs held, ascending."""
        return tuple(sorted(self._keys))

    def __repr__(self) -> str:
        return f"Keyring(swarm={self.swarm!r}, epochs={self.epochs})"
