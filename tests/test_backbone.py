"""The frozen backbone, the served model, and a swarm that fine-tunes a head over a backbone.

Real runtimes (onnxruntime, the TFLite interpreter) run the files our own writers make; a
swarm of real processes whose agents extract features with TFLite and onnxruntime trains a
head, and the gateway's exports of every round agree with numpy within 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from edge_swarm.learn.backbone import (
    FILES,
    BackboneRef,
    features,
    load_backbone,
    pretrain,
    read_ref,
    write_backbone,
)
from edge_swarm.learn.data import public_private, standard_workload
from edge_swarm.learn.model import ModelSpec, forward, init_params
from edge_swarm.learn.runtimes import (
    ModelFileError,
    forward_layers,
    layers_of,
    load_layers,
    load_model,
)
from edge_swarm.node.config import NodeConfig, RuntimeConfig, dump_config, load_config
from edge_swarm.node.serving import ModelServer

from .side_runs import side_by_side

if TYPE_CHECKING:
    from edge_swarm.site.demo import RunResult

ENGINES = ("numpy", "onnxruntime", "tflite")


def require(engine: str) -> None:
    module = {"onnxruntime": "onnxruntime", "tflite": "ai_edge_litert"}.get(engine)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("EDGE_SWARM_REQUIRE_RUNTIMES") == "1":
            pytest.fail(f"EDGE_SWARM_REQUIRE_RUNTIMES=1 but {module} is not installed")
        pytest.skip(f"{module} not installed (pip install -e '.[serve]')")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BackboneRef, list, float]:
    public, _ = public_private(standard_workload())
    layers, accuracy = pretrain(public, (64, 32), seed=0)
    out = tmp_path_factory.mktemp("backbone")
    return out, write_backbone(layers, out), layers, accuracy


def test_pretraining_on_public_data_makes_a_useful_backbone(made: tuple) -> None:
    out, ref, layers, accuracy = made
    assert ref.sizes == (64, 64, 32)
    assert accuracy > 0.85  # its classifier, trained on 20% of the train split only
    assert read_ref(out) == ref and BackboneRef.from_dict(ref.to_dict()) == ref
    assert all((out / name).exists() for name in FILES.values())


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_extracts_the_same_features(made: tuple, engine: str) -> None:
    require(engine)
    out, ref, layers, _ = made
    X = standard_workload().X_test
    model = load_backbone(out, ref, engine)
    np.testing.assert_allclose(features(model, X), forward_layers(layers, X), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_backbone_file_that_is_not_the_genesis_ones_is_refused(
    made: tuple, engine: str, tmp_path: Path
) -> None:
    require(engine)
    out, ref, layers, _ = made
    other = write_backbone([replace(layers[0], bias=layers[0].bias + 0.01), layers[1]], tmp_path)
    with pytest.raises(ModelFileError, match="sha256"):
        load_backbone(tmp_path, ref, engine)  # well formed, but not the swarm's bytes
    assert other.files[engine] != ref.files[engine]
    wide = BackboneRef((65, 64, 32), dict(ref.files))
    with pytest.raises(ModelFileError, match="65"):
        load_backbone(out, wide, engine)  # the right file, the wrong input width


def test_bad_references_are_refused() -> None:
    for bad in (
        None,
        {},
        {"sizes": [64], "sha256": {}},
        {"sizes": [64, 32], "sha256": {"numpy": "x"}},
    ):
        with pytest.raises(ValueError):
            BackboneRef.from_dict(bad)


def test_the_server_keeps_its_last_good_model(tmp_path: Path) -> None:
    require("onnxruntime")
    spec = ModelSpec((64, 16, 10))
    server = ModelServer(tmp_path / "serving", "onnxruntime")
    good = init_params(spec, 1)
    assert server.install_layers(layers_of(spec, good), 1)
    X = standard_workload().X_test[:20]
    before = server.predict(X)
    np.testing.assert_array_equal(before, np.argmax(forward(spec, good, X), axis=1))
    # A new file that is truncated, or of another input width, is refused: round 1 stays.
    written = tmp_path / "serving" / "model-r0001.onnx"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(written.read_bytes()[:100])
    assert not server.install_file(broken, None, 64, 2)
    assert not server.install_file(written, None, 30, 3)
    assert server.round == 1
    np.testing.assert_array_equal(server.predict(X), before)


def test_predict_refuses_a_corrupt_model_clearly(made: tuple, tmp_path: Path) -> None:
    out, _, layers, _ = made
    data = tmp_path / "x.npz"
    np.savez(data, X=standard_workload().X_test[:5])
    bad = tmp_path / "bad.tflite"
    bad.write_bytes((out / FILES["tflite"]).read_bytes()[:-50])
    run = subprocess.run(
        [sys.executable, "-m", "edge_swarm", "predict", "--model", str(bad), str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "bad.tflite" in run.stderr, run.stderr


def test_runtime_profile_round_trips(tmp_path: Path) -> None:
    cfg = NodeConfig(
        node_id="pi-1",
        role="agent",
        swarm="clinic",
        key_path=tmp_path / "k",
        state_dir=tmp_path / "s",
        data_path=tmp_path / "d.npz",
        backbone_dir=tmp_path / "backbone",
        runtime=RuntimeConfig("onnxruntime", 2, ("CUDAExecutionProvider",), True),
    )
    path = tmp_path / "a.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


# --------------------------------------------------------------------------- a real swarm


def fine_tune_run(workdir: Path, made: tuple) -> RunResult:
    require("onnxruntime")
    require("tflite")
    from edge_swarm.site.demo import RunConfig, run_swarm

    out = made[0]
    cfg = RunConfig(
        workdir=workdir,
        n_agents=3,
        rounds=3,
        backbone=out,
        engine="tflite",
        round_deadline_s=20.0,
        start_grace_s=20.0,
        timeout_s=150.0,
    )
    return run_swarm(cfg)


@side_by_side(fine_tune_run)
@pytest.mark.network
def test_a_swarm_fine_tunes_a_head_and_every_export_agrees_with_numpy(
    made: tuple, side_run: RunResult
) -> None:
    from ledger_lite import SqliteStore

    _, ref, backbone_layers, _ = made
    result = side_run
    cfg = result.config
    assert result.final_accuracy > 0.8, [r.accuracy for r in result.rounds]
    genesis = SqliteStore(result.layout.ledger_path).load()[0]
    assert genesis.payload["params"]["backbone"] == ref.to_dict()  # named by its hashes
    agent_log = (cfg.workdir / "logs" / "agent-01.log").read_text()
    assert "backbone features of" in agent_log and "with tflite" in agent_log
    exports = result.layout.ledger_path.parent / "exports"
    X = result.workload.X_test
    for rnd in (1, 2, 3):
        head = load_layers(exports / f"model-r{rnd:04d}.npz")
        assert len(head) == len(backbone_layers) + len(cfg.hidden) + 1  # backbone + head
        want = forward_layers(head, X)
        for ext in (".onnx", ".tflite"):
            got = load_model(exports / f"model-r{rnd:04d}{ext}", expect_inputs=64).predict_logits(X)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
            assert (np.argmax(got, 1) == np.argmax(want, 1)).all()
    final = result.rounds[-1]
    served = load_model(exports / "latest.tflite")
    acc = float(np.mean(np.argmax(served.predict_logits(X), 1) == result.workload.y_test))
    assert abs(acc - final.accuracy) < 1e-9  # the exported file is the model the ledger made


def wrong_backbone_run(
    workdir: Path, made: tuple
) -> tuple[RunResult, subprocess.CompletedProcess[str]]:
    """agent-03 started, on a running swarm, with a backbone that is not the genesis's: the
    run, and how agent-03's process ended."""
    from edge_swarm.site.demo import RunConfig, run_swarm

    out, _, layers, _ = made
    cfg = RunConfig(
        workdir=workdir,
        n_agents=3,
        rounds=3,
        backbone=out,
        min_peers=2,
        start_agents=("agent-01", "agent-02"),
        start_grace_s=2.0,
        timeout_s=120.0,
    )
    wrong = workdir / "wrong-backbone"
    write_backbone([replace(layers[0], bias=layers[0].bias + 0.5), layers[1]], wrong)
    runs: list[subprocess.CompletedProcess[str]] = []

    def join_with_the_wrong_backbone(procs, obs) -> None:  # type: ignore[no-untyped-def]
        agent_cfg = load_config(procs.agents["agent-03"].config)
        bad = workdir / "agent-03-wrong.toml"
        bad.write_text(dump_config(replace(agent_cfg, backbone_dir=wrong)))
        argv = [sys.executable, "-m", "edge_swarm", "agent", "--config", str(bad)]
        runs.append(subprocess.run(argv, capture_output=True, text=True, timeout=60))

    result = run_swarm(cfg, during=join_with_the_wrong_backbone)
    (run,) = runs
    return result, run


@side_by_side(wrong_backbone_run)
@pytest.mark.network
def test_an_agent_with_the_wrong_backbone_refuses_to_start(
    side_run: tuple[RunResult, subprocess.CompletedProcess[str]],
) -> None:
    """agent-03 joins a running swarm with a backbone that is not the genesis's: it stops
    with a message naming the file and the hash, and the swarm goes on without it."""
    result, run = side_run
    assert run.returncode != 0
    assert "backbone.npz" in run.stderr and "sha256" in run.stderr, run.stderr[-2000:]
    assert all("agent-03" not in r.included for r in result.rounds)
