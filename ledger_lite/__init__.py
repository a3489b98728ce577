"""ledger_lite: a small permissioned hash-chain ledger for edge swarms.

How it works. An author signs a transaction (`make_tx`): Ed25519 over the canonical JSON
bytes (`canonical_bytes`: sorted keys, no whitespace, UTF-8, bytes as hex) of its swarm,
kind, author, time in ms and payload. The orderer chains it into an `Entry` by adding the
height and the previous entry's hash; an entry's hash is the SHA-256 of the canonical
bytes of all eight fields, so each entry commits to the whole history before it.

The genesis entry (`make_genesis`) names the swarm, its admin public keys, its policy
(which role may append which kind; `DEFAULT_POLICY`) and the training parameters.
`LedgerState` is the fold of the chain: enrolled members, roles, keys, revocations, tip
and seen transaction ids; `validate` refuses (`errors.Refused`, with a stable reason code)
any entry at the wrong place, of an unknown kind or malformed payload, by an unknown,
revoked or expired author, by a role the policy does not allow, badly signed, or replayed.

`Ledger` = `SqliteStore` (WAL, one fsynced transaction per entry, re-verified on open)
plus that state: `submit(tx)` validates, appends and folds, under a lock. `verify_chain`
and `verify_file` re-check a whole chain; the ``ledger-lite`` command wraps them.
The package imports nothing from edge_swarm. Raft replication and Merkle proofs come later.
"""

from __future__ import annotations

from . import errors, keys
from .canonical import canonical_bytes, sha256_hex
from .entry import (
    DEFAULT_POLICY,
    GENESIS_PREV,
    KINDS,
    MAX_ENTRY_BYTES,
    ROLES,
    Entry,
    Tx,
    make_genesis,
    make_tx,
)
from .errors import CorruptStore, DecodeError, LedgerError, Refused
from .keys import SigningKey
from .ledger import Ledger
from .state import LedgerState, Member
from .store import SqliteStore
from .verify import VerifyReport, verify_chain, verify_file

# The submodule ledger_lite.verify shares this name; importing it bound the package
# attribute to the module, so bind the public name back to the signature check.
# (Import the module's contents with ``from ledger_lite.verify import ...``.)
verify = keys.verify

__all__ = [
    "DEFAULT_POLICY",
    "GENESIS_PREV",
    "KINDS",
    "MAX_ENTRY_BYTES",
    "ROLES",
    "CorruptStore",
    "DecodeError",
    "Entry",
    "Ledger",
    "LedgerError",
    "LedgerState",
    "Member",
    "Refused",
    "SigningKey",
    "SqliteStore",
    "Tx",
    "VerifyReport",
    "canonical_bytes",
    "errors",
    "make_genesis",
    "make_tx",
    "sha256_hex",
    "verify",
    "verify_chain",
    "verify_file",
]
