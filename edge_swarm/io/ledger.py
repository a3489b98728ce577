"""The gateway's ledger: one local replica, or a Raft-replicated one among a site's gateways.

Both look the same to the gateway: ``submit(tx, callback)`` hands a signed transaction over
and the callback says what became of it; every entry applied to this replica, whoever
submitted it, reaches the ``on_append`` callbacks in height order; ``on_role`` says when
this gateway becomes or stops being the one that coordinates (the Raft leader; a lone
gateway always is). Callbacks may come on library threads: the gateway hands them to its
own loop thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ledger_lite import Entry, Ledger, LedgerState, Tx
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


class LocalLedger:
    """A lone gateway's ledger: ``ledger_lite.Ledger`` in SQLite; always the coordinator."""

    def __init__(self, path: Path, genesis: Entry | None) -> None:
        if path.exists():
            self.ledger = Ledger.open(path)
        elif genesis is not None:
            self.ledger = Ledger.create(path, genesis)
        else:
            raise FileNotFoundError(f"no ledger at {path} and no bootstrap file to create one")
        self.on_append: list[Callable[[Entry], None]] = self.ledger.on_append
        self.on_role: list[Callable[[bool], None]] = []

    def submit(self, tx: Tx, callback: SubmitCallback) -> None:
        try:
            entry = self.ledger.submit(tx)
        except Refused as exc:
            callback(None, exc)
            return
        callback(entry, None)

    def entries(self, from_height: int = 0, limit: int | None = None) -> list[Entry]:
        return self.ledger.entries(from_height, limit)

    @property
    def height(self) -> int:
        return self.ledger.height

    @property
    def state(self) -> LedgerState:
        return self.ledger.state

    def start(self) -> None:
        for callback in self.on_role:
            callback(True)

    def catch_up(self, timeout: float = 10.0) -> None:
        """Nothing to wait for: a lone ledger applies every entry as it is submitted."""

    def close(self) -> None:
        self.ledger.close()


class ReplicatedLedger:
    """A Raft replica (``ledger_lite.replica``); imported only where a site runs several."""

    def __init__(self, path: Path, genesis: Entry | None, self_addr: str, peers: tuple[str, ...]):
        from ledger_lite.replica import Replica

        # Not started until the gateway has read the chain and registered its callbacks, so
        # that no entry applied or election won meanwhile goes unseen.
        self.replica = Replica(self_addr, list(peers), path, genesis, autostart=False)
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
