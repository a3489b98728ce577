"""The pysyncobj side of a `Replica`: configuration, the replicated commands, safe unpickling.

Everything that touches pysyncobj lives here, so `replica` reads as ledger logic.

- `RaftTiming`: every timing constant of the Raft layer, with units, in one frozen value
  (tests shrink them instead of sleeping).
- `RaftNode`: a `SyncObj` with two replicated commands, ``apply_tx(tx_dict)`` and
  ``barrier()``. pysyncobj calls them on every replica in Raft log order once committed;
  both only hand the log index and arguments to the owner's ``on_apply`` (the ledger work
  happens on the owner's apply worker, not on the Raft event loop).
- `install_safe_unpickler`: pysyncobj pickles every message between replicas and unpickles
  whatever arrives on its port, before knowing who sent it. We replace its ``loads``/``load``
  with an unpickler that builds plain data only (dict, list, tuple, str, bytes, int, float,
  bool, None): any other global is refused, so a forged message cannot run code. pysyncobj's
  own messages are plain data as long as dynamic membership stays off (it is: membership is
  fixed by configuration). Peers are still trusted to follow Raft (crash faults, not
  Byzantine ones); set a ``password`` (needs the ``cryptography`` package) to authenticate
  and encrypt the links so that only holders of the cluster secret can talk Raft at all.

Depends on pysyncobj internals in two places, both checked by the tests: the module
attributes ``pysyncobj.pickle.loads``/``load`` (which its transport and apply path call at
call time), and ``raftLastApplied + 1`` being the index of the command being applied.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import pysyncobj.pickle as _pso_pickle
from pysyncobj import SyncObj, SyncObjConf, SyncObjException, replicated

ApplyHook = Callable[[int, "tuple[Any, ...] | None", "dict[str, Any] | None"], "int | None"]


@dataclass(frozen=True)
class RaftTiming:
    """Timing of the Raft layer, in seconds.

    append_period_s: one replication round (append_entries) per period; pysyncobj commits
        once per round, so this bounds commit latency and, with callbacks in flight,
        throughput (DESIGN: ~10 ms gives ~3,000 appends/s on loopback).
    tick_s: longest wait of one event-loop turn; a new submission waits at most this long
        before the loop sees it.
    election_min_s / election_max_s: a follower that hears no leader for a random time in
        this range starts an election (must exceed 3 x append_period_s).
    connect_retry_s: delay between attempts to reconnect to a peer that went away.
    connection_timeout_s: a link silent for this long is considered dead.
    leader_fallback_s: a leader without answers from a majority for this long steps down.
    """

    append_period_s: float = 0.01
    tick_s: float = 0.005
    election_min_s: float = 0.4
    election_max_s: float = 1.4
    connect_retry_s: float = 0.5
    connection_timeout_s: float = 3.5
    leader_fallback_s: float = 5.0


def make_conf(
    timing: RaftTiming,
    *,
    bind_addr: str,
    journal_file: str,
    dump_file: str,
    serializer: Callable[[str, Any], None],
    deserializer: Callable[[str], tuple[Any, ...]],
    serialize_checker: Callable[[], int],
    on_state_changed: Callable[[int, int], None],
    compact_entries: int,
    compact_interval_s: float,
    password: str | None,
) -> SyncObjConf:
    """The pysyncobj configuration of a replica. Raises ValueError for inconsistent timing."""
    conf = SyncObjConf(
        autoTick=False,  # the replica runs the event loop itself (see Replica._run_raft)
        appendEntriesPeriod=timing.append_period_s,
        raftMinTimeout=timing.election_min_s,
        raftMaxTimeout=timing.election_max_s,
        connectionRetryTime=timing.connect_retry_s,
        connectionTimeout=max(timing.connection_timeout_s, timing.election_max_s),
        leaderFallbackTimeout=timing.leader_fallback_s,
        commandsWaitLeader=True,  # queue submissions during an election instead of failing
        dynamicMembershipChange=False,  # fixed membership: keeps every message plain data
        bindAddress=bind_addr,  # pysyncobj would otherwise listen on 0.0.0.0
        journalFile=journal_file,
        fullDumpFile=dump_file,
        serializer=serializer,
        deserializer=deserializer,
        serializeChecker=serialize_checker,
        logCompactionMinEntries=compact_entries,
        logCompactionMinTime=compact_interval_s,
        onStateChanged=on_state_changed,
        password=password,
        maxBindRetries=5,
        bindRetryTime=0.2,
    )
    try:
        conf.validate()
    except AssertionError:
        raise ValueError("inconsistent Raft timing or compaction settings") from None
    return conf


class RaftNode(SyncObj):  # type: ignore[misc]
    """A pysyncobj node whose replicated commands call `on_apply(index, args, kwargs)`.

    ``apply_tx(tx_dict, callback=cb)`` submits a transaction; ``barrier(callback=cb)`` an
    empty command (a read barrier). Both are applied on the Raft loop thread; `on_apply`
    returns the log index (the result pysyncobj passes to `cb`) or None to say "already
    applied before a restart". For a barrier, args and kwargs are None.
    """

    def __init__(
        self, on_apply: ApplyHook, self_addr: str, peers: list[str], conf: SyncObjConf
    ) -> None:
        self._on_apply = on_apply
        try:
            super().__init__(self_addr, peers, conf)
        except SyncObjException as exc:  # pysyncobj's only failure here: "BindError"
            raise OSError(f"cannot listen on {conf.bindAddress}: {exc}") from None

    @replicated  # type: ignore[misc]
    def apply_tx(self, *args: Any, **kwargs: Any) -> int | None:
        # Arguments come off the Raft log as data; the owner checks their shape.
        return self._on_apply(self.raftLastApplied + 1, args, kwargs)

    @replicated  # type: ignore[misc]
    def barrier(self, *args: Any, **kwargs: Any) -> int | None:
        return self._on_apply(self.raftLastApplied + 1, None, None)

    def leader_address(self) -> str | None:
        """Address of the last known leader, or None during an election."""
        node = self._getLeader()
        return None if node is None else str(getattr(node, "address", node.id))


# -- safe unpickling -----------------------------------------------------------------------


def _latin1_bytes(text: object, encoding: object) -> bytes:
    # Pickle protocol 2 (pysyncobj's) encodes bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("refusing _codecs.encode other than str/latin1")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    # ... and the empty bytes as bytes().
    if args:
        raise pickle.UnpicklingError("refusing bytes() with arguments")
    return b""


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., bytes]] = {
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,  # protocol 2 names builtins the Python 2 way
    ("builtins", "bytes"): _empty_bytes,
}


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def safe_loads(data: bytes | str) -> Any:
    """Unpickle plain data; raises pickle.UnpicklingError (or another error of malformed
    input) for anything else. Never falls back to an unrestricted unpickler."""
    return PlainDataUnpickler(io.BytesIO(_pso_pickle.to_bytes(data))).load()


def safe_load(fh: IO[bytes]) -> Any:
    """`safe_loads` for a file object."""
    return PlainDataUnpickler(fh).load()


def install_safe_unpickler() -> None:
    """Make pysyncobj unpickle with `PlainDataUnpickler` (idempotent, process-wide).

    pysyncobj's transport and apply path call ``pysyncobj.pickle.loads`` through the
    module attribute at call time, so replacing it covers every message and every command
    taken off the Raft log. (Its journal's meta file, local and written by itself, is read
    with a reference bound at import; it holds plain data too.)
    """
    _pso_pickle.loads = safe_loads
    _pso_pickle.load = safe_load
