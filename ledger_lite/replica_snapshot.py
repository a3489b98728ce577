"""Raft snapshots of a replicated ledger: the whole chain in a plain, pickle-free file.

pysyncobj compacts its Raft log by writing a "full dump" and sends that file, in chunks,
to a follower that has fallen behind the compacted log. Its default dump is a pickle of
the replicated object, which a follower would unpickle straight from the network; this
module replaces it with a format that is only ever *parsed*:

    MAGIC                                   b"ledger-lite snapshot 1\\n"
    u32 big-endian length, header           canonical JSON (below), at most MAX_HEADER_BYTES
    height+1 records                        u32 big-endian length, canonical entry body

The header is ``{"genesis", "height", "tip", "last", "prev"}``: the genesis hash, the height
and tip hash of the chain in the file, and the two Raft log records pysyncobj keeps beside
a dump, ``[command hex, index, term]`` for the last applied index and the one before. The
commands are pysyncobj's own bytes: this module never decodes them (they are replayed to
lagging followers as opaque Raft entries, and only ever unpickled by the restricted
unpickler of `replica`).

A reader checks sizes before reading, parses each body with the strict `Entry.from_bytes`,
and checks it is canonical and at the expected height; whoever installs the entries still
validates every one of them with `LedgerState` (signatures included). Any malformed input
raises `DecodeError` and nothing else.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .canonical import canonical_bytes
from .entry import MAX_ENTRY_BYTES, Entry, is_hex64, is_uint
from .errors import DecodeError
from .files import fsync_dir as _fsync_dir

MAGIC = b"ledger-lite snapshot 1\n"
MAX_HEADER_BYTES = 1024 * 1024
_LEN = struct.Struct(">I")

RaftRecord = tuple[bytes, int, int]
"""One pysyncobj log record: (command bytes, index, term)."""


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot holds: the chain up to `height` (tip `tip`) as of Raft index
    ``last[1]``; `last` and `prev` are the Raft records pysyncobj keeps beside the dump."""

    genesis: str
    height: int
    tip: str
    last: RaftRecord
    prev: RaftRecord

    @property
    def raft_index(self) -> int:
        """The Raft log index this snapshot is the state after."""
        return self.last[1]

    def to_bytes(self) -> bytes:
        """The canonical JSON of the header."""
        return canonical_bytes(
            {
                "genesis": self.genesis,
                "height": self.height,
                "tip": self.tip,
                "last": [self.last[0].hex(), self.last[1], self.last[2]],
                "prev": [self.prev[0].hex(), self.prev[1], self.prev[2]],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SnapshotHeader:
        """Parse a header; raises only DecodeError."""
        try:
            d = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise DecodeError("snapshot: header is not JSON") from None
        if not isinstance(d, dict) or set(d) != {"genesis", "height", "tip", "last", "prev"}:
            raise DecodeError("snapshot: header fields are not genesis/height/tip/last/prev")
        if not (is_hex64(d["genesis"]) and is_hex64(d["tip"]) and is_uint(d["height"])):
            raise DecodeError("snapshot: bad genesis, tip or height in header")
        last, prev = _record(d["last"]), _record(d["prev"])
        if prev[1] + 1 != last[1]:
            raise DecodeError("snapshot: Raft records are not consecutive")
        return cls(d["genesis"], d["height"], d["tip"], last, prev)


def _record(value: Any) -> RaftRecord:
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)):
        raise DecodeError("snapshot: a Raft record is not [hex, index, term]")
    if not (is_uint(value[1]) and is_uint(value[2])):
        raise DecodeError("snapshot: a Raft record has a bad index or term")
    try:
        command = bytes.fromhex(value[0])
    except ValueError:
        raise DecodeError("snapshot: a Raft record's command is not hex") from None
    if not command:
        raise DecodeError("snapshot: a Raft record has an empty command")
    return command, value[1], value[2]


def write_snapshot(
    path: str | os.PathLike[str], header: SnapshotHeader, bodies: Iterable[bytes]
) -> None:
    """Write a snapshot to `path` atomically: a temporary file, fsynced, then renamed.

    `bodies` are the canonical entry bodies of heights 0..header.height, in order (as
    `SqliteStore.bodies` yields them). Raises ValueError if their number is not
    header.height + 1 (the temporary file is removed), OSError on I/O trouble.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.writing")
    try:
        with open(tmp, "wb") as fh:
            head = header.to_bytes()
            fh.write(MAGIC + _LEN.pack(len(head)) + head)
            count = 0
            for body in bodies:
                fh.write(_LEN.pack(len(body)))
                fh.write(body)
                count += 1
            if count != header.height + 1:
                raise ValueError(f"snapshot: {count} bodies for height {header.height}")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_exact(fh: IO[bytes], n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise DecodeError(f"snapshot: truncated in {what}")
    return data


def _read_header(fh: IO[bytes]) -> SnapshotHeader:
    if _read_exact(fh, len(MAGIC), "magic") != MAGIC:
        raise DecodeError("snapshot: not a ledger-lite snapshot (bad magic)")
    (size,) = _LEN.unpack(_read_exact(fh, _LEN.size, "header length"))
    if size > MAX_HEADER_BYTES:
        raise DecodeError(f"snapshot: header of {size} bytes is over {MAX_HEADER_BYTES}")
    return SnapshotHeader.from_bytes(_read_exact(fh, size, "header"))


def read_header(path: str | os.PathLike[str]) -> SnapshotHeader:
    """The header of the snapshot at `path`. Raises DecodeError if it is not one, OSError
    if it cannot be read."""
    with open(path, "rb") as fh:
        return _read_header(fh)


def iter_entries(path: str | os.PathLike[str], from_height: int = 0) -> Iterator[Entry]:
    """Yield the entries of heights `from_height`..header.height, parsed and checked for
    shape only (strict JSON, canonical bytes, the expected height).

    Records below `from_height` are skipped by their length without being parsed. Raises
    DecodeError on any malformed or truncated record, OSError if unreadable. The caller
    still has to validate the entries against its chain.
    """
    with open(path, "rb") as fh:
        header = _read_header(fh)
        for height in range(header.height + 1):
            (size,) = _LEN.unpack(_read_exact(fh, _LEN.size, f"record {height}"))
            if size > MAX_ENTRY_BYTES:
                raise DecodeError(f"snapshot: record {height} is over {MAX_ENTRY_BYTES} bytes")
            if height < from_height:
                fh.seek(size, os.SEEK_CUR)
                continue
            body = _read_exact(fh, size, f"record {height}")
            entry = Entry.from_bytes(body)
            if entry.height != height or entry.canonical() != body:
                raise DecodeError(f"snapshot: record {height} is not the canonical entry there")
            yield entry
        if fh.read(1):
            raise DecodeError("snapshot: trailing bytes after the last record")
