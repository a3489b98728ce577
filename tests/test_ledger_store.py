"""SQLite store, Ledger lifecycle, tamper detection and the ledger-lite CLI."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from ledger_lite import (
    CorruptStore,
    Entry,
    Ledger,
    LedgerError,
    SqliteStore,
    verify_chain,
    verify_file,
)
from ledger_lite.cli import main

from .test_ledger_support import Swarm, delta_commit, genesis, round_open

N_ENTRIES = 200


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-entry ledger (genesis, two enrolls, then rounds of open/commit), built once."""
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    s = Swarm(path)
    s.enroll("gw1", "gateway")
    s.enroll("a1", "agent")
    rnd = 0
    while s.ledger.height < N_ENTRIES - 1:
        rnd += 1
        s.submit("gw1" if rnd % 2 else "a1", *_step(rnd))
    assert s.ledger.height == N_ENTRIES - 1
    s.ledger.close()
    return path


def _step(rnd: int) -> tuple[str, dict]:
    return ("round_open", round_open(rnd)) if rnd % 2 else ("delta_commit", delta_commit("a1", rnd))


def _copy(src: Path, dst_dir: Path) -> Path:
    """A consistent copy of a SQLite file (WAL included) via the backup API."""
    dst = dst_dir / "copy.db"
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()
    return dst


def _flip_body_byte(path: Path, height: int, pos: int) -> None:
    conn = sqlite3.connect(path)
    (body,) = conn.execute("SELECT body FROM entries WHERE height=?", (height,)).fetchone()
    body = body[:pos] + bytes([body[pos] ^ 0x01]) + body[pos + 1 :]
    conn.execute("UPDATE entries SET body=? WHERE height=?", (body, height))
    conn.commit()
    conn.close()


def test_reopen_same_tip(good_file: Path) -> None:
    with SqliteStore(good_file) as store:
        entries = store.load()
        assert len(store) == N_ENTRIES == len(entries)
        assert store.tip() == entries[-1]
        assert list(store) == entries
        assert store.range(10, 5) == entries[10:15]
        assert store.get(N_ENTRIES) is None
    with Ledger.open(good_file) as led:
        assert led.height == N_ENTRIES - 1
        assert led.tip == entries[-1].hash
        assert led.entries(N_ENTRIES - 3) == entries[-3:]
    report = verify_chain(entries)
    assert report.ok and report.n_entries == N_ENTRIES and report.tip_hash == entries[-1].hash


def test_pragmas(good_file: Path) -> None:
    with sqlite3.connect(good_file) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


def test_cli_verify_good(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(good_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {N_ENTRIES} entries, tip ")


@pytest.mark.parametrize("pos", [5, 40, 120, -3])
def test_flipped_byte_is_caught(
    good_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], pos: int
) -> None:
    path = _copy(good_file, tmp_path)
    bad = 137
    _flip_body_byte(path, bad, pos)
    with pytest.raises(CorruptStore) as info:
        SqliteStore(path)
    assert info.value.height == bad
    with pytest.raises(CorruptStore):
        Ledger.open(path)
    assert main(["verify", str(path)]) == 1
    assert f"FAILED at height {bad}:" in capsys.readouterr().out
    report = verify_file(path)
    assert not report.ok and report.first_bad_height == bad and report.n_entries == bad


def test_hash_column_is_not_trusted(good_file: Path, tmp_path: Path) -> None:
    path = _copy(good_file, tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE entries SET hash=? WHERE height=50", ("0" * 64,))
    conn.close()
    report = verify_file(path)
    assert (report.first_bad_height, report.reason) == (50, "hash column does not match body")


def test_resigned_by_outsider_is_caught(good_file: Path, tmp_path: Path) -> None:
    """Rewriting an entry consistently (new body + new hash) still breaks the next link."""
    path = _copy(good_file, tmp_path)
    with SqliteStore(path) as store:
        old = store.get(100)
    assert old is not None
    forged = Entry(**{**old.to_dict(), "ts": old.ts + 1})
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE entries SET body=?, hash=? WHERE height=100", (forged.canonical(), forged.hash)
        )
    conn.close()
    report = verify_file(path)
    assert report.first_bad_height == 100 and report.reason.startswith("bad_signature")


def test_missing_row_is_caught(good_file: Path, tmp_path: Path) -> None:
    path = _copy(good_file, tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM entries WHERE height=60")
    conn.close()
    with pytest.raises(CorruptStore, match="missing entry") as info:
        SqliteStore(path)
    assert info.value.height == 60


def test_cli_verify_missing_and_foreign_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(tmp_path / "absent.db")]) == 2
    assert "no such ledger file" in capsys.readouterr().err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    assert main(["verify", str(junk)]) == 1
    assert "FAILED" in capsys.readouterr().out
    empty = tmp_path / "empty.db"
    SqliteStore(empty).close()
    assert main(["verify", str(empty)]) == 1
    assert "no genesis" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2


def test_cli_show(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(good_file), "--limit", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["height", "time"] and len(lines) == 5
    assert "genesis" in lines[1] and "enroll" in lines[2]
    assert main(["show", str(good_file), "--json", "--kind", "delta_commit", "--round", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["payload"]["round"] == 4 and len(rows[0]["hash"]) == 64
    assert main(["show", str(good_file), "--json", "--kind", "round_open"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == (N_ENTRIES - 3 + 1) // 2
    assert main(["show", str(good_file.parent / "absent.db")]) == 2


def test_cli_show_refuses_corrupt(
    good_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _copy(good_file, tmp_path)
    _flip_body_byte(path, 3, 30)
    assert main(["show", str(path)]) == 1
    assert "FAILED at height 3" in capsys.readouterr().err


def test_verify_only_store_is_read_only(good_file: Path, tmp_path: Path) -> None:
    before = good_file.stat().st_mtime_ns, stat.S_IMODE(good_file.stat().st_mode)
    with (
        SqliteStore(good_file, verify_only=True) as store,
        pytest.raises(LedgerError, match="read-only"),
    ):
        store.append(store.tip())  # type: ignore[arg-type]
    assert (good_file.stat().st_mtime_ns, stat.S_IMODE(good_file.stat().st_mode)) == before
    with pytest.raises(FileNotFoundError):
        SqliteStore(tmp_path / "absent.db", verify_only=True)
    assert not (tmp_path / "absent.db").exists()


def test_create_and_open_misuse(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger.create(path, genesis()).close()
    with pytest.raises(LedgerError, match="already holds"):
        Ledger.create(path, genesis())
    with pytest.raises(FileNotFoundError):
        Ledger.open(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()
    with SqliteStore(path) as store, pytest.raises(LedgerError, match="does not extend"):
        store.append(genesis())


def test_on_append_and_threads(tmp_path: Path) -> None:
    s = Swarm(tmp_path / "l.db")
    s.enroll("gw1", "gateway")
    seen: list[int] = []
    s.ledger.on_append.append(lambda e: seen.append(e.height))
    s.ledger.on_append.append(lambda e: 1 / 0)  # a failing callback is logged, not raised
    txs = [s.tx("gw1", "round_open", round_open(r)) for r in range(80)]
    chunks = [txs[i::4] for i in range(4)]
    threads = [threading.Thread(target=lambda c=c: [s.ledger.submit(t) for t in c]) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.ledger.height == 81 and seen == list(range(2, 82))
    s.ledger.close()
    assert verify_file(s.path).ok


def test_store_refuses_unusable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        SqliteStore(junk)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        SqliteStore(tmp_path / "no" / "such" / "dir.db")
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(LedgerError, match="newer than this code"):
        SqliteStore(newer)


def test_verify_chain_reports_first_bad(good_file: Path) -> None:
    with SqliteStore(good_file, verify_only=True) as store:
        entries = store.range(0, 20)
    assert verify_chain(entries).ok
    assert verify_chain(entries[:1]).ok and verify_chain(entries[:1]).tip_hash == entries[0].hash
    empty = verify_chain([])
    assert not empty.ok and empty.first_bad_height == 0 and "no genesis" in (empty.reason or "")
    report = verify_chain(entries[:7] + entries[8:])
    assert (report.ok, report.n_entries, report.first_bad_height) == (False, 7, 8)
    assert report.reason is not None and report.reason.startswith("wrong_height")
    assert report.tip_hash == entries[6].hash
    headless = verify_chain(entries[1:])
    assert headless.first_bad_height == 1 and "bad_genesis" in (headless.reason or "")
