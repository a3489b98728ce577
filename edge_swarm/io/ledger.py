"""The gateway's ledger: one local replica, or a Raft-replicated one among a site's gateways.

Both look the same to the gateway: ``submit(tx, callback)`` hands a signed transaction over
and the callback says what became of it; every entry applied to this replica, whoever
submitted it, reaches the ``on_append`` callbacks in height order; ``on_role`` says when
this gateway becomes or stops being the one that coordinates (the Raft leader; a lone
gateway always is). Callbacks may come on library threads: the gateway hands them to its
own loop thread.

Neither acknowledges what it could lose: a submission is answered, and an entry announced
to ``on_append``, only once the ledger's anchor (``ledger.anchor`` beside ``ledger.sqlite``:
the signed head this gateway has acknowledged, `ledger_lite.anchor`) covers it. A ledger file
that lost acknowledged entries (a damaged WAL after an unclean stop, a deleted file) is
refused on open with `LostEntries` naming both heights; a lone gateway's file is then
recovered from a copy with ``ledger-lite recover``, while a Raft replica fetches what it
lost from its peers by itself.

A full disk stops appends, never the gateway: `submit` answers `NoSpace` (naming the
bytes free and needed) when less than ``min_free_bytes`` is free beside the ledger file, or
when SQLite finds the disk full, with nothing appended; the coordinator tries again later
and goes on once space is freed. An anchor that cannot be written for lack of space holds
its entries back (unacknowledged, the old anchor in force) and is tried again every
`ANCHOR_RETRY_S` until it is written.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ledger_lite import Entry, Ledger, LedgerState, SigningKey, Tx
from ledger_lite.anchor import anchor_path_for
from ledger_lite.errors import LedgerError
from ledger_lite.store import NoSpace, free_bytes, is_no_space

log = logging.getLogger(__name__)

SubmitCallback = Callable[[Entry | None, LedgerError | None], None]


class LedgerBackend(Protocol):
    on_append: list[Callable[[Entry], None]]
    on_role: list[Callable[[bool], None]]

    def submit(self, tx: Tx, callback: SubmitCallback) -> None: ...
    def entries(self, from_height: int = 0, limit: int | None = None) -> list[Entry]: ...
    @property
    def height(self) -> int: ...
    @property
    def state(self) -> LedgerState: ...
    def start(self) -> None: ...
    def catch_up(self, timeout: float = 10.0) -> None: ...
    def close(self) -> None: ...


def read_bootstrap(path: Path) -> list[Entry]:
    """The genesis and the admin's pre-signed entries (enrolments), one JSON object a line."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: empty bootstrap file")
    try:
        return [Entry.from_dict(json.loads(ln)) for ln in lines]
    except (ValueError, LedgerError) as exc:
        raise ValueError(f"{path}: not a bootstrap file: {exc}") from None


_STOP = object()
ANCHOR_RETRY_S = 1.0  # how often an anchor that found the disk full is tried again


def check_space(directory: Path, min_free_bytes: int) -> None:
    """Raise NoSpace if less than `min_free_bytes` is free under `directory`."""
    if min_free_bytes <= 0:
        return
    free = free_bytes(directory)
    if 0 <= free < min_free_bytes:
        raise NoSpace(directory, free, min_free_bytes, "the ledger keeps that much free")


class LocalLedger:
    """A lone gateway's ledger: ``ledger_lite.Ledger`` in SQLite; always the coordinator.

    `submit` validates and appends at once (a refusal is answered at once, on the caller's
    thread); the answer and the ``on_append`` announcement of an appended entry come from
    the acknowledging thread (``ledger-ack``) once the anchor covers the entry. That
    thread anchors whatever has been appended meanwhile in one fsynced write, so a burst of
    submissions costs one anchor write, not one per entry. `key` and `gateway_id` (both or
    neither) sign each anchor as a tree head. Raises LostEntries if the file lost entries
    its anchor records (or is missing beside an anchor), AnchorError for a damaged anchor.
    `min_free_bytes`: the disk space kept free beside the file (see the module header).
    """

    def __init__(
        self,
        path: Path,
        genesis: Entry | None,
        *,
        key: SigningKey | None = None,
        gateway_id: str | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        self.min_free_bytes = min_free_bytes
        self._dir = path.parent
        anchor = anchor_path_for(path)
        signer: dict[str, Any] = {"anchor": anchor, "key": key, "gateway_id": gateway_id}
        if path.exists() or anchor.exists():
            self.ledger = Ledger.open(path, **signer)
        elif genesis is not None:
            self.ledger = Ledger.create(path, genesis, **signer)
        else:
            raise FileNotFoundError(f"no ledger at {path} and no bootstrap file to create one")
        self.on_append: list[Callable[[Entry], None]] = []
        self.on_role: list[Callable[[bool], None]] = []
        self._submit_lock = threading.Lock()  # appended and queued in one step: height order
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._anchor_full = False  # the last anchor write found the disk full
        self._closed = False
        self._acker = threading.Thread(target=self._acknowledge, name="ledger-ack")
        self._acker.daemon = True
        self._acker.start()

    def submit(self, tx: Tx, callback: SubmitCallback) -> None:
        refusal: LedgerError
        with self._submit_lock:
            if self._failure is not None or self._closed:
                why = "closed" if self._failure is None else f"failed: {self._failure}"
                refusal = LedgerError(f"the ledger is {why}")
            else:
                try:
                    check_space(self._dir, self.min_free_bytes)
                    self._queue.put((self.ledger.submit(tx), callback))
                    return
                except LedgerError as exc:  # Refused, NoSpace, a failed write: nothing appended
                    refusal = exc
        callback(None, refusal)

    def _acknowledge(self) -> None:
        """Anchor what was appended, then announce and answer it (the ``ledger-ack``
        thread, in height order). An anchor the disk has no room for holds its entries
        back and is tried again every `ANCHOR_RETRY_S`; any other failure to write it
        stops the ledger (nothing more is acknowledged)."""
        waiting: list[tuple[Entry, SubmitCallback]] = []  # appended, not anchored yet
        stop = False
        while not stop:
            try:
                batch = [self._queue.get(timeout=ANCHOR_RETRY_S if waiting else None)]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                batch, stop = batch[: batch.index(_STOP)], True
            waiting += batch
            if waiting and self._failure is None and not self._anchored(len(waiting), stop):
                continue  # no room for the anchor yet: the entries wait for it
            for entry, callback in waiting:
                if self._failure is not None:
                    _call(callback, None, LedgerError(f"not acknowledged: {self._failure}"))
                    continue
                for announce in list(self.on_append):
                    _call(announce, entry)
                _call(callback, entry, None)
            waiting = []

    def _anchored(self, n: int, stopping: bool) -> bool:
        """Write the anchor over the `n` entries waiting for it. False if the disk has no
        room for it (said once until it is written); True once it is written, or once it
        failed for good (`_failure` is set: then so is stopping on a full disk, and the
        next start anchors what the file holds)."""
        try:
            self.ledger.sync_anchor()
        except (OSError, LedgerError) as exc:
            if is_no_space(exc) and not stopping:
                if not self._anchor_full:
                    self._anchor_full = True
                    log.warning(
                        "no space for the ledger anchor in %s (%.1f MiB free): %d appended "
                        "entries wait for it; trying again every %g s",
                        self._dir,
                        free_bytes(self._dir) / 2**20,
                        n,
                        ANCHOR_RETRY_S,
                    )
                return False
            if is_no_space(exc):
                log.warning("stopping with %d entries not anchored yet: %s", n, exc)
            else:
                log.critical("cannot write the ledger anchor; acknowledging nothing: %s", exc)
            self._failure = exc
            return True
        if self._anchor_full:
            self._anchor_full = False
            log.info("the ledger anchor is written again: %d entries acknowledged", n)
        return True

    def entries(self, from_height: int = 0, limit: int | None = None) -> list[Entry]:
        """Acknowledged entries only (an appended entry shows once the anchor covers it)."""
        left = max(0, self.ledger.acknowledged - from_height)
        return self.ledger.entries(from_height, left if limit is None else min(limit, left))

    @property
    def height(self) -> int:
        """Height of the last acknowledged entry."""
        return self.ledger.acknowledged - 1

    @property
    def state(self) -> LedgerState:
        """The live state; it may run a few entries ahead of the acknowledged ones."""
        return self.ledger.state

    def start(self) -> None:
        for callback in self.on_role:
            callback(True)

    def catch_up(self, timeout: float = 10.0) -> None:
        """Nothing to wait for: a lone ledger applies every entry as it is submitted."""

    def close(self) -> None:
        """Answer what was appended, stop the acknowledging thread, close. Idempotent."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if threading.current_thread() is not self._acker:
            self._acker.join()
        self.ledger.close()


def _call(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("ledger callback %r failed", callback)


class ReplicatedLedger:
    """A Raft replica (``ledger_lite.replica``); imported only where a site runs several."""

    def __init__(
        self,
        path: Path,
        genesis: Entry | None,
        self_addr: str,
        peers: tuple[str, ...],
        *,
        key: SigningKey | None = None,
        gateway_id: str | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        from ledger_lite.replica import Replica

        self.min_free_bytes = min_free_bytes
        self._dir = path.parent
        # Not started until the gateway has read the chain and registered its callbacks, so
        # that no entry applied or election won meanwhile goes unseen. A store behind its
        # anchor is let through: the replica fetches the lost entries from its peers (and
        # stops, saying so, if what it gets is not what this gateway acknowledged).
        self.replica = Replica(
            self_addr,
            list(peers),
            path,
            genesis,
            autostart=False,
            anchor=anchor_path_for(path),
            key=key,
            gateway_id=gateway_id,
        )
        self.on_append: list[Callable[[Entry], None]] = self.replica.on_append
        self.on_role: list[Callable[[bool], None]] = self.replica.on_role

    def submit(self, tx: Tx, callback: SubmitCallback) -> None:
        """As `LocalLedger.submit`; the free space checked is this replica's (the leader's).
        A follower whose disk is full fails to apply, as the replica says."""
        try:
            check_space(self._dir, self.min_free_bytes)
        except NoSpace as exc:
            callback(None, exc)
            return
        self.replica.submit(tx, callback)

    def entries(self, from_height: int = 0, limit: int | None = None) -> list[Entry]:
        return self.replica.entries(from_height, limit)

    @property
    def height(self) -> int:
        return self.replica.height

    @property
    def state(self) -> LedgerState:
        return self.replica.state

    def start(self) -> None:
        self.replica.start()

    def catch_up(self, timeout: float = 10.0) -> None:
        """Wait until everything committed before now is applied here (a new leader must
        not act on a state that misses its predecessor's last entries)."""
        self.replica.sync(timeout)

    def close(self) -> None:
        self.replica.close()
