"""A gateway's files on a disk that fills up: a reserve kept free, one message for it all.

The ledger, the checkpoint and the model exports live in the gateway's state directory.
Each writer checks the free space before it writes (`fits`: what it writes plus the
reserve, ``[gateway] min_free_mb``, which the ledger keeps for itself), and a write that
still finds the disk full (ENOSPC: someone else filled it meanwhile) fails the same way:
nothing half-written, the old file in force, the work skipped or tried again later.

Invariants of the telling (`SpaceWatch`, one per file system in this process):
- the first writer blocked logs ONE warning line: where, the bytes free and needed, what
  waits; further failures of any writer say nothing until space is back (a reminder line
  at most every `REMIND_S` while it lasts);
- when the last blocked writer writes again, one info line says space is back;
- a writer that was never blocked changes nothing by succeeding.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ledger_lite.files import write_atomic
from ledger_lite.store import NoSpace, free_bytes, is_no_space

log = logging.getLogger(__name__)

REMIND_S = 600.0  # while the disk stays full, a reminder line at most this often


def _mib(n: int) -> str:
    return "unknown" if n < 0 else f"{n / 2**20:.1f} MiB"


class SpaceWatch:
    """Who cannot write for lack of space on one file system; logs as the header says.

    Thread-safe: the ledger answers on its own thread. ``clock`` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._blocked: dict[str, str] = {}  # writer -> what waits
        self._told_at = 0.0
        self.episodes = 0  # times the disk was found full

    @property
    def blocked(self) -> frozenset[str]:
        """The writers waiting for space now."""
        with self._lock:
            return frozenset(self._blocked)

    def full(self, writer: str, directory: Path, free: int, need: int, waits: str) -> None:
        """`writer` could not write under `directory`: `free` bytes free, `need` wanted
        (0: the file system said full), and `waits` says what waits meanwhile."""
        with self._lock:
            first = not self._blocked
            self._blocked[writer] = waits
            now = self._clock()
            if not first and now - self._told_at < REMIND_S:
                return
            self._told_at = now
            self.episodes += first
            waiting = "; ".join(sorted(self._blocked.values()))
        shown = _mib(free)
        wanted = f", {_mib(need)} needed" if need > 0 else ""
        if first:
            log.warning(
                "disk full in %s: %s free%s; until space is freed, %s; nothing is "
                "half-written ([gateway] min_free_mb is the space kept free)",
                directory,
                shown,
                wanted,
                waits,
            )
        else:
            log.warning(
                "disk still full in %s: %s free%s; waiting: %s",
                directory,
                shown,
                wanted,
                waiting,
            )

    def ok(self, writer: str, directory: Path) -> None:
        """`writer` wrote under `directory` again."""
        with self._lock:
            if self._blocked.pop(writer, None) is None or self._blocked:
                return
        free = _mib(free_bytes(directory))
        log.info("disk space is back in %s (%s free): writing again", directory, free)


_WATCHES: dict[int, SpaceWatch] = {}
_WATCHES_LOCK = threading.Lock()


def watch_for(directory: Path) -> SpaceWatch:
    """The one `SpaceWatch` of the file system holding `directory` (or its nearest existing
    parent) in this process: the ledger, checkpoint and exports on one disk share it."""
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        device = os.stat(path).st_dev
    except OSError:
        device = -1
    with _WATCHES_LOCK:
        return _WATCHES.setdefault(device, SpaceWatch())


def fits(directory: Path, size: int, reserve: int) -> tuple[bool, int, int]:
    """Whether `size` bytes can be written under `directory` leaving `reserve` free:
    (fits, bytes free, bytes needed). An unknown free space counts as fitting."""
    free, need = free_bytes(directory), size + reserve
    return (free < 0 or free >= need), free, need


def save_file(path: Path, data: bytes, reserve: int, writer: str, waits: str) -> bool:
    """Write `data` to `path` atomically (fsynced, renamed into place) if it fits with
    `reserve` bytes left free; True if written. Without the space, or on ENOSPC, the old
    file stays whole, `watch_for` hears it (as `writer`, `waits` saying what waits) and
    False is returned; other OSErrors are raised."""
    directory = path.parent
    watch = watch_for(directory)
    ok, free, need = fits(directory, len(data), reserve)
    if not ok:
        watch.full(writer, directory, free, need, waits)
        return False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as exc:
        if not is_no_space(exc):
            raise
        watch.full(writer, directory, free_bytes(directory), need, waits)
        return False
    watch.ok(writer, directory)
    return True


def ledger_full(error: NoSpace, what: str) -> None:
    """The ledger refused `what` (an entry) for lack of space: tell the watch."""
    waits = f"the ledger appends nothing and no round advances (first refused: {what})"
    watch_for(error.directory).full("ledger", error.directory, error.free, error.need, waits)


def ledger_ok(directory: Path) -> None:
    """The ledger in `directory` appended again."""
    watch_for(directory).ok("ledger", directory)
