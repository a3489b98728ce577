"""A ledger as JSON lines: each entry's canonical bytes on a line of its own, in height order.

What an agent keeps of the chain it verified (edge_swarm's ``node/ledger_copy.py`` writes
it), so that a site that lost its gateway's ledger and has no replica left can rebuild it
from any agent: ``ledger-lite recover --from state/agent-03/ledger.jsonl --to FILE``.

Reading takes untrusted bytes and believes nothing: each line must decode as an entry
(``Entry.from_bytes``, at most ``MAX_ENTRY_BYTES``), heights must run 0, 1, 2, ...; the
chain itself (signatures, policy, linkage) is verified by whoever uses it (the agent's
mirror, or ``recover``, which verifies from genesis as a replica does on open). A torn last
line (a power cut while it was written) is not an error: it is dropped and counted. Any
other bad line ends the copy there (``JsonlCopy.bad`` says where and why): everything
before it is still usable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .entry import MAX_ENTRY_BYTES, Entry
from .errors import DecodeError

MAX_COPY_BYTES = 1 << 30
"""The most of a copy file that is read (a copy beyond it is read up to there)."""


@dataclass(frozen=True)
class JsonlCopy:
    """The entries read from a copy, and what was left out."""

    entries: list[Entry]
    torn: bool = False  # the last line had no newline: a write cut short, dropped
    bad: str | None = None  # why reading stopped before the end (None: it did not)
    good_bytes: int = 0  # the length of the file's lines that hold ``entries``


def read_copy(path: str | os.PathLike[str], max_bytes: int = MAX_COPY_BYTES) -> JsonlCopy:
    """Read a copy file. Raises FileNotFoundError / OSError for an unreadable file only."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    cut = len(data) > max_bytes
    data = data[:max_bytes]
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline
    torn = last != b"" and not cut
    entries: list[Entry] = []
    good = 0
    for n, line in enumerate(lines):
        if len(line) > MAX_ENTRY_BYTES:
            bad = f"line {n + 1} is over {MAX_ENTRY_BYTES} bytes"
            return JsonlCopy(entries, torn, bad, good)
        try:
            entry = Entry.from_bytes(line)
        except DecodeError as exc:
            return JsonlCopy(entries, torn, f"line {n + 1} is not an entry: {exc}", good)
        if entry.height != n:
            return JsonlCopy(entries, torn, f"line {n + 1} holds height {entry.height}", good)
        entries.append(entry)
        good += len(line) + 1
    bad = f"only the first {max_bytes} bytes were read" if cut else None
    return JsonlCopy(entries, torn, bad, good)


def entry_line(entry: Entry) -> bytes:
    """The line that holds ``entry`` in a copy (canonical JSON has no newline in it)."""
    return entry.canonical() + b"\n"


def is_copy_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a JSON-lines copy (by its suffix) rather than a SQLite file."""
    return Path(path).suffix == ".jsonl"
