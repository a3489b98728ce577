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
The package imports nothing from edge_swarm.

Replication (`replica`, loaded on first use so that pysyncobj is needed only there):
`Replica(self_addr, peers, path, genesis)` is one gateway's copy of a ledger replicated by
Raft (pysyncobj). Any replica accepts `submit(tx, callback)` / `submit_sync(tx)`; the leader
orders; every replica validates each entry with `LedgerState` and appends it to its own
`SqliteStore`, together with the last applied Raft index, before acknowledging it and
calling `on_append`. A restarted replica replays its Raft journal (skipping what SQLite
already holds) and catches up from the leader's log or a pickle-free snapshot.

Merkle proofs (`merkle`, RFC 9162): `MerkleTree` over the entries' hashes in height order
answers `inclusion_proof(height, size)` and `consistency_proof(old, new)` for any size it
has reached; agents check them with the pure `verify_inclusion` / `verify_consistency`. A
gateway signs (swarm, size, root, time) as a `TreeHead` and sends a `ProofBundle`; the
agent runs `check_inclusion(bundle, entry_hash, gateway_key)` (`treehead`).

Anchors (`anchor`): a gateway keeps the head it acknowledged (size, root, signed) in
``ledger.anchor`` beside its ``ledger.sqlite``; a file that lost acknowledged entries (a
damaged WAL, a deleted file) is refused on open with `LostEntries`, and ``ledger-lite
recover`` (`recover`) rebuilds it from another replica's copy.
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
from .errors import AnchorError, CorruptStore, DecodeError, LedgerError, LostEntries, Refused
from .keys import SigningKey
from .merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from .state import LedgerState, Member
from .treehead import (
    ProofBundle,
    TreeHead,
    check_consistency,
    check_inclusion,
    sign_tree_head,
    verify_tree_head,
)
from .verify import VerifyReport, verify_chain, verify_file

_LAZY = {
    "Replica": "replica",
    "ReplicationError": "replica",
    "RaftTiming": "replica_raft",
    "Ledger": "ledger",
    "SqliteStore": "store",
    "Anchor": "anchor",
    "anchor_path_for": "anchor",
}


def __getattr__(name: str) -> object:
    """Load the Raft replica (and pysyncobj), and the SQLite store with its anchors, only
    when asked for (PEP 562): an agent keeps no ledger file, so never loads them."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The submodule ledger_lite.verify shares this name; importing it bound the package
# attribute to the module, so bind the public name back to the signature check.
# (Import the module's contents with ``from ledger_lite.verify import ...``.)
verify = keys.verify

__all__ = [
    "DEFAULT_POLICY",
    "EMPTY_ROOT",
    "GENESIS_PREV",
    "KINDS",
    "MAX_ENTRY_BYTES",
    "ROLES",
    "Anchor",
    "AnchorError",
    "CorruptStore",
    "DecodeError",
    "Entry",
    "Ledger",
    "LedgerError",
    "LedgerState",
    "LostEntries",
    "Member",
    "MerkleTree",
    "ProofBundle",
    "RaftTiming",
    "Refused",
    "Replica",
    "ReplicationError",
    "SigningKey",
    "SqliteStore",
    "TreeHead",
    "Tx",
    "VerifyReport",
    "anchor_path_for",
    "canonical_bytes",
    "check_consistency",
    "check_inclusion",
    "errors",
    "leaf_hash",
    "make_genesis",
    "make_tx",
    "sha256_hex",
    "sign_tree_head",
    "verify",
    "verify_chain",
    "verify_consistency",
    "verify_file",
    "verify_inclusion",
    "verify_tree_head",
]
