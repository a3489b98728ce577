"""SQLite persistence for one ledger replica: one row per entry, verified on open.

Layout: ``entries(height INTEGER PRIMARY KEY, hash TEXT, body BLOB)`` where ``body`` is
the entry's canonical bytes and ``hash`` its SHA-256 hex (an index for lookups, never
trusted: verification recomputes it). ``PRAGMA user_version`` holds the format version.
Beside it, ``meta(key TEXT PRIMARY KEY, value INTEGER)`` holds small counters that must move
in the same transaction as the entries (a Raft replica keeps there the last Raft log index
it applied); it is created on every writable open, so a file of this format may lack it
(readers treat that as "nothing recorded"), and verification never reads it.

Durability: WAL journal with ``synchronous=FULL``, so every committed append is fsynced to
the WAL before `append` returns, and each append is a single transaction. A crash, even a
power cut, therefore leaves either the whole entry or none of it — never half an entry,
and never a row whose body and hash disagree. (``NORMAL`` would be faster but may lose the
last commits on power loss, which a ledger that peers have already seen must not do.)
`append_many` writes several entries (and meta values) in one such transaction: all of
them or none, for one fsync.

Group commit (``deferred_sync=True``, what an anchored `Ledger` asks for): ``synchronous=
NORMAL``, so a commit is whole and ordered but not yet fsynced, and `sync` fsyncs the WAL,
making every commit before it durable at once. The anchor is written only after that sync
(`Ledger.sync_anchor`) and acknowledges only what it covers, so a power cut can cost only
entries nobody was told of. The writer no longer waits for an fsync per entry: an entry
costs ~2 ms less on the gateway's loop, and entries that arrive together share one fsync
(on an SD card an fsync is 10-50 ms; issue 20).

One process writes a ledger file at a time; the in-process lock makes a store safe to
share between threads. Opening re-verifies the whole chain and raises `CorruptStore`
naming the first bad height. A `check` given to the constructor (`anchor.AnchorCheck`)
sees the verified chain before anything is written: an existing file is then verified on a
read-only connection first, because a writable connection would, on close, fold what
SQLite kept of a damaged WAL into the main file and delete the WAL, and with it the
evidence of what was lost.

A full disk: a write that SQLite cannot make (``SQLITE_FULL``, ENOSPC) raises `NoSpace`,
a `LedgerError`, with the transaction rolled back, so the file holds every entry or none of
it; the caller may try again once space is freed. The WAL does not grow without bound: a
writable connection checkpoints it every `WAL_AUTOCHECKPOINT_PAGES` pages, and SQLite then
cuts the file back to `WAL_SIZE_LIMIT` when it starts the log over (without that limit the
file stays at its largest size for good, however large a long reader let it grow); closing
the last connection folds it in and removes it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from .entry import GENESIS_PREV, Entry
from .errors import CorruptStore, DecodeError, LedgerError
from .merkle import MerkleTree
from .state import LedgerState
from .verify import ChainVerifier

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
RAFT_INDEX_KEY = "raft_index"
"""The meta key under which a Raft replica keeps the last Raft log index it applied."""
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    "height INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, body BLOB NOT NULL)"
)
_META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
WAL_AUTOCHECKPOINT_PAGES = 1000  # checkpoint the WAL every ~4 MiB (SQLite's default, kept)
WAL_SIZE_LIMIT = 1024 * 1024  # bytes the WAL file is cut back to when the log starts over
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class NoSpace(LedgerError):
    """Not enough free disk space to write: `free` bytes free under `directory`, `need`
    wanted (0 when the file system itself said it is full)."""

    def __init__(self, directory: Path, free: int, need: int, detail: str = "") -> None:
        self.directory = directory
        self.free = free
        self.need = need
        wanted = f", {_mib(need)} needed" if need else ""
        why = f": {detail}" if detail else ""
        super().__init__(f"no space left in {directory} ({_mib(free)} free{wanted}){why}")


def _mib(n: int) -> str:
    return "unknown" if n < 0 else f"{n / 2**20:.1f} MiB"


def free_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use on the file system of `directory` (or
    of its nearest existing parent); -1 if that cannot be told."""
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return -1


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the writer's quota) is full."""
    if isinstance(exc, NoSpace):
        return True
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE_ERRNOS
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
        return code == sqlite3.SQLITE_FULL if code is not None else "is full" in str(exc)
    return False


StoreCheck = Callable[[LedgerState | None, MerkleTree], None]
"""check(verified state or None, Merkle tree of the entry hashes): raise to refuse."""


class SqliteStore:
    """The entries of one ledger in a SQLite file.

    `SqliteStore(path)` opens or creates the file (WAL, synchronous=FULL; NORMAL with
    ``deferred_sync``, whose commits `sync` makes durable) and verifies
    every stored entry; `verify_only=True` opens an existing file read-only (never creating
    or writing it), as the CLI does. Raises CorruptStore(height) if the stored chain fails
    verification, FileNotFoundError for a missing file in verify_only mode, LedgerError
    for a file of a newer format. After opening, `verified_state` is the LedgerState the
    verification folded (None for an empty store); `Ledger` takes it over.

    `check(state, tree)`, if given, is called once the chain has verified and before
    anything is written (for a missing file: with None and an empty tree, before the file
    is created); it raises to refuse the file, which is then left exactly as it was.
    `verified_tree` is then the Merkle tree over the entry hashes (None without `check`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        verify_only: bool = False,
        check: StoreCheck | None = None,
        deferred_sync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = verify_only
        self.deferred_sync = deferred_sync
        self._dir_synced = False
        self._lock = threading.Lock()
        self.verified_tree: MerkleTree | None = None
        exists = self.path.is_file()
        if check is not None and not verify_only and not exists:
            self.verified_tree = MerkleTree()
            check(None, self.verified_tree)  # before the file is created
            check = None
        first_ro = check is not None and not verify_only  # an existing file, checked first
        self._conn = self._connect(read_only=verify_only or first_ro)
        try:
            self.verified_state: LedgerState | None = self._verify(check)
            if first_ro:
                self._conn.close()
                self._conn = self._connect(read_only=False)
                self._same_tip()
        except BaseException:
            self._conn.close()
            raise
        state = self.verified_state
        self._tip: tuple[int, str] | None = None if state is None else (state.height, state.tip)

    def _same_tip(self) -> None:
        """After checking on a read-only connection: the writable one sees the same tip."""
        state = self.verified_state
        row = self._conn.execute(
            "SELECT height, hash FROM entries ORDER BY height DESC LIMIT 1"
        ).fetchone()
        if row != (None if state is None else (state.height, state.tip)):
            height = 0 if state is None else state.height
            raise CorruptStore(height, "the file changed while it was being opened")

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no such ledger file: {self.path}")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'NORMAL' if self.deferred_sync else 'FULL'}")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > FORMAT_VERSION:
                raise LedgerError(f"{self.path}: ledger format {version} is newer than this code")
            if version == 0:  # a new file: write the layout once
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            conn.execute(_META_SCHEMA)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error) and is_no_space(exc):
                raise self._no_space(f"cannot open {self.path.name}: {exc}") from exc
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"{self.path}: not a usable ledger file: {exc}") from exc
            raise
        return conn

    def _verify(self, check: StoreCheck | None = None) -> LedgerState | None:
        """Re-verify every stored row (CorruptStore at the first bad one), then `check`."""
        verifier = ChainVerifier()
        tree = None if check is None else MerkleTree()
        try:
            for height, stored_hash, body in self._conn.execute(
                "SELECT height, hash, body FROM entries ORDER BY height"
            ):
                if not verifier.add_row(height, stored_hash, body):
                    break
                if tree is not None:  # the stored hash was just checked against the body
                    tree.append(bytes.fromhex(stored_hash))
        except sqlite3.Error as exc:
            # Checked read-only before the layout is written: a file without it is empty.
            if check is None or verifier.next_height or not self._no_layout():
                raise CorruptStore(verifier.next_height, f"unreadable: {exc}") from exc
        if verifier.failed:
            assert verifier.bad_height is not None and verifier.reason is not None
            log.debug(  # the caller reports the CorruptStore: once, as one line
                "ledger %s corrupt at height %d: %s",
                self.path,
                verifier.bad_height,
                verifier.reason,
            )
            raise CorruptStore(verifier.bad_height, verifier.reason)
        if check is not None and tree is not None:
            check(verifier.state, tree)
            self.verified_tree = tree
        return verifier.state

    def _no_layout(self) -> bool:
        """True for a file whose layout was never written (format 0, no entries table)."""
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            table = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entries'"
            ).fetchone()
        except sqlite3.Error:
            return False
        return version == 0 and table is None

    # -- writing -----------------------------------------------------------------------

    def append(self, entry: Entry) -> None:
        """Append `entry` durably in one transaction.

        The store checks only linkage (next height, prev_hash = tip hash); validating the
        entry is the caller's job (`Ledger` does it). Raises LedgerError on a read-only
        store, a linkage mismatch, or a row another writer already took.
        """
        self.append_many([entry])

    def append_many(self, entries: Sequence[Entry], meta: Mapping[str, int] | None = None) -> None:
        """Append `entries` (in order) and set the `meta` values, all in one transaction.

        Either every entry and every meta value is durable when this returns, or (on an
        exception) none of them is and the store is unchanged. Linkage is checked as in
        `append`, entry by entry; an empty `entries` with `meta` just sets the values.
        Raises LedgerError on a read-only store, a linkage mismatch or a failed write, and
        its subclass NoSpace when the write failed because the disk is full.
        """
        if self.read_only:
            raise LedgerError("store opened verify_only: read-only")
        with self._lock:
            height, prev = (-1, GENESIS_PREV) if self._tip is None else self._tip
            rows = []
            for entry in entries:
                if entry.height != height + 1 or entry.prev_hash != prev:
                    raise LedgerError(
                        f"append at height {entry.height} does not extend tip at height {height}"
                    )
                height, prev = entry.height, entry.hash
                rows.append((entry.height, prev, entry.canonical()))
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT INTO entries(height, hash, body) VALUES (?, ?, ?)", rows
                )
                if meta:
                    self._conn.executemany(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items()
                    )
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                if is_no_space(exc):
                    raise self._no_space(f"append at height {height}: {exc}") from exc
                raise LedgerError(f"append at height {height} failed: {exc}") from exc
            if rows:
                self._tip = (height, prev)

    def sync(self) -> None:
        """Make every commit so far durable (group commit: see the module header). A no-op
        unless ``deferred_sync``. Raises OSError if the WAL cannot be fsynced.

        SQLite has no call for this, so the WAL file is fsynced here (fsync flushes the
        file, whoever wrote it); a checkpoint has already synced what it moved into the main
        file. The first call also syncs the directory, which holds the new WAL's name."""
        if not self.deferred_sync or self.read_only:
            return
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:  # no WAL: every commit is in the main file, synced
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not self._dir_synced:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._dir_synced = True

    def _rollback(self) -> None:
        """Undo a failed transaction (SQLite may have rolled it back already: a full disk
        during COMMIT does). Frames a failed commit left in the WAL have no commit record:
        readers never see them and the next transaction writes over them."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # the failed write is what the caller hears of
                log.debug("rollback after a failed append: %s", exc)

    def _no_space(self, detail: str) -> NoSpace:
        return NoSpace(self.path.parent, free_bytes(self.path.parent), 0, detail)

    def get_meta(self, key: str) -> int | None:
        """The meta value stored under `key`, or None (never set, or no meta table)."""
        with self._lock:
            try:
                row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            except sqlite3.OperationalError:  # a read-only file written before the table
                return None
        return None if row is None else int(row[0])

    # -- reading -----------------------------------------------------------------------

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[Entry]:
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        out = []
        for height, body in rows:
            try:
                out.append(Entry.from_bytes(body))
            except DecodeError as exc:  # changed under us since the verification on open
                raise CorruptStore(height, f"body does not parse: {exc}") from exc
        return out

    def range(self, from_height: int = 0, limit: int | None = None) -> list[Entry]:
        """Entries with height >= `from_height`, in order, at most `limit` of them."""
        return self._rows(
            "SELECT height, body FROM entries WHERE height >= ? ORDER BY height LIMIT ?",
            (from_height, -1 if limit is None else max(limit, 0)),
        )

    def bodies(self, from_height: int = 0, to_height: int | None = None) -> Iterator[bytes]:
        """The stored canonical bodies of heights `from_height`..`to_height` (inclusive;
        default: to the tip), in order, read in pages. Raw bytes, not re-verified here."""
        last = len(self) - 1 if to_height is None else to_height
        height = from_height
        while height <= last:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT height, body FROM entries WHERE height BETWEEN ? AND ? "
                    "ORDER BY height LIMIT 1024",
                    (height, last),
                ).fetchall()
            if not rows:
                return
            for _, body in rows:
                yield body
            height = rows[-1][0] + 1

    def load(self) -> list[Entry]:
        """Every entry, in height order."""
        return self.range(0)

    def __iter__(self) -> Iterator[Entry]:
        """Iterate in height order, reading in pages so a long chain is never all in memory."""
        height = 0
        while page := self.range(height, 512):
            yield from page
            height = page[-1].height + 1

    def get(self, height: int) -> Entry | None:
        """The entry at `height`, or None."""
        found = self._rows("SELECT height, body FROM entries WHERE height = ?", (height,))
        return found[0] if found else None

    def tip(self) -> Entry | None:
        """The last entry, or None if the store is empty."""
        return None if self._tip is None else self.get(self._tip[0])

    def __len__(self) -> int:
        return 0 if self._tip is None else self._tip[0] + 1

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = ", verify_only" if self.read_only else ""
        return f"SqliteStore({str(self.path)!r}{mode}, entries={len(self)})"
