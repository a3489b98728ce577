"""The Raft loop side of a `Replica`: the thread that runs pysyncobj, and its callbacks.

Threads and acknowledgement
    The Raft loop thread (``ledger-raft-PORT``) runs pysyncobj's event loop; applying a
    command there only records (index, arguments, waiting callers). After each loop turn
    the batch goes to the apply worker (``ledger-apply-PORT``), which validates, folds and
    writes the whole batch — entries plus the last applied Raft index — in ONE SQLite
    transaction (one fsync), and only then acknowledges: `submit` callbacks and `on_append`
    callbacks run after the entries are durable on this replica, in height order. Signature
    checks thus never delay Raft heartbeats, and commits are grouped under load.

Snapshots
    pysyncobj asks for a snapshot on log compaction (`_serialize`) and loads one at start or
    from the leader (`_deserialize`); both run on the Raft loop and only hand a job to the
    apply worker, in order with the commands around it, which writes or installs the chain
    (`replica_apply`, `replica_snapshot`).

Each loop turn also resends the submissions due for a retry, and every STATUS_PERIOD_S it
times out those past their deadline and publishes the status `Replica.status` reads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pysyncobj import _RAFT_STATE

from .errors import DecodeError
from .replica_apply import InstallJob, Item, SnapshotJob
from .replica_raft import RaftTiming
from .replica_snapshot import read_header
from .replica_submit import _Submissions

# The replica's logger: one name for everything a Replica logs, as before the split.
log = logging.getLogger("ledger_lite.replica")

STATUS_PERIOD_S = 0.05  # how often the Raft loop publishes its status

RoleCallback = Callable[[bool], None]


class _RaftLoop(_Submissions):
    """The Raft loop thread and pysyncobj's callbacks; a base class of `Replica`.

    The attributes below are set by `Replica.__init__`; apart from ``_status`` (replaced
    whole) and ``on_role``, only the Raft loop thread touches them.
    """

    address: str
    timing: RaftTiming
    on_role: list[RoleCallback]
    _dump: str
    _stopping: threading.Event
    _staged: list[Item]
    _handed_index: int
    _snapshot_job: SnapshotJob | None
    _is_leader: bool
    _status: dict[str, Any]

    def _run_raft(self) -> None:
        next_status = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    self._node.doTick(self.timing.tick_s)
                except Exception:  # pysyncobj's own loop logs and goes on; so do we
                    log.exception("Raft loop turn failed on %s", self.address)
                    self._stopping.wait(self.timing.tick_s)
                self._handoff()
                now = time.monotonic()
                self._resubmit(now)
                if now >= next_status:  # every STATUS_PERIOD_S, not every turn
                    self._expire(now)
                    self._publish_status()
                    next_status = now + STATUS_PERIOD_S
        finally:
            self._node.destroy()  # autoTick off: closes sockets and the journal right here

    def _on_apply(
        self, index: int, args: tuple[Any, ...] | None, kwargs: dict[str, Any] | None
    ) -> int | None:
        """pysyncobj applies the command at `index`: stage it for the worker."""
        if index <= self._handed_index:
            return None  # applied before a restart (or inside an installed snapshot)
        self._handed_index = index
        if args is not None and kwargs:
            args = ()  # a command with keywords is malformed: refused by the worker
        item = Item(index, args)
        self._staged.append(item)
        self._staged_by_index[index] = item
        return index

    def _handoff(self) -> None:
        """Pass what the Raft loop staged to the worker, in log order (Raft loop thread)."""
        if self._snapshot_job is not None:  # its commands were handed on before it was made
            self._worker.put(self._snapshot_job)
            self._snapshot_job = None
        if self._staged:
            self._worker.put(self._staged)
            self._staged = []
            self._staged_by_index = {}

    def _publish_status(self) -> None:
        node = self._node
        self._status = {
            "leader": node.leader_address(),
            "is_leader": node._isLeader(),
            "term": node.raftCurrentTerm,
            "commit_index": node.raftCommitIndex,
            "raft_applied": node.raftLastApplied,
            "has_quorum": node.hasQuorum,
        }

    def _on_state_changed(self, old: int, new: int) -> None:
        is_leader = new == _RAFT_STATE.LEADER
        if is_leader == self._is_leader:
            return
        self._is_leader = is_leader
        log.info("%s is %s", self.address, "now the leader" if is_leader else "no longer leader")
        for callback in list(self.on_role):
            try:
                callback(is_leader)
            except Exception:
                log.exception("on_role callback %r failed", callback)

    # -- snapshots (called by pysyncobj on the Raft loop) ---------------------------------

    def _serialize(self, tmp_file: str, data: Any) -> None:
        """Log compaction: let the worker write the chain as of the last applied index.

        pysyncobj renames `tmp_file` over the dump as soon as this returns, so `tmp_file`
        is the current dump (a hard link: the rename is then a no-op) or, the first time,
        an empty placeholder. The job reaches the worker only at the next `_handoff`, after
        that rename, so the worker's new dump can never be replaced by the old one; its
        `take_snapshot_state` reports SUCCESS once the new dump is in place, and only then
        does pysyncobj drop the log entries the snapshot covers.
        """
        last, prev = data[0], data[1]
        self._handoff()  # every command up to `last` goes to the worker before the job
        Path(tmp_file).unlink(missing_ok=True)
        if os.path.isfile(self._dump):
            os.link(self._dump, tmp_file)
        else:
            Path(tmp_file).touch()
        self._worker.begin_snapshot()
        record = (bytes(last[0]), last[1], last[2]), (bytes(prev[0]), prev[1], prev[2])
        self._snapshot_job = SnapshotJob(*record)

    def _deserialize(self, file_name: str) -> tuple[Any, ...]:
        """pysyncobj loads a snapshot (ours at start, or one received from the leader).

        Reads only the header here; if the snapshot is ahead of this replica, a hard link
        to it goes to the worker, which validates and installs the missing entries in
        order with the commands around it. Raises DecodeError for a malformed or foreign
        snapshot (pysyncobj then keeps its log as it was).
        """
        header = read_header(file_name)
        if header.genesis != self._worker.state.genesis_hash:
            raise DecodeError("snapshot of a ledger with another genesis")
        self._handoff()
        if header.raft_index > self._handed_index:
            link = Path(f"{self._dump}.install.{header.raft_index}")
            link.unlink(missing_ok=True)
            os.link(file_name, link)
            self._worker.put(InstallJob(link, header))
            self._handed_index = header.raft_index
        return header.last, header.prev, []
