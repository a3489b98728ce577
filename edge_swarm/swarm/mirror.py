"""An agent's light copy of the ledger, fed from ``ledger/events`` and query replies.

Entries arrive from the network, possibly twice or out of order. The mirror applies them
strictly in height order, validating each one with ``ledger_lite``'s own rules (signature,
enrolment, policy, linkage) before it is believed; a gap is buffered (bounded) and reported
so that the wiring asks the gateway for the missing heights. The first entry must be the
genesis the node was configured with, when it was given one.
"""

from __future__ import annotations

from typing import Any

from ledger_lite import Entry, LedgerState
from ledger_lite.canonical import parse_json
from ledger_lite.errors import LedgerError

MAX_AHEAD = 4096  # entries buffered beyond a gap; past it the farthest are dropped
MAX_BODIES = 16  # full forms held for compact entries not applied yet


def event_entry(payload: bytes) -> dict[str, Any] | None:
    """A ``ledger/events`` message as the JSON object ``LedgerMirror.offer`` takes, or None
    if it is not one (any bytes from the network: never raises)."""
    try:
        obj = parse_json(payload)
    except ValueError:  # parse_json raises only DecodeError, a ValueError
        return None
    return obj if isinstance(obj, dict) else None


class BodyStash:
    """Full forms of compact entries (``ledger/bodies``; ``ledger_lite/detached.py``), held
    by hash until the mirror applies the compact entry: a committee member needs the rows
    of the round it merges. A body is trusted only through that hash, which covers its
    detached fields' digests, which the mirror checked the author's signature over."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Entry] = {}

    def offer(self, payload: bytes) -> str | None:
        """Take a ``ledger/bodies`` message (untrusted); return why it was dropped, or None."""
        try:
            entry = Entry.from_bytes(payload)
        except LedgerError as exc:
            return f"unparseable body: {exc}"
        if entry.compact() is entry:
            return f"entry {entry.height} is not the full form of a compact entry"
        while len(self._by_hash) >= MAX_BODIES:
            del self._by_hash[next(iter(self._by_hash))]
        self._by_hash[entry.hash] = entry
        return None

    def full(self, entry: Entry) -> Entry:
        """The full form of ``entry`` if one came, else ``entry`` itself."""
        return self._by_hash.pop(entry.hash, entry)


class MirrorError(Exception):
    """An entry from the network that is not valid at its height."""


class LedgerMirror:
    """Validated, height-ordered replay of a remote ledger."""

    def __init__(self, genesis_hash: str | None = None) -> None:
        self.genesis_hash = genesis_hash
        self.state: LedgerState | None = None
        self.next_height = 0
        self.tip_hash: str | None = None
        self._ahead: dict[int, Entry] = {}
        self.discarded = 0  # buffered entries found bad when their turn came (not raised)

    @property
    def gap(self) -> bool:
        """True when later entries wait for missing ones."""
        return bool(self._ahead)

    def offer(self, raw: dict[str, Any]) -> list[Entry]:
        """Take one entry as a dict; return the entries applied now, in order.

        Raises ``MirrorError`` for an entry that does not parse or does not validate. If the
        offered entry is applied but one buffered behind it is refused, the entries applied
        so far are returned (the caller must see them) and the buffer is dropped.
        """
        try:
            entry = Entry.from_dict(raw)
        except LedgerError as exc:
            raise MirrorError(f"unparseable entry: {exc}") from None
        if entry.height < self.next_height:
            return []  # already applied: a duplicate or a replayed event
        if entry.height > self.next_height:
            if len(self._ahead) >= MAX_AHEAD:
                self._ahead.pop(max(self._ahead))
            self._ahead[entry.height] = entry
            return []
        applied = [self._apply(entry)]
        while self.next_height in self._ahead:
            try:
                applied.append(self._apply(self._ahead.pop(self.next_height)))
            except MirrorError:  # _apply cleared the buffer; the gap is fetched again
                self.discarded += 1
                break
        return applied

    def _apply(self, entry: Entry) -> Entry:
        try:
            if self.state is None:
                if self.genesis_hash is not None and entry.hash != self.genesis_hash:
                    raise MirrorError(
                        f"genesis {entry.hash[:12]} is not the configured {self.genesis_hash[:12]}"
                    )
                self.state = LedgerState.from_genesis(entry)
                self.state.light = True  # entries come compact (ledger_lite/detached.py)
            else:
                self.state.apply(entry)
        except MirrorError:
            self._ahead.clear()  # what was buffered behind a bad entry cannot be trusted
            raise
        except LedgerError as exc:
            self._ahead.clear()
            raise MirrorError(f"entry {entry.height} refused: {exc}") from None
        self.next_height = entry.height + 1
        self.tip_hash = entry.hash
        return entry
