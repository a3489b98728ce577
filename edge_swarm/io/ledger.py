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
from ledger_lite.errors import LedgerError, Refused

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


class LocalLedger:
    """A lone gateway's ledger: ``ledger_lite.Ledger`` in SQLite; always the coordinator.

    `submit` validates and appends at once (a refusal is answered at once, on the caller's
    thread); the answer and the ``on_append`` announcement of an appended entry come from
    the acknowledging thread (``ledger-ack``) once the anchor covers the entry. That
    thread anchors whatever has been appended meanwhile in one fsynced write, so a burst of
    submissions costs one anchor write, not one per entry. `key` and `gateway_id` (both or
    neither) sign each anchor as a tree head. Raises LostEntries if the file lost entries
    its anchor records (or is missing beside an anchor), AnchorError for a damaged anchor.
    """

    def __init__(
        self,
        path: Path,
        genesis: Entry | None,
        *,
        key: SigningKey | None = None,
        gateway_id: str | None = None,
    ) -> None:
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
                    self._queue.put((self.ledger.submit(tx), callback))
                    return
                except Refused as exc:
                    refusal = exc
        callback(None, refusal)

    def _acknowledge(self) -> None:
        """Anchor what was appended, then announce and answer it (the ``ledger-ack``
        thread, in height order)."""
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                batch, stop = batch[: batch.index(_STOP)], True
            if batch and self._failure is None:
                try:
                    self.ledger.sync_anchor()
                except (OSError, LedgerError) as exc:
                    log.critical("cannot write the ledger anchor; acknowledging nothing: %s", exc)
                    self._failure = exc
            for entry, callback in batch:
                if self._failure is not None:
                    _call(callback, None, LedgerError(f"not acknowledged: {self._failure}"))
                    continue
                for announce in list(self.on_append):
                    _call(announce, entry)
                _call(callback, entry, None)

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
    ) -> None:
        from ledger_lite.replica import Replica

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
