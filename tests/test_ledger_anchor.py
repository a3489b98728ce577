"""The ledger never moves backwards silently: anchors, refusal on open, verify, recover.

A gateway's LocalLedger runs in a subprocess that is SIGKILLed after its submissions were
acknowledged, so its WAL holds the chain exactly as an unclean stop leaves it. Copies of
that directory are then damaged the three ways the issue names (one flipped bit in the
WAL, a truncated WAL, a deleted ledger) and reopened; ``ledger-lite verify --tree-head``
and ``ledger-lite recover`` run on real files (Raft replicas: test_ledger_anchor_raft.py).
No mocks; every wait has a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_swarm.io.ledger import LocalLedger
from ledger_lite import CorruptStore, Entry, LedgerError, SqliteStore, Tx, make_tx
from ledger_lite.anchor import Anchor, Anchorer, anchor_path_for, read_anchor
from ledger_lite.cli import main as ledger_cli
from ledger_lite.errors import AnchorError, LostEntries
from ledger_lite.merkle import MerkleTree

from .test_ledger_support import ADMIN_KEY, SWARM, T0, genesis, round_open, seed_key

ROOT = Path(__file__).resolve().parent.parent
GW_KEY = seed_key(60)
N_ROUNDS = 60  # ~150 WAL frames: far below SQLite's 1000-page autocheckpoint


def enroll_gw() -> Tx:
    payload = {"node": "gw1", "role": "gateway", "pubkey": GW_KEY.public_hex, "expires_ms": None}
    return make_tx(ADMIN_KEY, SWARM, "enroll", "admin", payload, T0 + 1)


def rounds(first: int, n: int) -> list[Tx]:
    return [
        make_tx(GW_KEY, SWARM, "round_open", "gw1", round_open(r), T0 + 10 + r)
        for r in range(first, first + n)
    ]


def open_gateway(path: Path) -> LocalLedger:
    return LocalLedger(path, genesis(), key=GW_KEY, gateway_id="gw1")


def submit_all(ledger: LocalLedger, txs: list[Tx], timeout: float = 30.0) -> list[Entry]:
    """Submit `txs`; wait (bounded) for every answer; return the acknowledged entries."""
    done = threading.Event()
    answers: list[tuple[Entry | None, LedgerError | None]] = []

    def answer(entry: Entry | None, error: LedgerError | None) -> None:
        answers.append((entry, error))
        if len(answers) == len(txs):
            done.set()

    for tx in txs:
        ledger.submit(tx, answer)
    assert done.wait(timeout), f"{len(answers)} of {len(txs)} answered"
    assert all(e is not None for e, _ in answers), answers
    return [e for e, _ in answers if e is not None]


# --------------------------------------------------------------------------- a killed gateway

GATEWAY_SCRIPT = """
import sys, threading
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tests.test_ledger_anchor import enroll_gw, open_gateway, rounds, submit_all
ledger = open_gateway(Path(sys.argv[2]))
acked = submit_all(ledger, [enroll_gw(), *rounds(1, int(sys.argv[3]))])
print(len(acked) + 1, flush=True)  # entries acknowledged, genesis included
sys.stdin.read()  # until SIGKILL: never closed cleanly
"""


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A gateway directory as SIGKILL left it (WAL not checkpointed), the number of
    entries acknowledged, and a healthy replica's copy of the same ledger."""
    root = tmp_path_factory.mktemp("killed")
    path = root / "gw" / "ledger.sqlite"
    path.parent.mkdir()
    cmd = [sys.executable, "-c", GATEWAY_SCRIPT, str(ROOT), str(path), str(N_ROUNDS)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        acked = int(proc.stdout.readline())
        healthy = root / "replica" / "ledger.sqlite"  # a peer's copy, read while it runs
        healthy.parent.mkdir()
        with sqlite3.connect(path) as src, sqlite3.connect(healthy) as dst:
            src.backup(dst)
        src.close()
        dst.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for fh in (proc.stdin, proc.stdout):
            if fh is not None:
                fh.close()
    assert Path(f"{path}-wal").stat().st_size > 100_000  # the chain is in the WAL
    return {"dir": path.parent, "acked": acked, "healthy": healthy}


def copy_site(killed: dict[str, Any], dest: Path) -> Path:
    shutil.copytree(killed["dir"], dest)
    return dest / "ledger.sqlite"


def wal_frames(wal: Path) -> tuple[bytearray, int, int]:
    data = bytearray(wal.read_bytes())
    page = int.from_bytes(data[8:12], "big")
    return data, page, (len(data) - 32) // (24 + page)


def flip_one_bit(path: Path) -> None:
    wal = Path(f"{path}-wal")
    data, page, frames = wal_frames(wal)
    data[32 + (frames // 2) * (24 + page) + 24 + 100] ^= 0x04
    wal.write_bytes(data)


def truncate_wal(path: Path) -> None:
    wal = Path(f"{path}-wal")
    data, page, frames = wal_frames(wal)
    wal.write_bytes(data[: 32 + (frames // 2) * (24 + page) + 500])


def delete_ledger(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink()


def evidence(path: Path) -> dict[str, bytes]:
    """The ledger file and its WAL as bytes (``-shm`` is an index SQLite rebuilds)."""
    files = [Path(f"{path}{s}") for s in ("", "-wal")]
    return {f.name: f.read_bytes() for f in files if f.exists()}


def damage_main_file(path: Path) -> None:
    """Fold the WAL into the main file, then change one digit of an entry there."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    data[data.index(b'"round":30}') + 9] ^= 0x01  # round 30 (height 31) now says 31
    path.write_bytes(data)


def held_by(path: Path) -> int:
    """Entries the file holds now, as SQLite reads it (read-only, nothing changed)."""
    if not path.exists():
        return 0
    with SqliteStore(path, verify_only=True) as store:
        return len(store)


DAMAGE = {"bit flip": flip_one_bit, "truncated WAL": truncate_wal, "deleted": delete_ledger}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_ledger_is_refused_naming_both_heights(
    killed: dict[str, Any], tmp_path: Path, damage: str
) -> None:
    path = copy_site(killed, tmp_path / "gw")
    DAMAGE[damage](path)
    held, acked = held_by(path), killed["acked"]
    assert held < acked  # what SQLite alone would have served, silently
    before = evidence(path)
    with pytest.raises(LostEntries) as refused:
        open_gateway(path)
    exc = refused.value
    assert (exc.held, exc.acknowledged, exc.forked) == (held, acked, False)
    text = str(exc)
    assert "\n" not in text and "ledger-lite recover" in text
    if damage == "deleted":
        assert f"{path} is missing but this gateway acknowledged {acked} entries" in text
        assert not path.exists()  # no fresh chain from the bootstrap's genesis
    else:
        assert f"{path} holds {held} entries but this gateway acknowledged {acked}" in text
    assert evidence(path) == before  # nothing changed: the damaged WAL is there to look at


@pytest.mark.parametrize("damage", DAMAGE)
def test_recover_from_a_replica_restores_every_acknowledged_entry(
    killed: dict[str, Any], tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_site(killed, tmp_path / "gw")
    DAMAGE[damage](path)
    damaged = evidence(path)
    # A replica that lacks acknowledged entries is no source: refused, nothing touched.
    short = tmp_path / "short.sqlite"
    with sqlite3.connect(killed["healthy"]) as a, sqlite3.connect(short) as b:
        a.backup(b)
        b.execute("DELETE FROM entries WHERE height >= 30")
    a.close()
    b.close()
    assert ledger_cli(["recover", "--from", str(short), "--to", str(path)]) == 1
    out = capsys.readouterr().out.strip()
    assert out == out.splitlines()[0] and "holds 30 entries but the gateway acknowledged" in out
    assert evidence(path) == damaged

    assert ledger_cli(["recover", "--from", str(killed["healthy"]), "--to", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    acked = killed["acked"]
    assert out.startswith(f"recovered {path}: {acked} entries from {killed['healthy']}")
    assert f"covers the {acked} acknowledged entries" in out and len(out.splitlines()) == 1
    asides = {p.name for p in path.parent.iterdir() if ".damaged-" in p.name}
    if damage == "deleted":
        assert asides == set() and "kept as" not in out
    else:
        aside = path.with_name(min(asides))
        kept = {k.replace(aside.name, path.name): v for k, v in evidence(aside).items()}
        assert kept == damaged and f"kept as {aside}" in out  # moved aside, never deleted
    gw = open_gateway(path)
    try:
        assert gw.height == acked - 1
        with SqliteStore(killed["healthy"], verify_only=True) as healthy:
            assert gw.entries(0) == healthy.load()
        (entry,) = submit_all(gw, rounds(N_ROUNDS + 1, 1))
        anchor = read_anchor(anchor_path_for(path))
        assert anchor is not None and anchor.tree_size == acked + 1 == entry.height + 1
    finally:
        gw.close()
    # The file now holds an entry the old copy lacks, which its anchor covers: refused.
    source = str(killed["healthy"])
    assert ledger_cli(["recover", "--from", source, "--to", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"holds {acked} entries but the gateway acknowledged {acked + 1}" in out
    # ... and against an older anchor, still: the file holds what the source lacks.
    older = str(killed["dir"] / "ledger.anchor")
    assert ledger_cli(["recover", "--from", source, "--to", str(path), "--anchor", older]) == 1
    assert f"{path} holds {acked + 1} entries that are not all in" in capsys.readouterr().out


def test_a_damaged_main_file_is_recovered_too(
    killed: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_site(killed, tmp_path / "gw")
    damage_main_file(path)
    with pytest.raises(CorruptStore):
        open_gateway(path)
    assert ledger_cli(["recover", "--from", str(killed["healthy"]), "--to", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the old file (did not verify) is kept as" in out
    gw = open_gateway(path)
    try:
        assert gw.height == killed["acked"] - 1
    finally:
        gw.close()


def test_verify_tree_head_passes_a_good_file_and_fails_a_short_one(
    killed: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = copy_site(killed, tmp_path / "good")
    anchor_file = anchor_path_for(good)
    acked = killed["acked"]
    for args in (["verify", str(good), "--tree-head", str(anchor_file)], ["verify", str(good)]):
        assert ledger_cli(args) == 0
        out = capsys.readouterr().out.strip()
        assert out.startswith(f"ok: {acked} entries") and len(out.splitlines()) == 1
        assert f"extends the tree head of {acked}" in out and "signed by gw1" in out
    # a bare signed tree head (what an agent holds) works the same
    anchor = read_anchor(anchor_file)
    assert anchor is not None and anchor.head is not None
    bare = tmp_path / "head.json"
    bare.write_text(json.dumps(anchor.head.to_dict()))
    assert ledger_cli(["verify", str(killed["healthy"]), "--tree-head", str(bare)]) == 0
    assert "signed by gw1" in capsys.readouterr().out
    # a forged signature fails
    forged = dict(anchor.head.to_dict(), signature_hex="00" * 64)
    bare.write_text(json.dumps(forged))
    assert ledger_cli(["verify", str(killed["healthy"]), "--tree-head", str(bare)]) == 1
    assert "does not verify under gw1's enrolled key" in capsys.readouterr().out

    short = copy_site(killed, tmp_path / "short")
    truncate_wal(short)
    held = held_by(short)
    assert ledger_cli(["verify", str(short), "--tree-head", str(anchor_file)]) == 1
    out = capsys.readouterr().out.strip()
    assert out == f"FAILED: {out[8:]}" and len(out.splitlines()) == 1
    assert f"{short} holds {held} entries but the tree head covers {acked}" in out
    # without --tree-head the anchor beside the file is used: no more "ok" on a short chain
    assert ledger_cli(["verify", str(short)]) == 1
    assert f"holds {held} entries" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["bit flip", "main file"])
def test_the_gateway_command_prints_one_line_and_no_traceback(
    killed: dict[str, Any], tmp_path: Path, damage: str
) -> None:
    from edge_swarm.node.config import NodeConfig, dump_config

    path = copy_site(killed, tmp_path / "gw")
    (flip_one_bit if damage == "bit flip" else damage_main_file)(path)
    GW_KEY.save(tmp_path / "gw1.key")
    (tmp_path / "bootstrap.jsonl").write_text(genesis().canonical().decode() + "\n")
    cfg = NodeConfig(
        node_id="gw1",
        role="gateway",
        swarm=SWARM,
        key_path=tmp_path / "gw1.key",
        state_dir=tmp_path / "state",
        ledger_path=path,
        bootstrap_path=tmp_path / "bootstrap.jsonl",
    )
    (tmp_path / "gw.toml").write_text(dump_config(cfg))
    run = subprocess.run(
        [sys.executable, "-m", "edge_swarm", "gateway", "--config", str(tmp_path / "gw.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"ledger-lite recover --from COPY --to {path}" in lines[0]
    if damage == "main file":
        assert lines[0].startswith(f"edge-swarm gateway: cannot start: {path}: ledger store ")
        assert "corrupt at height 31: hash column does not match body" in lines[0]
        return
    held, acked = held_by(path), killed["acked"]
    assert lines[0].startswith(f"edge-swarm gateway: cannot start: {path} holds {held} entries")
    assert f"this gateway acknowledged {acked}" in lines[0]


# --------------------------------------------------------------------------- the anchor itself


def test_acknowledged_only_once_anchored_and_a_store_ahead_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    gw = open_gateway(path)
    seen: list[str] = []

    def covered(entry: Entry, what: str) -> None:
        anchor = read_anchor(anchor_path_for(path))
        if anchor is None or anchor.tree_size <= entry.height:
            seen.append(f"{what} {entry.height} before its anchor")

    gw.on_append.append(lambda e: covered(e, "announced"))
    submit_all(gw, [enroll_gw()])
    txs = rounds(1, 40)
    threads = [threading.Thread(target=submit_all, args=(gw, txs[i::4])) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == [] and gw.height == 41
    assert [t for t in threading.enumerate() if t.name == "ledger-ack"]
    assert [e.height for e in gw.entries(0)] == list(range(42))
    old = anchor_path_for(path).read_bytes()
    submit_all(gw, rounds(41, 5))
    gw.close()
    assert not [t for t in threading.enumerate() if t.name == "ledger-ack"]
    # The process stopped after SQLite committed but before the anchor was written: the
    # store is ahead of its anchor. That is no loss: it opens and anchors the rest.
    anchor_path_for(path).write_bytes(old)
    gw = open_gateway(path)
    try:
        anchor = read_anchor(anchor_path_for(path))
        assert gw.height == 46 and anchor is not None and anchor.tree_size == 47
    finally:
        gw.close()
    anchor_path_for(path).unlink()  # a ledger from before anchors: it gets one on open
    open_gateway(path).close()
    again = read_anchor(anchor_path_for(path))
    assert again is not None and (again.tree_size, again.root) == (47, anchor.root)


def test_a_replaced_file_and_a_damaged_anchor_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    gw = open_gateway(path)
    submit_all(gw, [enroll_gw(), *rounds(1, 5)])
    gw.close()
    other = tmp_path / "other.sqlite"  # another chain (another genesis), longer
    g2 = LocalLedger(other, genesis(ts=T0 + 5))
    submit_all(g2, [enroll_gw(), *rounds(1, 9)])
    g2.close()
    os.replace(other, path)
    with pytest.raises(LostEntries) as refused:
        open_gateway(path)
    assert refused.value.forked and "holds 11 entries but its first 7 are not the 7" in str(
        refused.value
    )
    anchor_path_for(path).write_text('{"type": "ledger_lite/anchor/v1"')
    with pytest.raises(AnchorError, match="is damaged"):
        open_gateway(path)


def test_anchor_round_trip_and_never_backwards(tmp_path: Path) -> None:
    leaves = [bytes([i]) * 32 for i in range(5)]
    tree = MerkleTree(leaves)
    anchorer = Anchorer(tmp_path / "a.anchor", tree, "ab" * 32, SWARM, None)
    assert anchorer.write() == 5
    anchor = read_anchor(tmp_path / "a.anchor")
    assert anchor is not None and Anchor.decode(anchor.encode()) == anchor
    assert anchor.root == tree.root() and anchor.head is None
    # the same anchor over a different tree of the same size: refused, never overwritten
    other = MerkleTree([bytes([9]) * 32, *leaves[1:]])
    back = Anchorer(tmp_path / "a.anchor", other, "ab" * 32, SWARM, anchor)
    assert back.behind
    with pytest.raises(LostEntries):
        back.write()
    assert read_anchor(tmp_path / "a.anchor") == anchor


def test_a_deleted_anchor_is_said_loudly_once_and_anchoring_starts_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.sqlite"
    gw = open_gateway(path)
    submit_all(gw, [enroll_gw(), *rounds(1, 3)])
    gw.close()
    anchor_path_for(path).unlink()  # the evidence itself is gone
    with caplog.at_level(logging.WARNING, logger="ledger_lite.anchor"):
        gw = open_gateway(path)
    said = [r.getMessage() for r in caplog.records if "no anchor beside" in r.getMessage()]
    assert len(said) == 1 and "may have lost entries" in said[0] and "--tree-head" in said[0]
    gw.close()
    assert read_anchor(anchor_path_for(path)) is not None  # anchored again from here on
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ledger_lite.anchor"):
        open_gateway(path).close()
    assert not [r for r in caplog.records if "no anchor beside" in r.getMessage()]


def test_group_commit_syncs_the_wal_before_each_anchor_that_names_new_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An anchored ledger commits without an fsync per entry (synchronous=NORMAL) and
    fsyncs the WAL once per anchor, always before the anchor that names the new entries:
    entries submitted together share one sync, and nothing is acknowledged that a power
    cut could take back."""
    path = tmp_path / "ledger.sqlite"
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    gw = open_gateway(path)
    try:
        mode = gw.ledger._store._conn.execute("PRAGMA synchronous").fetchone()[0]
        assert mode == 1  # NORMAL: the commit itself does not wait for the disk
        monkeypatch.setattr(os, "fsync", fsync)
        announced: list[tuple[int, int]] = []  # (height, WAL syncs so far) at announcement
        gw.on_append.append(lambda e: announced.append((e.height, wal_syncs())))

        def wal_syncs() -> int:
            return sum(p.endswith("ledger.sqlite-wal") for p in synced)

        submit_all(gw, [enroll_gw(), *rounds(1, 30)])
    finally:
        gw.close()
    assert [h for h, _ in announced] == list(range(1, 32))
    assert all(n >= 1 for _, n in announced)  # every announced entry follows a WAL sync
    anchors = [i for i, p in enumerate(synced) if "anchor" in Path(p).name]
    previous = -1
    for i in anchors:  # each anchor follows a WAL sync made since the anchor before it
        assert any(p.endswith("ledger.sqlite-wal") for p in synced[previous + 1 : i]), i
        previous = i
    # At most one WAL sync per anchor written (31 entries took 4 of each here; how many
    # share one depends on the scheduler, so only the bound is checked).
    assert 1 <= wal_syncs() <= len(anchors)
    reopened = open_gateway(path)
    try:
        assert reopened.height == 31
    finally:
        reopened.close()
