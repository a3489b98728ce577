"""The Raft-replicated ledger (ledger_lite.replica) on real pysyncobj over loopback.

In-process clusters (fast, Raft timing shrunk) check the API, refusals through the cluster,
restart and snapshot catch-up; clusters of real processes (tests/replica_proc.py) are
SIGKILLed: the leader mid-stream, and one replica over and over during heavy appending.
Every wait polls a condition with a deadline; the only sleeps are the random moments at
which the crash loop kills.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ledger_lite import CorruptStore, Entry, LedgerError, Refused, SqliteStore, Tx, make_tx
from ledger_lite import errors as E
from ledger_lite.errors import DecodeError
from ledger_lite.replica import RAFT_INDEX_KEY, Replica, ReplicationError
from ledger_lite.replica_raft import RaftTiming, install_safe_unpickler, safe_loads
from ledger_lite.replica_snapshot import SnapshotHeader, iter_entries, read_header, write_snapshot
from ledger_lite.verify import verify_file

from .replica_proc import ReplicaProcess, free_port, free_ports, wait_until
from .test_ledger_support import ADMIN_KEY, SWARM, T0, delta_commit, genesis, seed_key

FAST = RaftTiming(
    append_period_s=0.01, election_min_s=0.15, election_max_s=0.35, connect_retry_s=0.1
)
N_AGENTS = 6


# --------------------------------------------------------------------------- builders


class Txs:
    """Signed transactions for a swarm of N_AGENTS agents and one gateway, unique ts."""

    def __init__(self) -> None:
        self.keys = {f"a{i}": seed_key(40 + i) for i in range(N_AGENTS)}
        self.keys["gw1"] = seed_key(60)
        self.ts = T0 + 1

    def next_ts(self) -> int:
        self.ts += 1
        return self.ts

    def enrolls(self) -> list[Tx]:
        out = []
        for node, key in self.keys.items():
            role = "gateway" if node.startswith("gw") else "agent"
            payload = {"node": node, "role": role, "pubkey": key.public_hex, "expires_ms": None}
            out.append(make_tx(ADMIN_KEY, SWARM, "enroll", "admin", payload, self.next_ts()))
        return out

    def commits(self, n: int) -> list[Tx]:
        """`n` delta commits, authors in turn."""
        out = []
        for i in range(n):
            node = f"a{i % N_AGENTS}"
            payload = delta_commit(node, rnd=1 + i // N_AGENTS)
            out.append(
                make_tx(self.keys[node], SWARM, "delta_commit", node, payload, self.next_ts())
            )
        return out


def stored_hashes(path: Path) -> list[str]:
    """Entry hashes in height order as a ledger file stores them, read-only and unchecked:
    for a file `verify_file` has just found good (it recomputes each from its body)."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return [h for (h,) in db.execute("SELECT hash FROM entries ORDER BY height")]


def copy_ledger(path: Path, to: Path) -> Path:
    """A copy of a ledger file of a killed replica, as it left it (with its WAL), in `to`."""
    to.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", to / f"{path.name}{suffix}")
    return to / path.name


# --------------------------------------------------------------------------- in-process


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    """A factory of in-process replica clusters; everything it made is closed afterwards."""
    made: list[Replica] = []

    def make(n: int = 3, **kw: Any) -> list[Replica]:
        addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        for i, addr in enumerate(addrs):
            made.append(Replica(addr, addrs, tmp_path / f"r{i}.db", genesis(), timing=FAST, **kw))
        reps = made[-n:]
        wait_until(lambda: all(r.leader for r in reps), 10, "a leader known to all")
        return reps

    make.made = made  # type: ignore[attr-defined]
    yield make
    for r in made:
        r.close()


def test_single_replica_appends_restarts_and_skips_its_journal(tmp_path: Path) -> None:
    path = tmp_path / "solo.db"
    addr = f"127.0.0.1:{free_port()}"
    txs = Txs()
    seen: list[int] = []
    with Replica(addr, [], path, genesis(), timing=FAST) as r:
        r.on_append.append(lambda e: seen.append(e.height))
        entries = [r.submit_sync(tx) for tx in txs.enrolls() + txs.commits(20)]
        assert [e.height for e in entries] == list(range(1, 28))
        assert seen == list(range(1, 28))
        assert r.is_leader and r.leader == addr
        assert r.height == 27 and r.tip == entries[-1].hash
        assert r.entries(25) == entries[-3:] and r.get(1) == entries[0]
        index = r.applied_index
    assert SqliteStore(path, verify_only=True).get_meta(RAFT_INDEX_KEY) == index
    # Restart: pysyncobj replays its journal from the start; every command is skipped.
    with Replica(addr, [], path, genesis(), timing=FAST) as r:
        assert r.height == 27 and r.applied_index == index
        r.sync()
        assert r.height == 27 and r.counters["refused"] == 0
        assert r.submit_sync(txs.commits(1)[0]).height == 28
    assert verify_file(path).ok


def test_replica_requires_the_same_genesis(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    with pytest.raises(LedgerError, match="no genesis"):
        Replica(addr, [], tmp_path / "none.db")
    Replica(addr, [], tmp_path / "g.db", genesis(), timing=FAST).close()
    with pytest.raises(LedgerError, match="another genesis"):
        Replica(addr, [], tmp_path / "g.db", genesis(ts=T0 + 5), timing=FAST)


def test_tampered_store_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    addr = f"127.0.0.1:{free_port()}"
    with Replica(addr, [], path, genesis(), timing=FAST) as r:
        for tx in Txs().enrolls():
            r.submit_sync(tx)
    with sqlite3.connect(path) as conn:
        body = bytearray(conn.execute("SELECT body FROM entries WHERE height = 3").fetchone()[0])
        body[body.index(b'"node":"') + 8] ^= 0x01
        conn.execute("UPDATE entries SET body = ? WHERE height = 3", (bytes(body),))
    conn.close()
    with pytest.raises(CorruptStore) as info:
        Replica(addr, [], path, genesis(), timing=FAST)
    assert info.value.height == 3


def test_refusals_through_the_cluster_append_nothing_anywhere(cluster: Any) -> None:
    reps = cluster(3)
    txs = Txs()
    for i, tx in enumerate(txs.enrolls()):
        reps[i % 3].submit_sync(tx)
    revoked = make_tx(ADMIN_KEY, SWARM, "revoke", "admin", {"node": "a5", "reason": "lost"})
    reps[1].submit_sync(revoked)
    good = txs.commits(1)[0]
    reps[2].submit_sync(good)
    for r in reps:
        r.sync()
    height, tip = reps[0].height, reps[0].tip
    k = txs.keys
    big = delta_commit("a1") | {"metrics": {"blob": "x" * 70_000}}
    bad = delta_commit("a1")
    del bad["n_samples"]
    cases = {
        E.BAD_SIGNATURE: make_tx(k["a2"], SWARM, "delta_commit", "a1", delta_commit("a1")),
        E.UNKNOWN_AUTHOR: make_tx(
            seed_key(99), SWARM, "delta_commit", "ghost", delta_commit("ghost")
        ),
        E.REVOKED_AUTHOR: make_tx(k["a5"], SWARM, "delta_commit", "a5", delta_commit("a5")),
        E.ROLE_NOT_ALLOWED: make_tx(
            k["a1"], SWARM, "round_open", "a1",
            {"round": 9, "base_model_hash": "cd" * 32, "deadline_ms": 1},
        ),
        E.OVERSIZED: make_tx(k["a1"], SWARM, "delta_commit", "a1", big),
        E.BAD_PAYLOAD: make_tx(k["a1"], SWARM, "delta_commit", "a1", bad),
        E.NODE_MISMATCH: make_tx(k["a1"], SWARM, "delta_commit", "a1", delta_commit("a2")),
        E.WRONG_SWARM: make_tx(k["a1"], "swarm-b", "delta_commit", "a1", delta_commit("a1")),
        E.REPLAY: good,
    }  # fmt: skip
    for i, (reason, tx) in enumerate(cases.items()):
        with pytest.raises(Refused) as info:
            reps[i % 3].submit_sync(tx)
        assert info.value.reason == reason, (reason, info.value)
        assert info.value.detail
    # The same refusals arrive through the async API, with callbacks.
    answers: list[LedgerError | None] = []
    done = threading.Event()

    def answer(entry: Entry | None, error: LedgerError | None) -> None:
        answers.append(error)
        if len(answers) == len(cases):
            done.set()

    for tx in cases.values():
        reps[0].submit(tx, answer)
    assert done.wait(10)
    assert sorted(e.reason for e in answers if isinstance(e, Refused)) == sorted(cases)
    for r in reps:
        r.sync()
        assert (r.height, r.tip) == (height, tip)
    refused = {r.counters["refused"] for r in reps}  # every replica refused every one
    assert len(refused) == 1 and refused.pop() >= 2 * len(cases)


def test_submissions_after_close_fail_fast(cluster: Any) -> None:
    (r,) = cluster(1)
    r.close()
    with pytest.raises(ReplicationError) as info:
        r.submit_sync(Txs().enrolls()[0])
    assert info.value.code == "closed"


def test_followers_catch_up_from_the_log_and_from_a_snapshot(cluster: Any, tmp_path: Path) -> None:
    reps = cluster(3, compact_entries=40)
    txs = Txs()
    for tx in txs.enrolls():
        reps[0].submit_sync(tx)
    # r2 stops; the others go on far enough to compact their logs past where it stopped.
    addr2 = reps[2].address
    reps[2].close()
    live = reps[:2]
    batch = txs.commits(150)
    for i, tx in enumerate(batch):
        live[i % 2].submit_sync(tx)
    wait_until(lambda: live[0].counters["snapshots_written"] > 0, 10, "a snapshot on r0")
    assert Path(f"{live[0].path}.snap").is_file()
    back = Replica(addr2, [r.address for r in live], tmp_path / "r2.db", timing=FAST)
    cluster.made.append(back)
    wait_until(lambda: back.height == live[0].height, 20, "r2 catching up")
    assert back.counters["snapshots_installed"] >= 1
    assert back.tip == live[0].tip == live[1].tip
    # ... and the cluster still takes appends through the restarted replica.
    entry = back.submit_sync(txs.commits(1)[0])
    for r in live:
        wait_until(lambda r=r: r.height == entry.height, 10, "the new entry everywhere")


def test_leader_view_status_and_role_callbacks(cluster: Any) -> None:
    reps = cluster(3)
    leaders = [r for r in reps if r.is_leader]
    assert len(leaders) == 1
    old = leaders[0]
    assert {r.leader for r in reps} == {old.address}
    # pysyncobj counts a quorum from heartbeats answered lately: on a loaded machine the new
    # leader may not have heard its followers yet when every replica already names it.
    wait_until(lambda: old.status()["has_quorum"], 10, "the leader hearing a quorum")
    status = old.status()
    assert status["is_leader"] and status["leader"] == old.address
    assert status["height"] == 0 and status["failed"] is None and status["has_quorum"]
    became: list[tuple[str, bool]] = []
    for r in reps:
        if r is not old:
            r.on_role.append(lambda is_leader, a=r.address: became.append((a, is_leader)))
    old.close()
    rest = [r for r in reps if r is not old]
    new = wait_until(lambda: next((r for r in rest if r.is_leader), None), 10, "a new leader")
    wait_until(lambda: (new.address, True) in became, 5, "the new leader's on_role(True)")
    assert new.submit_sync(Txs().enrolls()[0]).height == 1


# --------------------------------------------------------------------------- formats


def test_safe_unpickler_refuses_code_and_keeps_plain_data() -> None:
    install_safe_unpickler()
    import pysyncobj.pickle as pso

    message = {"type": "append_entries", "entries": [(b"\x00cmd", 7, 2), (b"", 8, 2)], "x": 1.5}
    assert pso.loads(pso.dumps(message)) == message
    assert safe_loads(pickle.dumps({"tx": [1, "a", None, True]}, 2)) == {"tx": [1, "a", None, True]}

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    for payload in (Evil(), {1, 2}, io.BytesIO(b"")):
        with pytest.raises(pickle.UnpicklingError):
            pso.loads(pickle.dumps(payload, 2))
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(pickle.dumps(b"x", 2).replace(b"latin1", b"base64"))


def _snapshot(tmp_path: Path, n: int = 12) -> tuple[Path, SnapshotHeader, list[Entry]]:
    path = tmp_path / "src.db"
    with Replica(f"127.0.0.1:{free_port()}", [], path, genesis(), timing=FAST) as r:
        txs = Txs()
        for tx in (txs.enrolls() + txs.commits(n))[:n]:
            r.submit_sync(tx)
        entries = r.entries()
    with SqliteStore(path, verify_only=True) as store:
        last = entries[-1]
        header = SnapshotHeader(
            entries[0].hash, last.height, last.hash, (b"\x00last", 9, 2), (b"\x00prev", 8, 2)
        )
        snap = tmp_path / "s.snap"
        write_snapshot(snap, header, store.bodies())
    return snap, header, entries


def test_snapshot_round_trip_and_malformed_input(tmp_path: Path) -> None:
    snap, header, entries = _snapshot(tmp_path)
    assert read_header(snap) == header and header.raft_index == 9
    assert list(iter_entries(snap)) == entries
    assert list(iter_entries(snap, from_height=10)) == entries[10:]
    data = snap.read_bytes()
    mutations = {
        "magic": b"X" + data[1:],
        "truncated": data[:-5],
        "trailing": data + b"\x00",
        "header": data.replace(b'"height":', b'"heigth":', 1),
        "body height": data.replace(b'"height":3,', b'"height":4,', 1),
        "body shape": data.replace(b'"kind":"enroll"', b'"kind":"enro!l"', 1),
    }
    for name, bad in mutations.items():
        path = tmp_path / f"{name}.snap"
        path.write_bytes(bad)
        with pytest.raises(DecodeError):
            read_header(path)
            list(iter_entries(path))
    with pytest.raises(ValueError):
        write_snapshot(tmp_path / "short.snap", header, iter([]))
    assert not (tmp_path / "short.snap").exists()


# --------------------------------------------------------------------------- processes


class ProcCluster:
    """Three replica processes on loopback sharing one genesis file."""

    def __init__(self, tmp_path: Path, n: int = 3, compact_entries: int | None = None) -> None:
        self.dir = tmp_path
        gfile = tmp_path / "genesis.json"
        gfile.write_bytes(genesis().canonical())
        addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        self.procs = [
            ReplicaProcess(
                a, [p for p in addrs if p != a], tmp_path / f"r{i}.db", gfile,
                compact_entries=compact_entries,
            )
            for i, a in enumerate(addrs)
        ]  # fmt: skip
        self.acked: dict[int, str] = {}  # height -> hash of every acknowledged entry

    def start(self) -> None:
        for p in self.procs:
            assert p.start().get("ready"), p.ready
        self.wait_leader(self.procs)

    def wait_leader(
        self, procs: list[ReplicaProcess], timeout: float = 20, other_than: str | None = None
    ) -> str:
        def agreed() -> str | None:
            leaders = {p.status()["leader"] for p in procs}
            if len(leaders) == 1 and not leaders & {None, other_than}:
                return leaders.pop()
            return None

        return wait_until(agreed, timeout, "one leader agreed by all")  # type: ignore[no-any-return]

    def submit_all(
        self, txs: list[Tx], via: list[ReplicaProcess]
    ) -> list[tuple[ReplicaProcess, int]]:
        """Spread `txs` over `via` (round robin); the (process, request id) of each."""
        out: list[tuple[ReplicaProcess, int]] = []
        for k, p in enumerate(via):
            out += [(p, i) for i in p.submit(txs[k :: len(via)], timeout=30)]
        return out

    def collect(self, pending: list[tuple[ReplicaProcess, int]], timeout: float = 60) -> None:
        """Wait for every answer; all must be acknowledgements, recorded in `acked`."""
        for p in {p for p, _ in pending}:
            for ans in p.wait([i for q, i in pending if q is p], timeout):
                assert ans["ok"], ans
                assert self.acked.setdefault(ans["height"], ans["hash"]) == ans["hash"]

    def wait_same_tip(self, timeout: float = 30) -> str:
        def same() -> str | None:
            tips = {(s["height"], s["tip"]) for s in (p.status() for p in self.procs)}
            return tips.pop()[1] if len(tips) == 1 else None

        return wait_until(same, timeout, "the same tip on every replica")  # type: ignore[no-any-return]

    def stop_and_check(self) -> None:
        """Stop all; every file verifies, all chains are equal and hold every ack."""
        for p in self.procs:
            assert p.stop() == 0
        assert all(verify_file(p.path).ok for p in self.procs)
        chains = [stored_hashes(p.path) for p in self.procs]  # each verified just now
        assert chains[0] == chains[1] == chains[2]
        for height, digest in self.acked.items():
            assert chains[0][height] == digest, f"acknowledged entry {height} lost"

    def teardown(self) -> None:
        for p in self.procs:
            if p.alive():
                p.kill()


@pytest.fixture
def make_procs(tmp_path: Path) -> Iterator[Any]:
    """make_procs(compact_entries=None) -> a ProcCluster of three replica processes, all
    killed after the test."""
    made: list[ProcCluster] = []

    def make(compact_entries: int | None = None) -> ProcCluster:
        made.append(ProcCluster(tmp_path, compact_entries=compact_entries))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            c.teardown()


@pytest.mark.network
def test_leader_sigkill_loses_no_acknowledged_entry(make_procs: Any) -> None:
    procs = make_procs()
    procs.start()
    txs = Txs()
    procs.collect(procs.submit_all(txs.enrolls(), procs.procs[:1]))
    procs.collect(procs.submit_all(txs.commits(300), procs.procs))
    procs.wait_same_tip()
    leader = next(p for p in procs.procs if p.status()["is_leader"])
    survivors = [p for p in procs.procs if p is not leader]
    # Kill the leader with submissions in flight through the survivors.
    in_flight = procs.submit_all(txs.commits(200), survivors)
    leader.kill()
    assert procs.wait_leader(survivors, other_than=leader.addr) in {p.addr for p in survivors}
    procs.collect(in_flight)
    procs.collect(procs.submit_all(txs.commits(100), survivors))
    # The killed replica comes back and catches up to the same tip.
    assert leader.start().get("ready")
    procs.wait_same_tip()
    assert max(procs.acked) == 7 + 600
    procs.stop_and_check()


class Feeder(threading.Thread):
    """Keeps appending through `via` at about `rate` transactions a second, in chunks,
    until stopped; every submission is remembered for `ProcCluster.collect`."""

    def __init__(self, cluster: ProcCluster, via: list[ReplicaProcess], rate: float) -> None:
        super().__init__(name="crash-loop-feeder", daemon=True)
        self.cluster, self.via, self.period = cluster, via, CHUNK / rate
        self.txs = Txs()
        self.sent: list[tuple[ReplicaProcess, int]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            n = 0
            while not self.stop.wait(self.period):
                p = self.via[n % len(self.via)]
                self.sent += [(p, i) for i in p.submit(self.txs.commits(CHUNK), timeout=60)]
                n += 1
        except BaseException as exc:  # surfaced by the test
            self.error = exc


CHUNK = 20


def _crash_loop(procs: ProcCluster, kills: int, seed: int, rate: float = 250) -> None:
    rng = random.Random(seed)
    procs.start()
    procs.collect(procs.submit_all(Txs().enrolls(), procs.procs[:1]))
    victim, stable = procs.procs[2], procs.procs[:2]
    feeder = Feeder(procs, stable, rate)  # heavy appending all along, never through the victim
    feeder.start()
    # The victim's file as each kill left it is verified from a copy while the victim
    # restarts (which changes the file): a whole-chain check of thousands of entries takes
    # as long as the restart itself.
    checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crash-loop-verify")
    try:
        for k in range(kills):
            # A random moment to crash at: a delay chosen on purpose, not a wait for anything.
            threading.Event().wait(rng.uniform(0.05, 0.5))
            victim.kill()
            as_killed = copy_ledger(victim.path, procs.dir / f"kill-{k:02d}")
            check = checks.submit(verify_file, as_killed)
            cluster_height = max(p.status()["height"] for p in stable)
            assert victim.start().get("ready"), victim.ready
            wait_until(
                lambda h=cluster_height: victim.status()["height"] >= h, 30, "the victim rejoining"
            )
            report = check.result(timeout=60)
            assert report.ok, (k, report)
    finally:
        feeder.stop.set()
        feeder.join()
        checks.shutdown(cancel_futures=True)
    assert feeder.error is None, feeder.error
    procs.collect(feeder.sent)
    procs.wait_same_tip()
    procs.stop_and_check()
    assert len(procs.acked) >= kills * 0.05 * rate  # it did append all along


@pytest.mark.network
def test_crash_loop_20_kills_during_heavy_appending(make_procs: Any) -> None:
    """Must-show 2: about 30 s on a 2-core machine. Snapshots every 300 entries, so that
    kills also land in snapshot writes and installs."""
    _crash_loop(make_procs(compact_entries=300), kills=20, seed=20, rate=120)


@pytest.mark.network
@pytest.mark.slow  # about 85 s: restarts re-verify a chain that grows with kills x rate
def test_crash_loop_20_kills_at_twice_the_rate(make_procs: Any) -> None:
    _crash_loop(make_procs(compact_entries=300), kills=20, seed=21, rate=250)


# --------------------------------------------------------------------------- CLI


@pytest.mark.network
def test_cli_replica_runs_stops_on_sigterm_and_refuses_a_tampered_store(tmp_path: Path) -> None:
    gfile = tmp_path / "genesis.json"
    gfile.write_bytes(genesis().canonical() + b"\n")
    path = tmp_path / "cli.db"
    cmd = [sys.executable, "-m", "ledger_lite.cli", "replica", "--self"]
    cmd += [f"127.0.0.1:{free_port()}", "--path", str(path), "--genesis", str(gfile)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("replica 127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fh in (proc.stdout, proc.stderr):
            if fh is not None:
                fh.close()
    assert verify_file(path).ok
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE entries SET hash = ? WHERE height = 0", ("0" * 64,))
    conn.close()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "FAILED at height 0" in done.stderr
