"""Trust: device keys, payload encryption and freshness.

- ``payload``: AES-256-GCM sealing of payloads bound to their header (AAD), AAD builders,
  and ``ReplayGuard``. ``TrustError`` is the package's error for bad input from a peer.
- ``keyring``: device X25519 encryption keys (``EncryptionKey``), data-key wrapping
  (``wrap_key``/``unwrap_key``), key epochs (``KeyEpoch``, ``new_epoch``) and the
  ``Keyring`` of data keys a node can open.

Pure except ``EncryptionKey.save``/``load`` (owner-only key files).
"""

from edge_swarm.trust.keyring import (
    EncryptionKey,
    KeyEpoch,
    KeyFileError,
    Keyring,
    NotRecipientError,
    new_epoch,
    unwrap_key,
    wrap_context,
    wrap_key,
)
from edge_swarm.trust.payload import (
    ReplayGuard,
    TrustError,
    build_aad,
    delta_aad,
    open_sealed,
    seal,
    sealed_nonce,
)

__all__ = [
    "EncryptionKey",
    "KeyEpoch",
    "KeyFileError",
    "Keyring",
    "NotRecipientError",
    "ReplayGuard",
    "TrustError",
    "build_aad",
    "delta_aad",
    "new_epoch",
    "open_sealed",
    "seal",
    "sealed_nonce",
    "unwrap_key",
    "wrap_context",
    "wrap_key",
]
