"""An agent's copy of the ledger it verified, on its own disk (``state_dir/ledger.jsonl``).

Two uses. A restarted agent replays its copy (its mirror verifies every entry again, as
it verifies the gateway's) and asks the gateway only for what came after, instead of the
whole chain: a hundred agents restarting together no longer queue behind one gateway. And a
site that lost its gateway's ledger with no replica left can rebuild it from any agent's
copy (``ledger-lite recover --from state/agent-03/ledger.jsonl --to ...``; the format is
``ledger_lite.jsonl``'s).

Each entry is written and flushed as it is applied, not fsynced: a power cut may cost the
last lines (a torn line is cut off on reading) and the gateway fills them in. A copy whose
entry does not verify is moved aside (``ledger.jsonl.bad-N``) and started again from the
entries before it. A disk that cannot take a line stops the copy for this run, said once;
the agent goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from edge_swarm.swarm.mirror import LedgerMirror, MirrorError
from ledger_lite import Entry
from ledger_lite.jsonl import entry_line, read_copy

log = logging.getLogger(__name__)

COPY_FILE = "ledger.jsonl"


class LedgerCopy:
    """Appends applied entries to the copy, in height order, once each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.height = 0  # entries the file holds: the next height to write
        self._fh: BinaryIO | None = None
        self._off = False

    def load(self) -> list[Entry]:
        """The entries of the copy, in height order (none without one). A torn or bad line
        and all after it are cut off the file."""
        try:
            read = read_copy(self.path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._stop(f"cannot read it ({exc})")
            return []
        if read.bad is not None or read.torn:
            why = read.bad or "its last line was cut short"
            try:
                os.truncate(self.path, read.good_bytes)
            except OSError as exc:
                self._stop(f"{why}, and it cannot be cut back ({exc})")
                return []
            log.info("ledger copy %s: %s; kept its first %d", self.path, why, len(read.entries))
        self.height = len(read.entries)
        return read.entries

    def replay(self, mirror: LedgerMirror) -> list[Entry]:
        """Offer the copy's entries to ``mirror``, which verifies each again; return those
        it applied, in order. At the first it refuses the copy restarts from those before."""
        good: list[Entry] = []
        for entry in self.load():
            try:
                good += mirror.offer(entry.to_dict())
            except MirrorError as exc:
                self.restart(good, f"height {entry.height}: {exc}")
                break
        if good:
            log.info("%d ledger entries from %s, verified again", len(good), self.path)
        return good

    def append(self, entry: Entry) -> None:
        if self._off or entry.height != self.height:
            return  # read from the copy already, or no copy in this run
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - open while the agent runs
            self._fh.write(entry_line(entry))
            self._fh.flush()
        except OSError as exc:
            self._stop(f"cannot write it ({exc})")
            return
        self.height += 1

    def restart(self, good: Sequence[Entry], why: str) -> None:
        """The copy's entry after ``good`` did not verify: set the file aside (evidence,
        never deleted) and start a new one holding ``good``."""
        self.close()
        n = 1
        while (aside := self.path.with_name(f"{self.path.name}.bad-{n}")).exists():
            n += 1
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self._stop(f"{why}, and it cannot be set aside ({exc})")
            return
        log.warning("ledger copy %s does not verify (%s): set aside as %s", self.path, why, aside)
        self.height = 0
        for entry in good:
            self.append(entry)

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def _stop(self, why: str) -> None:
        self._off = True
        self.close()
        log.warning(
            "ledger copy %s: %s; none is kept for the rest of this run (the agent goes on)",
            self.path,
            why,
        )
