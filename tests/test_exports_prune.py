"""A gateway's model exports: the last K rounds are kept, ``latest.*`` never goes, and a
round that does not fit with the ledger's reserve left free is skipped with one message.

Real files in a temporary directory; the exporter writes real .onnx/.tflite/.npz files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.node import disk
from edge_swarm.node.config import ConfigError, config_from_dict, dump_config, load_config
from edge_swarm.node.exports import FORMATS, RoundExporter, prune_exports, round_of

SPEC = ModelSpec(sizes=(8, 4, 3), activation="relu")


def params(seed: int) -> np.ndarray:
    return init_params(SPEC, seed)


def rounds_in(out: Path) -> list[int]:
    return sorted({r for p in out.iterdir() if (r := round_of(p)) is not None})


@pytest.fixture(autouse=True)
def fresh_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no disk found full (the watches are per process)."""
    monkeypatch.setattr(disk, "_WATCHES", {})


def test_round_of_reads_only_round_files() -> None:
    assert round_of(Path("model-r0012.onnx")) == 12
    assert round_of(Path("model-r0003.npz")) == 3
    for name in ("latest.onnx", "model-r.onnx", "model-rx1.npz", "model-r0001", "notes.txt"):
        assert round_of(Path(name)) is None, name


def test_the_last_k_rounds_are_kept_and_latest_always(tmp_path: Path) -> None:
    out = tmp_path / "exports"
    exporter = RoundExporter(out, None, None, keep=3, min_free_bytes=0)
    for rnd in range(1, 9):
        assert exporter.export(SPEC, params(rnd), rnd), f"round {rnd} not exported"
        assert rounds_in(out) == list(range(max(1, rnd - 2), rnd + 1))
    names = {p.name for p in out.iterdir()}
    assert {f"latest{ext}" for ext in FORMATS} <= names
    assert len(names) == 3 * len(FORMATS) + len(FORMATS)  # three rounds and latest.*
    # latest.* is round 8's model (a hard link to its files).
    for ext in FORMATS:
        assert (out / f"latest{ext}").read_bytes() == (out / f"model-r0008{ext}").read_bytes()


def test_exports_on_their_own_thread_are_written_in_order_by_close(tmp_path: Path) -> None:
    """A gateway exports off its loop (issue 20): rounds queued with ``export_soon`` are all
    written, in order, by ``close``, which stops the thread; the array may change after."""
    import threading

    out = tmp_path / "exports"
    exporter = RoundExporter(out, None, None, keep=10, min_free_bytes=0)
    exporter.close()  # never started: nothing to do
    held = params(1)
    for rnd in range(1, 5):
        held[:] = params(rnd)
        exporter.export_soon(SPEC, held, rnd)
    held[:] = 0.0  # the holder's array moves on; the queued copies do not
    exporter.close()
    assert rounds_in(out) == [1, 2, 3, 4]
    assert not any(t.name == "exports" for t in threading.enumerate())
    with np.load(out / "latest.npz") as npz:  # round 4's model, not the zeros
        assert any(np.abs(npz[k]).sum() > 0 for k in npz.files)


def test_pruning_never_touches_latest_and_clears_stale_temporary_files(tmp_path: Path) -> None:
    out = tmp_path / "exports"
    exporter = RoundExporter(out, None, None, keep=1, min_free_bytes=0)
    exporter.export(SPEC, params(1), 1)
    before = {ext: (out / f"latest{ext}").read_bytes() for ext in FORMATS}
    stale = out / ".model-r0002.onnx.4242.tmp"  # a writer that was killed mid-write
    stale.write_bytes(b"half")
    # Round 1's files go at round 2 (keep=1): latest.* still hold round 1's bytes until
    # round 2 replaces them, and then they hold round 2's.
    gone = prune_exports(out, keep=1, rnd=2)
    assert sorted(p.name for p in gone) == sorted(
        [stale.name] + [f"model-r0001{ext}" for ext in FORMATS]
    )
    assert {ext: (out / f"latest{ext}").read_bytes() for ext in FORMATS} == before
    exporter.export(SPEC, params(2), 2)
    assert rounds_in(out) == [2]
    for ext in FORMATS:
        assert (out / f"latest{ext}").read_bytes() == (out / f"model-r0002{ext}").read_bytes()


def test_a_round_that_leaves_too_little_free_is_skipped_with_one_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "exports"
    RoundExporter(out, None, None, keep=5, min_free_bytes=0).export(SPEC, params(1), 1)
    latest = {ext: (out / f"latest{ext}").read_bytes() for ext in FORMATS}
    # A reserve no disk has: every round is refused before a byte is written.
    greedy = RoundExporter(out, None, None, keep=5, min_free_bytes=2**62)
    with caplog.at_level(logging.INFO, logger="edge_swarm.node"):
        for rnd in (2, 3, 4):
            assert greedy.export(SPEC, params(rnd), rnd) == {}
    full = [r for r in caplog.records if "disk full" in r.getMessage()]
    assert len(full) == 1, caplog.text
    assert full[0].levelno == logging.WARNING
    assert "MiB needed" in full[0].getMessage() and "not exported" in full[0].getMessage()
    assert rounds_in(out) == [1]
    assert {ext: (out / f"latest{ext}").read_bytes() for ext in FORMATS} == latest
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # Space back (here: a reserve that fits): the next round is exported, and said so once.
    caplog.clear()
    roomy = RoundExporter(out, None, None, keep=5, min_free_bytes=0)
    with caplog.at_level(logging.INFO, logger="edge_swarm.node"):
        assert roomy.export(SPEC, params(5), 5)
    assert rounds_in(out) == [1, 5]
    assert sum("space is back" in r.getMessage() for r in caplog.records) == 1


def test_keep_and_reserve_are_gateway_settings(tmp_path: Path) -> None:
    base = {
        "node": {"id": "gw", "role": "gateway", "swarm": "s", "key": "k", "state_dir": "st"},
        "broker": {"host": "127.0.0.1"},
        "gateway": {"ledger": "l.sqlite"},
    }
    cfg = config_from_dict(base, tmp_path)
    assert (cfg.keep_exports, cfg.min_free_mb, cfg.min_free_bytes) == (5, 8.0, 8 * 2**20)
    assert "keep_exports" not in dump_config(cfg)  # defaults stay out of written files
    raw = {**base, "gateway": {"ledger": "l.sqlite", "keep_exports": 2, "min_free_mb": 0.5}}
    cfg = config_from_dict(raw, tmp_path)
    assert (cfg.keep_exports, cfg.min_free_bytes) == (2, 2**19)
    path = tmp_path / "gw.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    for bad in (
        {"keep_exports": 0},
        {"keep_exports": 1.5},
        {"min_free_mb": -1},
        {"min_free_mb": True},
    ):
        with pytest.raises(ConfigError, match="gateway"):
            config_from_dict({**base, "gateway": {"ledger": "l.sqlite", **bad}}, tmp_path)
