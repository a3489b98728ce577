"""A Raft replica whose store came back shorter than its anchor fetches what it lost.

Three in-process replicas on loopback (Raft timing shrunk); one of them stops uncleanly
(its files copied while it runs), its WAL is damaged or its ledger deleted, and it comes
back: from its own Raft journal, from the leader's log, or, when the leader has compacted
its log, from a snapshot. A replica whose main file is damaged is refused, and rebuilt from a
peer's file with ``ledger-lite recover``. Every wait has a deadline.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from edge_swarm.io.ledger import ReplicatedLedger
from ledger_lite import CorruptStore
from ledger_lite.anchor import anchor_path_for, read_anchor
from ledger_lite.cli import main as ledger_cli
from ledger_lite.merkle import MerkleTree
from ledger_lite.replica import Replica
from ledger_lite.replica_raft import RaftTiming

from .replica_proc import free_ports, wait_until
from .test_ledger_anchor import (
    GW_KEY,
    N_ROUNDS,
    damage_main_file,
    delete_ledger,
    enroll_gw,
    flip_one_bit,
    held_by,
    rounds,
)
from .test_ledger_support import genesis

FAST = RaftTiming(
    append_period_s=0.01, election_min_s=0.15, election_max_s=0.35, connect_retry_s=0.1
)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Any]:
    made: list[Replica] = []

    def make(addr: str, addrs: list[str], path: Path, **kw: Any) -> Replica:
        path.parent.mkdir(exist_ok=True)
        r = Replica(
            addr,
            addrs,
            path,
            genesis(),
            timing=FAST,
            anchor=anchor_path_for(path),
            key=GW_KEY,
            gateway_id="gw1",
            **kw,
        )
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.mark.network
@pytest.mark.parametrize("damage", ["bit flip, own journal", "bit flip", "deleted", "main file"])
def test_a_replica_behind_its_anchor_recovers_from_its_peers(
    replicas: Any, tmp_path: Path, damage: str
) -> None:
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    reps = [
        replicas(a, addrs, tmp_path / f"r{i}" / "ledger.sqlite", compact_entries=40)
        for i, a in enumerate(addrs)
    ]
    wait_until(lambda: all(r.leader for r in reps), 10, "a leader")
    reps[0].submit_sync(enroll_gw())
    for tx in rounds(1, N_ROUNDS):
        reps[0].submit_sync(tx)
    wait_until(lambda: reps[2].height == reps[0].height, 10, "r2 holding everything")
    snapped = lambda: all(r.counters["snapshots_written"] > 0 for r in reps[:2])  # noqa: E731
    wait_until(snapped, 10, "a snapshot on r0 and r1 (whichever leads has compacted)")
    # r2's files as an unclean stop leaves them, copied while it runs; then it stops.
    lost_dir = tmp_path / "r2-after"
    shutil.copytree(tmp_path / "r2", lost_dir)
    reps[2].close()
    path = lost_dir / "ledger.sqlite"
    acked = read_anchor(anchor_path_for(path))
    assert acked is not None and acked.tree_size == N_ROUNDS + 2
    if damage in ("bit flip", "deleted"):  # its Raft journal and snapshot: gone too
        for journal in lost_dir.glob("ledger.sqlite.*"):
            journal.unlink()
    if damage == "main file":  # refused, then rebuilt from a peer's file by the operator
        damage_main_file(path)
        with pytest.raises(CorruptStore):
            replicas(addrs[2], addrs, path)
        peer = tmp_path / "r0-copy.sqlite"
        with closing(sqlite3.connect(reps[0].path)) as a, closing(sqlite3.connect(peer)) as b:
            a.backup(b)
        assert ledger_cli(["recover", "--from", str(peer), "--to", str(path)]) == 0
        back = replicas(addrs[2], addrs, path)
        assert back.behind_anchor is None
    else:
        (flip_one_bit if damage.startswith("bit flip") else delete_ledger)(path)
        assert held_by(path) < acked.tree_size
        back = replicas(addrs[2], addrs, path, autostart=False)
        assert back.behind_anchor == acked.tree_size and back.height < acked.tree_size - 1
        back.start()
    wait_until(lambda: back.height == reps[0].height, 20, "r2 catching up")
    wait_until(lambda: back.behind_anchor is None, 10, "r2 back at its anchor")
    assert back.failure is None and back.tip == reps[0].tip and back.counters["refused"] == 0
    if damage == "deleted":
        assert back.counters["snapshots_installed"] >= 1  # the leader's log was compacted
    entry = back.submit_sync(rounds(N_ROUNDS + 1, 1)[0])
    anchor = read_anchor(anchor_path_for(path))
    assert anchor is not None and anchor.tree_size == entry.height + 1
    assert anchor.root == MerkleTree(bytes.fromhex(e.hash) for e in back.entries(0)).root()


def test_the_replicated_gateway_ledger_keeps_an_anchor(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    path = tmp_path / "ledger.sqlite"
    rl = ReplicatedLedger(path, genesis(), f"127.0.0.1:{port}", (), key=GW_KEY, gateway_id="gw1")
    rl.close()
    anchor = read_anchor(anchor_path_for(path))
    assert anchor is not None and anchor.tree_size == 1 and anchor.signer == "gw1"
