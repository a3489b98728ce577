"""``edge-swarm audit``: the per-round fold, and the command over a real SQLite ledger."""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_swarm.cli.audit import run_audit
from edge_swarm.swarm.audit import RoundAudit, audit_rounds, merge_summary
from ledger_lite import Entry, Ledger, SigningKey, make_genesis, make_tx

SWARM = "clinic"
T0 = 1_700_000_000_000
ADMIN = SigningKey.generate()
KEYS = {n: SigningKey.generate() for n in ("gw", "a1", "a2", "a3")}
SAMPLES = {"a1": 30, "a2": 20, "a3": 10}


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


MODEL_1 = _h("model after round 1")


class Chain:
    """Builds a valid list of entries (or a ledger file) one transaction at a time."""

    def __init__(self) -> None:
        self.entries: list[Entry] = [make_genesis(ADMIN, "admin", SWARM, ts=T0)]

    def add(self, author: str, kind: str, payload: dict[str, Any]) -> Entry:
        key = ADMIN if author == "admin" else KEYS[author]
        tx = make_tx(key, SWARM, kind, author, payload, ts=T0 + len(self.entries))
        entry = tx.chain(len(self.entries), self.entries[-1].hash)
        self.entries.append(entry)
        return entry

    def commit(self, rnd: int, node: str) -> None:
        payload = {
            "round": rnd,
            "node": node,
            "envelope_sha256": _h(f"{node}/{rnd}"),
            "n_samples": SAMPLES[node],
            "metrics": {"loss": 0.5},
        }
        self.add(node, "delta_commit", payload)


def build() -> Chain:
    """Round 1: three commit, two are included, the model is final. Round 2: open, one
    commit, not closed yet."""
    c = Chain()
    for node in KEYS:
        role = "gateway" if node == "gw" else "agent"
        pub = KEYS[node].public_hex
        c.add("admin", "enroll", {"node": node, "role": role, "pubkey": pub, "expires_ms": None})
    c.add("gw", "round_open", {"round": 1, "base_model_hash": _h("m0"), "deadline_ms": T0})
    for node in ("a1", "a2", "a3"):
        c.commit(1, node)
    c.add("gw", "round_close", {"round": 1, "included": ["a1", "a2"], "reason": "all in"})
    for node in ("a1", "a2"):
        c.add(node, "model_attest", {"round": 1, "model_hash": MODEL_1, "state_hash": _h("s")})
    final = {"round": 1, "model_hash": MODEL_1, "state_hash": _h("s"), "attesters": ["a1", "a2"]}
    c.add("gw", "model_final", final)
    c.add("gw", "round_open", {"round": 2, "base_model_hash": MODEL_1, "deadline_ms": T0})
    c.commit(2, "a3")
    return c


CHAIN = build()


def heights(kind: str, rnd: int) -> list[int]:
    return [e.height for e in CHAIN.entries if e.kind == kind and e.payload["round"] == rnd]


# --------------------------------------------------------------------------- the pure fold


def test_audit_rounds_folds_each_round() -> None:
    rounds = audit_rounds(CHAIN.entries)
    assert sorted(rounds) == [1, 2]
    r1 = rounds[1]
    assert r1.base_model_hash == _h("m0") and r1.opened_height == heights("round_open", 1)[0]
    assert sorted(r1.commits) == ["a1", "a2", "a3"]
    assert r1.included == ["a1", "a2"] and r1.close_reason == "all in"
    assert r1.model_hash == MODEL_1 and r1.attesters == ["a1", "a2"]
    assert r1.final_height == heights("model_final", 1)[0]


def test_round_to_dict() -> None:
    d = audit_rounds(CHAIN.entries)[1].to_dict()
    assert d["contributors"] == [
        {"node": "a1", "n_samples": 30, "envelope_sha256": _h("a1/1")},
        {"node": "a2", "n_samples": 20, "envelope_sha256": _h("a2/1")},
    ]
    assert sum(c["n_samples"] for c in d["contributors"]) == 50
    assert d["committed_not_included"] == ["a3"]
    assert d["model_hash"] == MODEL_1 and d["final_height"] == heights("model_final", 1)[0]
    json.dumps(d)  # plain JSON


def test_an_open_round_is_not_final() -> None:
    r2 = audit_rounds(CHAIN.entries)[2]
    assert r2.base_model_hash == MODEL_1 and list(r2.commits) == ["a3"]
    assert r2.included == [] and r2.model_hash == "" and r2.final_height == -1
    assert r2.to_dict()["committed_not_included"] == ["a3"]


def test_no_rounds_and_other_kinds_are_ignored() -> None:
    assert audit_rounds(CHAIN.entries[:5]) == {}
    assert audit_rounds([]) == {}


def test_a_later_commit_of_the_same_node_replaces_the_earlier() -> None:
    c = build()
    c.add("a3", "delta_commit", dict(c.entries[-1].payload, n_samples=99, metrics={}))
    assert audit_rounds(c.entries)[2].commits["a3"]["n_samples"] == 99


def test_an_included_node_without_a_commit_does_not_break_the_audit() -> None:
    """The ledger's rules do not tie round_close to the commits; a bad gateway could name
    a node that never committed. The audit must show that, not crash on it."""
    c = Chain()
    for node in ("gw", "a1"):
        role = "gateway" if node == "gw" else "agent"
        pub = KEYS[node].public_hex
        c.add("admin", "enroll", {"node": node, "role": role, "pubkey": pub, "expires_ms": None})
    c.add("gw", "round_open", {"round": 1, "base_model_hash": _h("m0"), "deadline_ms": T0})
    c.add("gw", "round_close", {"round": 1, "included": ["a1"], "reason": "?"})
    d = audit_rounds(c.entries)[1].to_dict()
    assert d["contributors"] == [{"node": "a1", "n_samples": None, "envelope_sha256": None}]


def test_merge_summary_counts_down_weighted_rounds_per_node() -> None:
    def rnd(r: int, weights: dict[str, float]) -> RoundAudit:
        a = RoundAudit(r, merge={"rule": "nnm+median", "weights": weights})
        a.commits = {n: {"n_samples": 10} for n in weights}
        a.included = list(weights)
        return a

    rounds = {
        1: rnd(1, {"a1": 0.5, "a2": 0.5, "a3": 0.0}),
        2: rnd(2, {"a1": 0.45, "a2": 0.45, "a3": 0.1}),  # a3: 0.1 < half of 1/3
        3: rnd(3, {"a1": 0.34, "a2": 0.33, "a3": 0.33}),
        4: RoundAudit(4),  # no merge report: not counted
    }
    summary = merge_summary(rounds)
    assert [s.node for s in summary] == ["a3", "a1", "a2"]
    a3 = summary[0]
    assert (a3.included, a3.down_weighted) == (3, 2)
    assert a3.mean_weight == pytest.approx((0.0 + 0.1 + 0.33) / 3)
    assert a3.mean_sample_share == pytest.approx(1 / 3)
    assert merge_summary({}) == []


def test_round_audit_defaults() -> None:
    assert RoundAudit(3).to_dict()["contributors"] == []


# --------------------------------------------------------------------------- the command


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.create(path, CHAIN.entries[0])
    try:
        for entry in CHAIN.entries[1:]:
            ledger.append(entry)
    finally:
        ledger.close()
    return path


def args(ledger: Path, rnd: int | None = None, as_json: bool = False) -> argparse.Namespace:
    return argparse.Namespace(ledger=ledger, round=rnd, json=as_json)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich must not wrap the table


def test_run_audit_prints_the_table(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(args(ledger_file)) == 0
    out = capsys.readouterr().out
    assert f"verified, {len(CHAIN.entries)} entries, tip {CHAIN.entries[-1].hash[:16]}" in out
    assert "contributions per round" in out
    row1 = next(line for line in out.splitlines() if "a1 (30), a2 (20)" in line)
    assert "50" in row1 and MODEL_1[:16] in row1 and "a3" not in row1
    row2 = next(line for line in out.splitlines() if "(not final)" in line)
    assert "a3" not in row2  # committed, not (yet) included


def test_run_audit_one_round(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(args(ledger_file, rnd=2)) == 0
    out = capsys.readouterr().out
    assert "(not final)" in out and MODEL_1[:16] not in out


def test_run_audit_json(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(args(ledger_file, as_json=True)) == 0
    lines = capsys.readouterr().out.splitlines()
    objs = [json.loads(line) for line in lines]
    assert [o["round"] for o in objs] == [1, 2]
    assert objs[0] == audit_rounds(CHAIN.entries)[1].to_dict()
    assert objs[0]["committed_not_included"] == ["a3"]
    assert objs[1]["model_hash"] == ""


def test_run_audit_json_one_round(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(args(ledger_file, rnd=1, as_json=True)) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["round"] == 1
    assert run_audit(args(ledger_file, rnd=9, as_json=True)) == 0
    assert capsys.readouterr().out == ""


def test_run_audit_leaves_the_ledger_as_it_was(ledger_file: Path) -> None:
    before = ledger_file.read_bytes()
    assert run_audit(args(ledger_file, as_json=True)) == 0
    assert ledger_file.read_bytes() == before
    with Ledger.open(ledger_file) as ledger:
        assert ledger.tip == CHAIN.entries[-1].hash


def test_run_audit_refuses_a_tampered_ledger(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = heights("round_close", 1)[0]
    conn = sqlite3.connect(ledger_file)
    try:
        (body,) = conn.execute("SELECT body FROM entries WHERE height=?", (bad,)).fetchone()
        flipped = bytearray(body)
        at = flipped.index(b'"reason":"all in"') + len('"reason":"')
        flipped[at] ^= 0x20  # "all in" -> "All in": still valid JSON, no longer signed
        conn.execute("UPDATE entries SET body=? WHERE height=?", (bytes(flipped), bad))
        conn.commit()
    finally:
        conn.close()
    assert run_audit(args(ledger_file)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"height {bad}" in captured.err and "does not verify" in captured.err
    assert run_audit(args(ledger_file, as_json=True)) == 1


def test_run_audit_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(args(tmp_path / "absent.sqlite")) == 2
    assert "no ledger at" in capsys.readouterr().err
    assert not (tmp_path / "absent.sqlite").exists()


def test_run_audit_on_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(args(tmp_path)) == 2
    assert "no ledger at" in capsys.readouterr().err


def test_run_audit_on_a_file_that_is_not_a_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"not a database at all" * 10)
    assert run_audit(args(path)) == 1
    assert "does not verify" in capsys.readouterr().err


def test_run_audit_with_a_close_naming_no_commit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = Chain()
    for node in ("gw", "a1", "a2"):
        role = "gateway" if node == "gw" else "agent"
        pub = KEYS[node].public_hex
        c.add("admin", "enroll", {"node": node, "role": role, "pubkey": pub, "expires_ms": None})
    c.add("gw", "round_open", {"round": 1, "base_model_hash": _h("m0"), "deadline_ms": T0})
    c.commit(1, "a1")
    c.add("gw", "round_close", {"round": 1, "included": ["a1", "a2"], "reason": "odd"})
    path = tmp_path / "odd.sqlite"
    with Ledger.create(path, c.entries[0]) as ledger:
        for entry in c.entries[1:]:
            ledger.append(entry)
    assert run_audit(args(path)) == 0
    out = capsys.readouterr().out
    assert "a1 (30)" in out and "a2 (no commit)" in out


def test_a_committee_round_names_its_committee() -> None:
    c = Chain()
    c.entries = list(CHAIN.entries[: heights("model_final", 1)[0]])
    final = {
        "round": 1,
        "model_hash": MODEL_1,
        "state_hash": _h("s"),
        "attesters": ["a1", "a2"],
        "committee": ["a1", "a2", "gw"],
    }
    c.add("gw", "model_final", final)
    r1 = audit_rounds(c.entries)[1]
    assert r1.committee == ["a1", "a2", "gw"] and r1.to_dict()["committee"] == ["a1", "a2", "gw"]
    assert audit_rounds(CHAIN.entries)[1].committee == []  # merge_by = all: none
