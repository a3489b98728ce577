"""Whole-chain verification: walk from genesis, re-checking everything.

`ChainVerifier` is the incremental core: feed it entries (or raw stored rows) in height
order; it folds them into a `LedgerState` with the same rules every replica applies and
remembers the first failure. `verify_chain` runs it over entries; `verify_file` runs it
over the raw rows of a SQLite ledger, recomputing every hash from the stored body rather
than trusting the stored hash column. `SqliteStore` uses the same verifier when it opens.

Cost: one Ed25519 verification per entry dominates (a few thousand entries a second on
one core); Merkle proofs (a later issue) are the answer for devices that cannot afford it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .entry import Entry
from .errors import DecodeError, Refused
from .merkle import MerkleTree
from .state import LedgerState


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of a verification. On failure `n_entries` counts the good prefix and
    `tip_hash` is its tip; `first_bad_height` is None only when no height applies
    (e.g. the file is not a ledger at all)."""

    ok: bool
    n_entries: int
    first_bad_height: int | None
    reason: str | None
    tip_hash: str | None


class ChainVerifier:
    """Fold entries in order; stop at the first bad one. Not thread-safe."""

    def __init__(self) -> None:
        self.state: LedgerState | None = None
        self.n_entries = 0
        self.bad_height: int | None = None
        self.reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.reason is not None

    def _fail(self, height: int | None, reason: str) -> bool:
        self.bad_height, self.reason = height, reason
        return False

    @property
    def next_height(self) -> int:
        return 0 if self.state is None else self.state.height + 1

    def add(self, entry: Entry) -> bool:
        """Check and fold `entry`; False (and remember why) if it is bad. After a failure
        every further call returns False without looking."""
        if self.failed:
            return False
        try:
            if self.state is None:
                self.state = LedgerState.from_genesis(entry)
            else:
                self.state.apply(entry)
        except Refused as exc:
            return self._fail(entry.height, f"{exc.reason}: {exc.detail}")
        self.n_entries += 1
        return True

    def add_row(self, height: object, stored_hash: object, body: object) -> bool:
        """Check a raw stored row (height, hash column, canonical body) and fold it.

        The body must parse, be canonical, carry the row's height and hash to the stored
        hash; the hash column is compared, never trusted."""
        if self.failed:
            return False
        expected = self.next_height
        if height != expected:
            return self._fail(expected, f"missing entry (next stored row is {height!r})")
        if not isinstance(body, bytes):
            return self._fail(expected, "body is not a BLOB")
        try:
            entry = Entry.from_bytes(body)
        except DecodeError as exc:
            return self._fail(expected, f"body does not parse: {exc}")
        if entry.height != expected:
            return self._fail(expected, f"body holds height {entry.height}")
        if entry.canonical() != body:
            return self._fail(expected, "body is not in canonical form")
        if stored_hash != entry.hash:
            return self._fail(expected, "hash column does not match body")
        return self.add(entry)

    def report(self) -> VerifyReport:
        """The outcome so far. An empty chain is not ok: a ledger starts with a genesis."""
        tip = None if self.state is None else self.state.tip
        if not self.failed and self.state is None:
            return VerifyReport(False, 0, 0, "empty ledger: no genesis entry", None)
        return VerifyReport(not self.failed, self.n_entries, self.bad_height, self.reason, tip)


def verify_chain(entries: Iterable[Entry]) -> VerifyReport:
    """Verify `entries` (height order, from genesis) with the replica rules. Pure."""
    verifier = ChainVerifier()
    for entry in entries:
        if not verifier.add(entry):
            break
    return verifier.report()


def verify_file(path: str | os.PathLike[str]) -> VerifyReport:
    """Verify a SQLite ledger file read-only, from its raw rows.

    Raises FileNotFoundError if `path` does not exist; any other trouble (not a SQLite
    file, no entries table, a bad row) is reported in the VerifyReport.
    """
    return verify_file_tree(path)[0]


def verify_file_tree(
    path: str | os.PathLike[str],
) -> tuple[VerifyReport, LedgerState | None, MerkleTree]:
    """`verify_file`, plus the state folded from the good prefix and the Merkle tree over
    its entry hashes (to check the file against a tree head)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such ledger file: {path}")
    import sqlite3  # here: agents import this module for ChainVerifier, never open a file

    verifier = ChainVerifier()
    tree = MerkleTree()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return VerifyReport(False, 0, None, f"cannot open as SQLite: {exc}", None), None, tree
    try:
        rows = conn.execute("SELECT height, hash, body FROM entries ORDER BY height")
        for height, stored_hash, body in rows:
            if not verifier.add_row(height, stored_hash, body):
                break
            tree.append(bytes.fromhex(stored_hash))  # checked against the body just now
    except sqlite3.Error as exc:
        if not verifier.failed:
            verifier._fail(verifier.next_height, f"not a readable ledger: {exc}")
    finally:
        conn.close()
    return verifier.report(), verifier.state, tree
