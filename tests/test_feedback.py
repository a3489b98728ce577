"""Error feedback: the residual tracks what was not sent, survives restarts, refuses bad state."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.swarm.feedback import MAGIC, VERSION, ErrorFeedback
from edge_swarm.swarm.quantize import CodecSpec, decode, encode

N = 2000
SPECS = [
    CodecSpec("int8"),
    CodecSpec("int4", rounding="stochastic"),
    CodecSpec("sign1"),
    CodecSpec("int8", topk=0.1),
    CodecSpec("int4", topk=0.1),
    CodecSpec("sign1", topk=0.01),
]


def deltas(rounds: int, seed: int = 0) -> list[np.ndarray]:
    """Deltas with a steady drift plus noise, like successive local training steps."""
    rng = np.random.default_rng(seed)
    drift = rng.standard_normal(N).astype(np.float32) * 1e-3
    return [drift + rng.standard_normal(N).astype(np.float32) * 1e-3 for _ in range(rounds)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}-{s.topk}")
def test_transmitted_sum_tracks_delta_sum(spec: CodecSpec) -> None:
    rounds = 60
    fb, plain = ErrorFeedback(N), ErrorFeedback(N, enabled=False)
    rng = np.random.default_rng(1)
    sum_d = np.zeros(N, np.float64)
    sum_fb = np.zeros(N, np.float64)
    sum_plain = np.zeros(N, np.float64)
    peak_residual = 0.0
    for d in deltas(rounds):
        body, tr = fb.compress(d, spec, rng)
        assert tr.tobytes() == decode(body, spec.codec_id, spec.flags, N).tobytes()
        sum_d += d
        sum_fb += tr
        sum_plain += plain.compress(d, spec, rng)[1]
        peak_residual = max(peak_residual, float(np.linalg.norm(fb.residual)))
        # The identity behind feedback: sent + still owed == everything asked for.
        np.testing.assert_allclose(sum_fb + fb.residual, sum_d, rtol=0, atol=1e-5)
    assert not plain.residual.any()
    err_fb = np.linalg.norm(sum_d - sum_fb) / np.linalg.norm(sum_d)
    err_plain = np.linalg.norm(sum_d - sum_plain) / np.linalg.norm(sum_d)
    # The residual stays bounded while the sum grows, so the relative error shrinks like 1/T.
    assert np.linalg.norm(fb.residual) <= peak_residual
    assert err_fb < err_plain, (err_fb, err_plain)


def residual_norms(spec: CodecSpec, rounds: int) -> tuple[list[float], list[float]]:
    """The residual's norm and the norm of the sum of deltas after each round."""
    fb = ErrorFeedback(N)
    rng = np.random.default_rng(2)
    total = np.zeros(N, np.float64)
    norms, sums = [], []
    for d in deltas(rounds):
        fb.compress(d, spec, rng)
        total += d
        norms.append(float(np.linalg.norm(fb.residual)))
        sums.append(float(np.linalg.norm(total)))
    return norms, sums


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}-{s.topk}")
def test_tracking_error_shrinks_relative_to_the_sum(spec: CodecSpec) -> None:
    # sum(sent) = sum(deltas) - residual, so the relative tracking error is |r_T| / |sum d|.
    # The drift makes |sum d| grow like T; were the residual to grow like T too, the ratio
    # would stay level. Over 8x the rounds it must at least halve.
    norms, sums = residual_norms(spec, 800)
    assert norms[-1] / sums[-1] <= 0.5 * norms[99] / sums[99]


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name != "sign1" or s.topk], ids=str)
def test_residual_levels_off(spec: CodecSpec) -> None:
    # A residual growing linearly would double from rounds 100-200 to 300-400; a bounded one
    # stays level; 1.5 splits the two. (Dense sign1 with 256-element chunks is left out: its
    # residual settles far more slowly, still creeping up after thousands of rounds.)
    norms, _ = residual_norms(spec, 400)
    assert max(norms[300:]) <= 1.5 * max(norms[100:200]), (max(norms[300:]), max(norms[100:200]))


def test_disabled_is_plain_compression() -> None:
    d = deltas(1)[0]
    spec = CodecSpec("int4")
    fb = ErrorFeedback(N, enabled=False)
    body, tr = fb.compress(d, spec)
    assert body == encode(d, spec)
    assert tr.tobytes() == decode(body, spec.codec_id, spec.flags, N).tobytes()
    assert not fb.residual.any()


def test_compress_does_not_touch_input_and_refusal_keeps_state() -> None:
    fb = ErrorFeedback(N)
    d = deltas(1)[0]
    copy = d.copy()
    fb.compress(d, CodecSpec("sign1"))
    assert d.tobytes() == copy.tobytes()
    before = fb.to_bytes()
    bad = d.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError):
        fb.compress(bad, CodecSpec("int8"))
    with pytest.raises(ValueError):
        fb.compress(d[:-1], CodecSpec("int8"))
    with pytest.raises(ValueError):
        fb.compress(d, CodecSpec("int8", rounding="stochastic"))  # no rng
    assert fb.to_bytes() == before
    with pytest.raises(ValueError):
        fb.residual[0] = 1.0  # read-only view


def test_reset() -> None:
    fb = ErrorFeedback(N)
    fb.compress(deltas(1)[0], CodecSpec("sign1"))
    assert fb.residual.any()
    fb.reset()
    assert not fb.residual.any()


@pytest.mark.parametrize("n", [0, -1, 2**32])
def test_bad_sizes(n: int) -> None:
    with pytest.raises(ValueError):
        ErrorFeedback(n)


# --------------------------------------------------------------------------- persistence


def test_bytes_round_trip_and_format() -> None:
    fb = ErrorFeedback(N)
    fb.compress(deltas(1)[0], CodecSpec("int4"))
    data = fb.to_bytes()
    values = fb.residual.astype("<f4").tobytes()
    assert data == struct.pack("<4sB3xII", MAGIC, VERSION, N, zlib.crc32(values)) + values
    back = ErrorFeedback.from_bytes(data, N)
    assert back.residual.tobytes() == fb.residual.tobytes() and back.enabled


def test_restart_continues_exactly(tmp_path: Path) -> None:
    spec = CodecSpec("int8", topk=0.1, rounding="stochastic")
    ds = deltas(6)
    straight = ErrorFeedback(N)
    rng_a = np.random.default_rng(9)
    bodies_a = [straight.compress(d, spec, rng_a)[0] for d in ds]
    first = ErrorFeedback(N)
    rng_b = np.random.default_rng(9)
    bodies_b = [first.compress(d, spec, rng_b)[0] for d in ds[:3]]
    path = tmp_path / "residual.bin"
    first.save(path)
    resumed = ErrorFeedback.load(path, N)
    bodies_b += [resumed.compress(d, spec, rng_b)[0] for d in ds[3:]]
    assert bodies_a == bodies_b
    assert sorted(os.listdir(tmp_path)) == ["residual.bin"]  # no temporary left behind


def test_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "residual.bin"
    old = ErrorFeedback(N)
    old.save(path)
    new = ErrorFeedback(N)
    new.compress(deltas(1)[0], CodecSpec("sign1"))

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old.to_bytes()
    assert sorted(os.listdir(tmp_path)) == ["residual.bin"]
    new.save(path)
    assert ErrorFeedback.load(path, N).residual.tobytes() == new.residual.tobytes()


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ErrorFeedback.load(tmp_path / "none", N)
    fresh = ErrorFeedback.load(tmp_path / "none", N, enabled=False, missing_ok=True)
    assert not fresh.residual.any() and not fresh.enabled


def _state(n: int, values: bytes, *, magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    return struct.pack("<4sB3xII", magic, version, n, zlib.crc32(values)) + values


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ESEF",
        _state(4, b"\0" * 16, magic=b"XXXX"),
        _state(4, b"\0" * 16, version=2),
        _state(5, b"\0" * 20),  # another model's size
        _state(4, b"\0" * 12),  # truncated
        _state(4, b"\0" * 16)[:-1] + b"\x01",  # checksum
        _state(4, struct.pack("<4f", 0, 0, float("nan"), 0)),
        _state(4, struct.pack("<4f", 0, float("inf"), 0, 0)),
    ],
)
def test_from_bytes_refuses_bad_state(data: bytes) -> None:
    with pytest.raises(ValueError):
        ErrorFeedback.from_bytes(data, 4)


@given(st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_from_bytes_any_input(data: bytes) -> None:
    try:
        fb = ErrorFeedback.from_bytes(data, 4)
    except ValueError:
        return
    assert fb.n_params == 4 and np.all(np.isfinite(fb.residual))
