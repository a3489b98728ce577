"""An agent's copy of the ledger (``ledger_lite.jsonl``, ``node/ledger_copy.py``): read as
untrusted bytes, replayed through a real mirror that verifies it again, and a gateway's
ledger rebuilt from it with ``ledger-lite recover`` when no replica is left."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.node.ledger_copy import LedgerCopy
from edge_swarm.swarm.mirror import LedgerMirror
from ledger_lite import Entry, SqliteStore
from ledger_lite.anchor import anchor_path_for, read_anchor
from ledger_lite.cli import main as ledger_cli
from ledger_lite.jsonl import entry_line, read_copy

from .test_ledger_anchor import N_ROUNDS, copy_site, killed, open_gateway  # noqa: F401

__all__ = ["killed"]  # the module fixture, used here too


def chain(killed: dict[str, Any]) -> list[Any]:
    with SqliteStore(killed["healthy"], verify_only=True) as store:
        return store.load()


def write_copy(path: Path, entries: list[Any], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(entry_line(e) for e in entries) + tail)


def test_a_copy_reads_back_and_a_torn_or_bad_line_ends_it(
    killed: dict[str, Any], tmp_path: Path
) -> None:
    entries = chain(killed)
    path = tmp_path / "ledger.jsonl"
    write_copy(path, entries)
    read = read_copy(path)
    assert read.entries == entries and not read.torn and read.bad is None
    assert read.good_bytes == path.stat().st_size
    write_copy(path, entries, tail=entry_line(entries[0])[:40])  # a power cut mid-line
    read = read_copy(path)
    assert read.entries == entries and read.torn and read.bad is None
    write_copy(path, entries[:5] + entries[6:])  # a line missing
    read = read_copy(path)
    assert read.entries == entries[:5] and read.bad == "line 6 holds height 6"
    write_copy(path, entries[:3], tail=b"not json\n" + entry_line(entries[4]))
    read = read_copy(path)
    assert len(read.entries) == 3 and read.bad is not None and "line 4 is not an entry" in read.bad


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_reading_any_bytes_never_raises(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("junk") / "ledger.jsonl"
    path.write_bytes(data)
    read = read_copy(path)
    assert read.good_bytes <= len(data)


def test_an_agent_replays_its_copy_through_the_mirror_and_appends_only_what_is_new(
    killed: dict[str, Any], tmp_path: Path
) -> None:
    entries = chain(killed)
    genesis_hash = entries[0].hash
    path = tmp_path / "agent" / "ledger.jsonl"
    first = LedgerCopy(path)
    mirror = LedgerMirror(genesis_hash)
    for e in entries[:10]:  # a first run: entries applied one by one
        for applied in mirror.offer(e.to_dict()):
            first.append(applied)
    first.append(entries[3])  # an entry it holds already: not written twice
    first.close()
    again = LedgerCopy(path)
    fresh = LedgerMirror(genesis_hash)
    assert again.replay(fresh) == entries[:10]  # verified again by a real mirror
    assert fresh.next_height == 10 and again.height == 10
    for e in entries[10:]:  # then what the gateway sends
        for applied in fresh.offer(e.to_dict()):
            again.append(applied)
    again.close()
    assert read_copy(path).entries == entries


def test_a_copy_that_does_not_verify_is_set_aside_and_restarted_from_its_good_part(
    killed: dict[str, Any], tmp_path: Path
) -> None:
    entries = chain(killed)
    path = tmp_path / "ledger.jsonl"
    forged = entries[7].to_dict()
    forged["ts"] += 1  # a line changed on disk: its hash no longer links
    lines = [entry_line(e) for e in entries[:7]] + [entry_line(Entry.from_dict(forged))]
    path.write_bytes(b"".join(lines))
    copy = LedgerCopy(path)
    replayed = copy.replay(LedgerMirror(entries[0].hash))
    assert replayed == entries[:7]
    assert (tmp_path / "ledger.jsonl.bad-1").read_bytes() == b"".join(lines)  # the evidence
    assert read_copy(path).entries == entries[:7] and copy.height == 7
    # Another swarm's copy (another genesis): set aside whole, nothing believed.
    other = LedgerCopy(path)
    assert other.replay(LedgerMirror("ab" * 32)) == []
    assert (tmp_path / "ledger.jsonl.bad-2").exists() and not path.exists()


def test_a_disk_that_refuses_the_copy_stops_it_without_stopping_the_agent(
    killed: dict[str, Any], tmp_path: Path
) -> None:
    entries = chain(killed)
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    copy = LedgerCopy(blocker / "ledger.jsonl")
    copy.append(entries[0])  # cannot create it: said once, then nothing more is tried
    copy.append(entries[1])
    assert copy.height == 0


def test_a_gateway_ledger_lost_with_no_replica_is_recovered_from_an_agents_copy(
    killed: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_site(killed, tmp_path / "gw")
    acked = killed["acked"]
    entries = chain(killed)
    assert len(entries) == acked
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # the gateway's disk died
    # An agent that missed the last entries is no source: refused, nothing written.
    short = tmp_path / "agent-02" / "ledger.jsonl"
    short.parent.mkdir()
    write_copy(short, entries[:-3])
    assert ledger_cli(["recover", "--from", str(short), "--to", str(path)]) == 1
    assert f"but the gateway acknowledged {acked}" in capsys.readouterr().out
    assert not path.exists()
    # One that holds them all (the last line torn by a power cut: dropped) is.
    full = tmp_path / "agent-01" / "ledger.jsonl"
    full.parent.mkdir()
    write_copy(full, entries, tail=b'{"author":')
    assert ledger_cli(["recover", "--from", str(full), "--to", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"recovered {path}: {acked} entries from {full}" in out
    assert f"covers the {acked} acknowledged entries" in out
    assert not [p for p in path.parent.iterdir() if "from-copy" in p.name]  # no scratch left
    gw = open_gateway(path)
    try:
        assert gw.entries(0) == entries
        anchor = read_anchor(anchor_path_for(path))
        assert anchor is not None and anchor.tree_size >= acked
    finally:
        gw.close()
    assert os.path.getsize(full) > 0 and N_ROUNDS > 0
