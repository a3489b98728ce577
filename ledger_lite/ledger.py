"""A single-node ledger: a verified `SqliteStore` plus the `LedgerState` folded from it.

`submit(tx)` chains a signed transaction at the tip, validates it against the state,
appends it durably, then folds it in; if any step refuses or fails, nothing changes. One
re-entrant lock serialises submissions, so MQTT callback threads may call in directly.
`append(entry)` takes an entry already chained elsewhere (what a Raft follower will do
with the leader's log, in a later issue) through the same validate → append → fold path.

`on_append` callbacks run after each durable append, in height order, under the lock: keep
them short (hand the entry to a queue). A callback that raises is logged and ignored: the
entry is already committed.

Anchoring (`anchor`): opened or created with ``anchor=PATH``, the ledger refuses a file that
lost entries the anchor records as acknowledged (`LostEntries`, before anything is written),
and `sync_anchor()` makes the anchor cover every entry appended so far (one fsynced file
for any number of entries). An entry counts as acknowledged only once an anchor covers it:
callers acknowledge after `sync_anchor` (edge_swarm's LocalLedger batches that); `close`
anchors what is left.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from .anchor import AnchorCheck, Anchorer
from .entry import Entry, Tx
from .errors import LedgerError, Refused
from .keys import SigningKey
from .state import LedgerState
from .store import SqliteStore

log = logging.getLogger(__name__)

AppendCallback = Callable[[Entry], None]


class Ledger:
    """Store + state. Build with `create` (new file) or `open` (existing file), or from an
    already opened, non-empty `SqliteStore`. Raises LedgerError for an empty store."""

    def __init__(
        self,
        store: SqliteStore,
        *,
        _state: LedgerState | None = None,
        _anchorer: Anchorer | None = None,
    ) -> None:
        state = _state if _state is not None else store.verified_state
        if state is None:
            raise LedgerError(f"{store.path} holds no genesis entry: use Ledger.create")
        self._store = store
        self._state = state
        self._anchorer = _anchorer
        self._lock = threading.RLock()
        self.on_append: list[AppendCallback] = []

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        genesis: Entry,
        *,
        anchor: str | os.PathLike[str] | None = None,
        key: SigningKey | None = None,
        gateway_id: str | None = None,
    ) -> Ledger:
        """Start a new ledger at `path` with `genesis`; with `anchor`, write its first
        anchor there (signed with `key` as `gateway_id` when given).

        Raises Refused (height 0) for an invalid genesis, LedgerError if `path` already
        holds entries, LostEntries if `anchor` already records acknowledged entries (the
        file was lost: no new chain in its place), CorruptStore as `SqliteStore` does.
        """
        check = None if anchor is None else AnchorCheck(path, anchor)
        # With an anchor, it is the acknowledgement: commits are synced in groups before it.
        store = SqliteStore(path, check=check, deferred_sync=check is not None)
        try:
            if len(store):
                raise LedgerError(f"{path} already holds a ledger ({len(store)} entries)")
            state = LedgerState.from_genesis(genesis)
            store.append(genesis)
            anchorer = None
            if check is not None:
                anchorer = check.anchorer(state, key=key, gateway_id=gateway_id)
                anchorer.write(store.sync)
        except BaseException:
            store.close()
            raise
        log.info("created ledger %s for swarm %s (genesis %s)", path, state.swarm, state.tip)
        return cls(store, _state=state, _anchorer=anchorer)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        anchor: str | os.PathLike[str] | None = None,
        key: SigningKey | None = None,
        gateway_id: str | None = None,
    ) -> Ledger:
        """Open and fully re-verify an existing ledger; with `anchor`, check it against the
        anchor file there, then anchor what the store holds beyond it (the first time: all).

        Raises FileNotFoundError, CorruptStore(height), LedgerError if it is empty, and with
        `anchor`: LostEntries (the file is missing, shorter than the anchor or different
        from it; nothing written) or AnchorError (a damaged anchor file).
        """
        check = None if anchor is None else AnchorCheck(path, anchor)
        if not Path(path).is_file():
            if check is not None:
                check.missing()
            raise FileNotFoundError(f"no such ledger file: {path}")
        store = SqliteStore(path, check=check, deferred_sync=check is not None)
        try:
            ledger = cls(store)
            if check is not None:
                ledger._anchorer = check.anchorer(ledger._state, key=key, gateway_id=gateway_id)
                ledger.sync_anchor()
            return ledger
        except BaseException:
            store.close()
            raise

    def sync_anchor(self) -> int:
        """Make the anchor cover every entry appended so far (the store's commits synced as
        a group, then one fsynced write; nothing if it already does); return how many
        entries it covers. Without an anchor: all. Raises OSError if the commits cannot be
        synced or the anchor cannot be written."""
        if self._anchorer is None:
            return self._state.height + 1
        return self._anchorer.write(self._store.sync)

    @property
    def acknowledged(self) -> int:
        """Entries the durable anchor covers (all of them when there is no anchor)."""
        return self._state.height + 1 if self._anchorer is None else self._anchorer.acknowledged

    # -- writing -----------------------------------------------------------------------

    def submit(self, tx: Tx) -> Entry:
        """Chain `tx` at the tip, validate, append durably, fold; return the new entry.

        Raises Refused (with the reason code) and changes nothing if the chain refuses it;
        LedgerError if the store fails to write (state unchanged as well).
        """
        with self._lock:
            entry = tx.chain(self._state.height + 1, self._state.tip)
            self._append(entry)
            return entry

    def append(self, entry: Entry) -> None:
        """Validate and append an entry chained elsewhere; as `submit` otherwise."""
        with self._lock:
            self._append(entry)

    def _append(self, entry: Entry) -> None:
        try:
            self._state.validate(entry)
        except Refused as exc:
            log.debug("refused %s from %s: %s", entry.kind, entry.author, exc)
            raise
        self._store.append(entry)
        self._state._fold(entry)
        if self._anchorer is not None:
            self._anchorer.extend((entry,))
        for callback in list(self.on_append):
            try:
                callback(entry)
            except Exception:
                log.exception("on_append callback %r failed at height %d", callback, entry.height)

    # -- reading -----------------------------------------------------------------------

    def entries(self, from_height: int = 0, limit: int | None = None) -> list[Entry]:
        """Entries from `from_height` on, in order, at most `limit` of them."""
        return self._store.range(from_height, limit)

    def get(self, height: int) -> Entry | None:
        """The entry at `height`, or None."""
        return self._store.get(height)

    @property
    def tip(self) -> str:
        """Hash of the last entry."""
        return self._state.tip

    @property
    def height(self) -> int:
        """Height of the last entry (0 when only the genesis is there)."""
        return self._state.height

    @property
    def state(self) -> LedgerState:
        """The live state, read-only to callers. Reads are not locked: while another
        thread submits, two attributes read one after the other may straddle an entry."""
        return self._state

    @property
    def swarm(self) -> str:
        """The swarm id named in the genesis."""
        return self._state.swarm

    def close(self) -> None:
        """Anchor what is not anchored yet (if there is an anchor), close the store."""
        with self._lock:
            try:
                self.sync_anchor()
            except (OSError, LedgerError) as exc:
                log.error("closing %s: the anchor could not be written: %s", self._store.path, exc)
            self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self._store.path)!r}, height={self.height}, tip={self.tip[:12]}…)"
