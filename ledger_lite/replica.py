"""A ledger replicated among gateways by Raft (pysyncobj): any replica accepts, all validate.

How replication works
    Each gateway runs one `Replica`. A signed transaction submitted on any replica becomes
    a Raft command (the transaction as a plain dict); pysyncobj forwards it to the leader,
    which orders it in the Raft log. Once a majority holds it, the command is committed
    and every replica *applies* it in log order: chain the transaction at the local tip,
    validate it with `LedgerState` (signature, enrolment, revocation, expiry, role, payload
    schema, linkage, replay) and append it — or refuse it with a reason and append
    nothing. Validation is a pure function of the chain, so every replica builds the same
    chain entry for entry, and a refused command is a log index that appends nothing
    anywhere. The submitting replica answers its caller with its own outcome.

Where the parts are
    `Replica` (here) opens the store, wires the parts together, serves reads and stops.
    Its base classes hold the rest: `replica_loop` the Raft loop thread and pysyncobj's
    callbacks (threads and acknowledgement, snapshots), `replica_submit` the life of one
    submission (retries, timeouts, answers). `replica_apply` is the apply worker,
    `replica_raft` everything that touches pysyncobj, `replica_snapshot` the snapshot file.

Durability, restart and catch-up
    SQLite (WAL, synchronous=FULL) holds the chain and ``meta.raft_index``, the last Raft
    index applied, moved in the same transaction: after a crash at any moment they agree,
    and the chain is never half-written. pysyncobj keeps the Raft log, term and vote in a
    journal file (``PATH.raft`` and ``PATH.raft.meta``); on restart it replays that log:
    commands at indices up to ``raft_index`` are skipped, later ones applied as new. The
    leader then sends what the replica missed — from its log, or as a snapshot when it has
    compacted past it. Snapshots (``PATH.snap``, taken every `compact_entries` log entries)
    hold the chain in a pickle-free format (`replica_snapshot`), written by the apply
    worker; a replica that receives one checks that it extends its own chain, validates
    every entry it lacks, and installs them in one transaction. On start the stored chain
    is re-verified (`SqliteStore`): a tampered store raises `CorruptStore`, and the replica
    does not start. With an `anchor` (`ledger_lite.anchor`: the head this gateway
    acknowledged), a store that came back shorter than it (a damaged WAL, a deleted file)
    starts anyway and re-applies what it lost from its Raft journal, the leader's log or a
    snapshot; it is checked against the anchor once back at its size. A store that differs
    from the anchor raises `LostEntries`. A replica that finds its chain diverging from the
    cluster's (which only a store written behind its back can cause) stops and says so.

Limits (mostly pysyncobj's)
    Crash faults only: peers are trusted to follow Raft; see `replica_raft` for the
    restricted unpickling of its pickled messages and the ``password`` option. Its journal
    is written through mmap and not fsynced, so it survives a killed process but not
    necessarily a power cut (SQLite's part does). Under load it logs CRITICAL "truncating
    already-applied log entries" when a late acknowledgement makes the leader resend
    entries a follower already holds: they are the same entries (same term), nothing is
    re-applied. A big catch-up is validated on the apply worker, so Raft stays responsive,
    but a snapshot transfer re-sends the whole chain (compaction every `compact_entries`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .anchor import AnchorCheck
from .entry import Entry
from .errors import LedgerError
from .keys import SigningKey
from .replica_apply import RAFT_INDEX_KEY, ApplyWorker, Item, SnapshotJob
from .replica_loop import STATUS_PERIOD_S as STATUS_PERIOD_S
from .replica_loop import RoleCallback, _RaftLoop
from .replica_raft import RaftNode, RaftTiming, install_safe_unpickler, make_conf
from .replica_submit import DEFAULT_SUBMIT_TIMEOUT_S as DEFAULT_SUBMIT_TIMEOUT_S
from .replica_submit import RETRY_DELAY_S as RETRY_DELAY_S
from .replica_submit import ReplicationError, _Pending
from .replica_submit import SubmitCallback as SubmitCallback
from .state import LedgerState
from .store import SqliteStore

log = logging.getLogger(__name__)

__all__ = ["RAFT_INDEX_KEY", "RaftTiming", "Replica", "ReplicationError"]

AppendCallback = Callable[[Entry], None]


class Replica(_RaftLoop):
    """One replica of a Raft-replicated ledger. See the module docstring for how it works.

    `Replica(self_addr, peers, path, genesis)` opens (and re-verifies) or creates the
    SQLite ledger at `path`, binds the Raft port at `self_addr` ("host:port"), and starts
    replicating with `peers` (the other replicas' addresses; the membership is fixed).
    `genesis` is required when `path` holds no ledger yet; when it does, a given genesis
    must be the stored one. Every replica of a cluster starts from the same genesis.

    `anchor` (a path, e.g. ``anchor.anchor_path_for(path)``) keeps the acknowledged head
    there, signed with `key` as `gateway_id` when given; see the module docstring.

    Raises CorruptStore(height) if the stored chain fails verification, LostEntries if it
    differs from the anchor, AnchorError for a damaged anchor, LedgerError for a
    missing or different genesis, ValueError for a bad address or timing, OSError if the
    port cannot be bound, ImportError for a `password` without the cryptography package.

    Files beside `path`: ``PATH.raft`` and ``PATH.raft.meta`` (Raft journal, term, vote),
    ``PATH.snap`` (the latest snapshot). They belong with the ledger file: back them up
    and restore them together. Deleting only them makes the replica fetch everything again
    from the leader (it skips what its SQLite file holds), but also forgets its Raft vote:
    do it only while the other replicas are up and agree on a leader.

    Callbacks: `on_append` (Entry) after each entry is durable here, in height order, on
    the apply worker thread; `on_role` (bool) when this replica becomes or stops being the
    leader, on the Raft loop thread. Keep them short; a callback that raises is logged.
    """

    def __init__(
        self,
        self_addr: str,
        peers: Sequence[str],
        path: str | os.PathLike[str],
        genesis: Entry | None = None,
        *,
        timing: RaftTiming | None = None,
        compact_entries: int = 20_000,
        compact_interval_s: float = 3600.0,
        password: str | None = None,
        bind_addr: str | None = None,
        autostart: bool = True,
        anchor: str | os.PathLike[str] | None = None,
        key: SigningKey | None = None,
        gateway_id: str | None = None,
    ) -> None:
        _check_addr(self_addr)
        for peer in peers:
            _check_addr(peer)
        self.address = self_addr
        self.peers: tuple[str, ...] = tuple(sorted(set(peers) - {self_addr}))
        self.path = Path(path)
        self.timing = timing if timing is not None else RaftTiming()
        self.on_role: list[RoleCallback] = []
        self._journal = f"{self.path}.raft"
        self._dump = f"{self.path}.snap"
        self._lock = threading.Lock()  # pending submissions, retries, snapshot state
        self._inflight: set[_Pending] = set()
        self._retries: deque[tuple[float, _Pending]] = deque()
        self._staged: list[Item] = []  # Raft loop only: applied this turn
        self._staged_by_index: dict[int, Item] = {}
        self._snapshot_job: SnapshotJob | None = None  # made by _serialize, queued after it
        self._stopping = threading.Event()
        self._closed = False
        self._failure: BaseException | None = None
        self._is_leader = False
        self._status: dict[str, Any] = {}
        port = self_addr.rsplit(":", 1)[1]
        check = None if anchor is None else AnchorCheck(self.path, anchor, allow_behind=True)
        self._store = SqliteStore(self.path, check=check)
        try:
            state = self._open_state(genesis)
            anchorer = None
            if check is not None:
                anchorer = check.anchorer(state, key=key, gateway_id=gateway_id)
                if check.behind is not None:
                    log.warning(
                        "%s holds %d entries but this gateway acknowledged %d (anchor %s): "
                        "fetching the lost entries from the Raft journal and the peers",
                        self.path,
                        check.behind.held,
                        check.behind.acknowledged,
                        check.anchor_path,
                    )
                anchorer.write()  # what the store holds beyond the anchor (nothing if behind)
            self._worker = ApplyWorker(
                self._store,
                state,
                self._dump,
                f"ledger-apply-{port}",
                self._resolve,
                self._fail,
                anchorer,
            )
            self.on_append: list[AppendCallback] = self._worker.on_append
            self._handed_index = self._worker.durable.index  # Raft loop: last index handed on
            self._clean_files()
            install_safe_unpickler()
            conf = make_conf(
                self.timing,
                bind_addr=bind_addr or self_addr,
                journal_file=self._journal,
                dump_file=self._dump,
                serializer=self._serialize,
                deserializer=self._deserialize,
                serialize_checker=self._worker.take_snapshot_state,
                on_state_changed=self._on_state_changed,
                compact_entries=compact_entries,
                compact_interval_s=compact_interval_s,
                password=password,
            )
            self._node = RaftNode(self._on_apply, self_addr, list(self.peers), conf)
        except BaseException:
            self._store.close()
            raise
        self._loop = threading.Thread(
            target=self._run_raft, name=f"ledger-raft-{port}", daemon=True
        )
        self._started = False
        if autostart:
            self.start()
        log.info(
            "replica %s of %s: height %d, raft index %d, peers %s",
            self_addr,
            self.path,
            self.height,
            self.applied_index,
            ", ".join(self.peers) or "none",
        )

    def start(self) -> None:
        """Start replicating (idempotent). Only needed with ``autostart=False``, which lets a
        caller read the stored entries and register `on_append`/`on_role` first, so that it
        misses no callback (entries committed before a restart are applied right after
        this; an election can only happen after it)."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        self._worker.start()
        self._loop.start()

    def _open_state(self, genesis: Entry | None) -> LedgerState:
        state = self._store.verified_state
        if state is None:
            if genesis is None:
                raise LedgerError(f"{self.path} holds no ledger and no genesis was given")
            state = LedgerState.from_genesis(genesis)
            self._store.append(genesis)
        elif genesis is not None and genesis.hash != state.genesis_hash:
            raise LedgerError(f"{self.path} holds the ledger of another genesis")
        return state

    def _clean_files(self) -> None:
        """Remove leftovers of a crash: an empty snapshot placeholder, stale install links."""
        dump = Path(self._dump)
        if dump.is_file() and dump.stat().st_size == 0:
            dump.unlink()
        for leftover in dump.parent.glob(f"{dump.name}.install.*"):
            leftover.unlink(missing_ok=True)
        dump.with_name(f"{dump.name}.writing").unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this replica believes it is the Raft leader (briefly, two may)."""
        return bool(self._node._isLeader())

    @property
    def leader(self) -> str | None:
        """Address of the last known leader, or None during an election."""
        return self._node.leader_address()

    @property
    def tip(self) -> str:
        """Hash of the last durable entry."""
        return self._worker.durable.tip

    @property
    def height(self) -> int:
        """Height of the last durable entry (0: only the genesis)."""
        return self._worker.durable.height

    @property
    def applied_index(self) -> int:
        """The last Raft log index durably applied here."""
        return self._worker.durable.index

    @property
    def state(self) -> LedgerState:
        """The live ledger state, read-only to callers. The apply worker updates it; it may
        run a batch ahead of `height` until that batch is durable."""
        return self._worker.state

    @property
    def swarm(self) -> str:
        """The swarm id named in the genesis."""
        return self._worker.state.swarm

    @property
    def behind_anchor(self) -> int | None:
        """While the store is below its anchor: the entries the anchor covers; else None."""
        anchorer = self._worker.anchorer
        return anchorer.acknowledged if anchorer is not None and anchorer.behind else None

    @property
    def counters(self) -> dict[str, int]:
        """snapshots_written, snapshots_installed, refused (commands this replica refused)."""
        return dict(self._worker.counters)

    @property
    def failure(self) -> BaseException | None:
        """Why the replica stopped serving, or None while it serves."""
        return self._failure

    def entries(self, from_height: int = 0, limit: int | None = None) -> list[Entry]:
        """Durable entries from `from_height` on, in order, at most `limit` of them."""
        return self._store.range(from_height, limit)

    def get(self, height: int) -> Entry | None:
        """The durable entry at `height`, or None."""
        return self._store.get(height)

    def status(self) -> dict[str, Any]:
        """A snapshot of this replica's view (refreshed every STATUS_PERIOD_S): self,
        leader, is_leader, term, commit_index, raft_applied, has_quorum, applied_index,
        height, tip, in_flight, failed, and the counters."""
        durable = self._worker.durable
        with self._lock:
            in_flight = len(self._inflight)
        return {
            "self": self.address,
            **self._status,
            "leader": self.leader,
            "is_leader": self.is_leader,
            "applied_index": durable.index,
            "height": durable.height,
            "tip": durable.tip,
            "in_flight": in_flight,
            "failed": None if self._failure is None else str(self._failure),
            "behind_anchor": self.behind_anchor,
            **self._worker.counters,
        }

    # -- lifecycle -----------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Stop serving after a fault the replica cannot repair by itself (worker thread)."""
        log.critical("replica %s stops: %s", self.address, exc)
        with self._lock:
            if self._failure is None:
                self._failure = exc
            stuck = list(self._inflight)
        self._stopping.set()
        for p in stuck:
            self._finish(p, None, ReplicationError("failed", str(exc)))

    def close(self, timeout: float = 10.0) -> None:
        """Stop replicating, finish applying what was committed, close the files.

        Submissions still undecided get ReplicationError("closed"). Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        if not self._started:
            self._node.destroy()  # never ticked: nothing staged, nothing to apply
        elif threading.current_thread() is not self._loop:
            self._loop.join(timeout)
        self._handoff()  # the loop has stopped: what it staged last goes to the worker
        self._worker.stop(timeout)
        with self._lock:
            stuck = list(self._inflight)
        for p in stuck:
            self._finish(p, None, ReplicationError("closed", "the replica was closed"))
        self._store.close()
        log.info("replica %s closed at height %d", self.address, self.height)

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Replica({self.address!r}, {str(self.path)!r}, height={self.height})"


def _check_addr(addr: str) -> None:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a replica address is host:port, got {addr!r}")
