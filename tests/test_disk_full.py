"""A full disk stops a gateway's writes cleanly, never the gateway.

The issue: a gateway whose disk filled logged tracebacks ("database or disk is full") for
agents' submissions, then died of an unhandled exception at the round's deadline, when
its coordinator appended ``round_close`` from its tick (the store's failure escaped
``LocalLedger.submit``, which caught only refusals); exports kept piling up.

Here the disks are real: small tmpfs mounts, filled with a ballast file at a chosen moment
(root only: skipped otherwise, unless EDGE_SWARM_REQUIRE_NETNS=1, as in CI, where that
fails). The swarm test runs real processes: broker, gateway, agents. Unit tests cover the
free-space check and the one-message telling without a mount. No mocks; every wait is
bounded and on a condition.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_swarm.io.ledger import LocalLedger
from edge_swarm.node import disk
from edge_swarm.node.disk import SpaceWatch, save_file
from edge_swarm.site.demo import RunConfig
from edge_swarm.site.launch import SwarmProcesses
from ledger_lite import Entry, Ledger, LedgerError
from ledger_lite.anchor import anchor_path_for, read_anchor
from ledger_lite.cli import main as ledger_cli
from ledger_lite.store import WAL_SIZE_LIMIT, NoSpace, SqliteStore

from .test_ledger_anchor import GW_KEY, enroll_gw, rounds
from .test_ledger_support import genesis
from .waiting import ledger_tip, run_settled

REQUIRE_ENV = "EDGE_SWARM_REQUIRE_NETNS"  # CI runs as root with it set: a skip there fails


@pytest.fixture(autouse=True)
def fresh_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no disk found full (the watches are per process)."""
    monkeypatch.setattr(disk, "_WATCHES", {})


# --------------------------------------------------------------------------- real small disks


def unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but a tmpfs cannot be mounted: {reason}")
    pytest.skip(f"needs a tmpfs mount: {reason}; set {REQUIRE_ENV}=1 to make this a failure")


@contextlib.contextmanager
def small_disk(directory: Path, size: str) -> Iterator[Path]:
    """`directory` as a tmpfs of `size` (e.g. "4M") for the block; always unmounted."""
    if os.geteuid() != 0:
        unavailable("not root")
    directory.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        unavailable(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    try:
        yield directory
    finally:
        umount = subprocess.run(["umount", str(directory)], capture_output=True, timeout=30)
        if umount.returncode != 0:  # something still holds a file open there: detach it
            subprocess.run(["umount", "-l", str(directory)], check=True, timeout=30)


def fill(directory: Path) -> Path:
    """A ballast file that takes every last byte of `directory`'s file system."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return ballast


def answer_of(ledger: LocalLedger, tx: object) -> tuple[threading.Event, list]:
    """Submit; the event is set when the ledger answers (the answer in the list)."""
    answered, answers = threading.Event(), []

    def got(entry: Entry | None, error: LedgerError | None) -> None:
        answers.append((entry, error))
        answered.set()

    ledger.submit(tx, got)  # type: ignore[arg-type]
    return answered, answers


def submit(ledger: LocalLedger, tx: object) -> tuple[Entry | None, LedgerError | None]:
    answered, answers = answer_of(ledger, tx)
    assert answered.wait(10), "no answer from the ledger"
    return answers[0]


# --------------------------------------------------------------------------- without a mount


def test_the_free_space_check_refuses_before_appending_and_lets_go_when_space_is_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(path, genesis(), key=GW_KEY, gateway_id="gw1", min_free_bytes=2**62)
    try:
        entry, error = submit(ledger, enroll_gw())
        assert entry is None and isinstance(error, NoSpace)
        assert error.need == 2**62 and 0 <= error.free < 2**62
        assert re.search(r"MiB free, \d+\.\d MiB needed", str(error)), str(error)
        assert ledger.height == 0 and ledger.ledger.height == 0  # nothing appended
        ledger.min_free_bytes = 0  # space freed
        entry, error = submit(ledger, enroll_gw())
        assert error is None and entry is not None and entry.height == 1
    finally:
        ledger.close()
    assert ledger_cli(["verify", str(path)]) == 0


def test_a_full_disk_is_told_once_for_as_long_as_it_lasts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    watch = SpaceWatch(clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="edge_swarm.node.disk"):
        for _ in range(50):  # the coordinator retries every tick
            watch.full("ledger", tmp_path, 1024, 8 << 20, "rounds wait")
        watch.full("exports", tmp_path, 1024, 9 << 20, "no export")
        watch.ok("ledger", tmp_path)  # exports still blocked: not over yet
        now[0] += disk.REMIND_S
        watch.full("exports", tmp_path, 0, 9 << 20, "no export")  # a reminder, much later
        watch.ok("exports", tmp_path)
        watch.ok("exports", tmp_path)  # never blocked again: nothing to say
        watch.full("checkpoint", tmp_path, 0, 0, "old checkpoint")  # a new episode
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in lines] == ["WARNING", "WARNING", "INFO", "WARNING"], lines
    assert lines[0][1].startswith(f"disk full in {tmp_path}: 0.0 MiB free, 8.0 MiB needed")
    assert "disk still full" in lines[1][1] and "space is back" in lines[2][1]
    assert watch.episodes == 2 and watch.blocked == {"checkpoint"}


# --------------------------------------------------------------------------- full tmpfs disks


def test_the_store_refuses_on_a_full_disk_and_keeps_its_chain(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "2M") as root:
        path = root / "ledger.sqlite"
        ledger = Ledger.create(path, genesis(), anchor=anchor_path_for(path))
        ledger.submit(enroll_gw())
        ballast = fill(root)
        with pytest.raises(NoSpace, match="no space left") as info:
            for tx in rounds(1, 40):  # the WAL grows into the full disk at once
                ledger.submit(tx)
        assert info.value.free == 0
        held = ledger.height
        with SqliteStore(path, verify_only=True) as store:
            assert len(store) == held + 1  # every entry or none, never half of one
        ballast.unlink()
        ledger.submit(rounds(41, 1)[0])  # space back: appends again
        assert ledger.height == held + 1
        ledger.close()
        assert ledger_cli(["verify", str(path)]) == 0


def test_an_anchor_that_does_not_fit_leaves_the_old_one_whole(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "2M") as root:
        path = root / "ledger.sqlite"
        anchor = anchor_path_for(path)
        ledger = Ledger.create(path, genesis(), anchor=anchor)
        before = anchor.read_bytes()
        for tx in [enroll_gw(), *rounds(1, 3)]:
            ledger.submit(tx)  # appended, not anchored yet
        ballast = fill(root)
        with pytest.raises(OSError) as info:
            ledger.sync_anchor()
        assert info.value.errno == errno.ENOSPC
        assert anchor.read_bytes() == before and ledger.acknowledged == 1
        assert sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp")) == []
        ballast.unlink()
        assert ledger.sync_anchor() == 5
        assert read_anchor(anchor).tree_size == 5  # type: ignore[union-attr]
        ledger.close()


def test_entries_wait_for_an_anchor_that_does_not_fit_and_are_answered_once_it_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_disk(tmp_path / "disk", "2M") as root:
        path = root / "ledger.sqlite"
        ledger = LocalLedger(path, genesis(), key=GW_KEY, gateway_id="gw1")
        try:
            txs = [enroll_gw(), *rounds(1, 31)]
            for tx in txs[:-1]:
                assert submit(ledger, tx)[1] is None
            # Backfill the WAL, so that the next append starts it over in the pages it
            # already has: the append needs no new space, the anchor's new file does.
            with contextlib.closing(sqlite3.connect(path)) as db:
                assert db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
            anchor = anchor_path_for(path).read_bytes()
            ballast = fill(root)
            with caplog.at_level(logging.INFO, logger="edge_swarm.io.ledger"):
                answered, answers = answer_of(ledger, txs[-1])
                # Appended but not acknowledged: no answer, not in entries(), old anchor.
                assert not answered.wait(2.5 * 1.0)  # two retries of ANCHOR_RETRY_S
                assert ledger.ledger.height == len(txs) and ledger.height == len(txs) - 1
                assert anchor_path_for(path).read_bytes() == anchor
                ballast.unlink()
                assert answered.wait(10), "not answered once space was back"
            entry, error = answers[0]
            assert error is None and entry is not None and entry.height == len(txs)
            assert ledger.height == len(txs)
            said = [r.getMessage() for r in caplog.records]
            assert sum("no space for the ledger anchor" in m for m in said) == 1, said
            assert sum("anchor is written again" in m for m in said) == 1, said
        finally:
            ledger.close()
        assert ledger_cli(["verify", str(path)]) == 0


def test_a_file_that_does_not_fit_keeps_the_old_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_disk(tmp_path / "disk", "1M") as root:
        path = root / "checkpoint.bin"
        assert save_file(path, b"round 1" * 100, 0, "checkpoint", "old checkpoint")
        with caplog.at_level(logging.INFO, logger="edge_swarm.node.disk"):
            # Under the reserve: refused before a byte is written.
            assert not save_file(path, b"round 2", 8 << 20, "checkpoint", "old checkpoint")
            ballast = fill(root)
            # No reserve, but no room either: the write itself fails, the old file stays.
            assert not save_file(path, b"round 3" * 10_000, 0, "checkpoint", "old checkpoint")
            assert path.read_bytes() == b"round 1" * 100
            assert sorted(p.name for p in root.iterdir()) == ["ballast", "checkpoint.bin"]
            ballast.unlink()
            assert save_file(path, b"round 4", 0, "checkpoint", "old checkpoint")
        assert path.read_bytes() == b"round 4"
        said = [r.getMessage() for r in caplog.records]
        assert sum("disk full" in m for m in said) == 1 and sum("is back" in m for m in said) == 1


def test_the_wal_is_cut_back_once_a_long_reader_lets_go(tmp_path: Path) -> None:
    """A reader that holds a snapshot (``ledger-lite verify`` on a long chain, a backup)
    keeps SQLite from starting its WAL over, so the WAL grows past its checkpoint size
    while it reads. Once the reader is gone the WAL is checkpointed and cut back to
    WAL_SIZE_LIMIT; without the limit the file would keep its largest size for good."""
    path = tmp_path / "ledger.sqlite"
    wal = Path(f"{path}-wal")
    txs = [enroll_gw(), *rounds(1, 600)]
    ledger = Ledger.create(path, genesis())
    try:
        for tx in txs[:50]:
            ledger.submit(tx)
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM entries").fetchone()  # holds its snapshot
            for tx in txs[50:-5]:
                ledger.submit(tx)
            grown = wal.stat().st_size
            reader.execute("COMMIT")
        assert grown > 4 * WAL_SIZE_LIMIT, grown  # past SQLite's 1000-page checkpoint size
        for tx in txs[-5:]:  # the next commits checkpoint, start the log over, cut it back
            ledger.submit(tx)
        assert wal.stat().st_size <= WAL_SIZE_LIMIT, wal.stat().st_size
    finally:
        ledger.close()
    assert not wal.exists()  # the last connection folded it in
    assert ledger_cli(["verify", str(path)]) == 0


# --------------------------------------------------------------------------- a real swarm


def gateway_log(workdir: Path) -> str:
    return (workdir / "logs" / "gateway-1.log").read_text(errors="replace")


def full_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "disk full" in ln or "disk still full" in ln]


@pytest.mark.network
def test_a_gateway_on_a_full_disk_waits_says_so_once_and_goes_on(tmp_path: Path) -> None:
    """The gateway's state directory is a 24 MiB tmpfs; after round 2 a ballast file takes
    every byte. The gateway says so in one line, appends nothing (its ledger and anchor
    stay whole), and outlives the round deadline that used to kill it; once the ballast
    is deleted it goes on by itself and the swarm finishes its rounds."""
    workdir = tmp_path / "run"
    state = workdir / "state" / "gateway-1"
    cfg = RunConfig(
        workdir=workdir,
        n_agents=3,
        rounds=4,
        round_deadline_s=5.0,
        attest_timeout_s=5.0,
        start_grace_s=20.0,
        timeout_s=60.0,
    )
    seen: dict[str, float] = {}

    def scenario(procs: SwarmProcesses, obs) -> None:  # type: ignore[no-untyped-def]
        gateway, ledger = procs.gateway, state / "ledger.sqlite"
        assert obs.wait_for(lambda: 2 in obs.rounds and obs.rounds[2].final_ms > 0, 30)
        ballast = fill(state)
        t_full = time.monotonic()
        assert obs.wait_for(lambda: full_lines(gateway_log(workdir)), 30), gateway.tail()
        seen["told_s"] = time.monotonic() - t_full
        tip = ledger_tip(ledger)
        # Outlive the moment that used to kill it: the open round's deadline, when the
        # coordinator's round_close is refused (or now, if no round got to open).
        opens = [e for e in list(obs.entries) if e.kind == "round_open"]
        deadline_s = max(opens[-1].payload["deadline_ms"] / 1000.0, time.time()) + 1.5
        obs.wait_for(lambda: not gateway.alive or time.time() > deadline_s, 30)
        assert gateway.alive, gateway.tail()
        assert ledger_tip(ledger) == tip  # nothing appended while full
        # No corruption: the file verifies and extends the anchor beside it, read as is.
        assert ledger_cli(["verify", str(ledger)]) == 0
        assert not [p for p in state.rglob("*") if p.name.endswith(".tmp")]
        ballast.unlink()
        t_free = time.monotonic()
        assert obs.wait_for(lambda: ledger_tip(ledger) != tip, 30), gateway.tail()
        seen["resumed_s"] = time.monotonic() - t_free
        assert obs.wait_for(lambda: "space is back" in gateway_log(workdir), 10)

    with small_disk(state, "24M"):
        result = run_settled(cfg, scenario)
        text = gateway_log(workdir)
        assert len(full_lines(text)) == 1, full_lines(text)
        assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
        assert sorted(r.round for r in result.rounds) == [1, 2, 3, 4]
        assert result.rounds[-1].included, "the last round merged nobody"
        ledger = state / "ledger.sqlite"
        assert ledger_cli(["verify", str(ledger)]) == 0
        anchor = read_anchor(anchor_path_for(ledger))
        with SqliteStore(ledger, verify_only=True) as store:
            assert anchor is not None and anchor.tree_size == len(store)
        print(f"\n{full_lines(text)[0]}\ntold {seen['told_s']:.3f} s after the disk filled;")
        print(f"appending again {seen['resumed_s']:.3f} s after the ballast went")
