"""Exported dense models served by the real runtimes agree with learn.model's forward.

A runtime or exporter package that is not installed skips its tests with a message saying
what to install, unless ``EDGE_SWARM_REQUIRE_RUNTIMES=1`` (CI), where that fails.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_swarm.learn.model import ModelSpec, forward, predict, unflatten
from edge_swarm.learn.runtimes import (
    Dense,
    EngineUnavailableError,
    ModelFileError,
    available_engines,
    forward_layers,
    layers_of,
    load_layers,
    load_model,
    save_npz,
)

REQUIRE_RUNTIMES_ENV = "EDGE_SWARM_REQUIRE_RUNTIMES"
SHAPES = [(64, 10), (64, 32, 10), (64, 64, 32, 10), (30, 16, 2)]
BATCHES = (1, 7, 64, 7)  # back to 7: a resized TFLite interpreter must shrink again
EXT = {"onnxruntime": ".onnx", "tflite": ".tflite", "numpy": ".npz"}
_INSTALL = {
    "onnxruntime": "pip install onnxruntime",
    "tflite": "pip install ai-edge-litert",
    "onnx": "pip install onnx",
    "tflite-schema": "pip install flatbuffers tflite",
}


def _missing(what: str, why: str) -> None:
    """Skip, or fail when the environment says every runtime must be there."""
    if os.environ.get(REQUIRE_RUNTIMES_ENV) == "1":
        pytest.fail(f"{REQUIRE_RUNTIMES_ENV}=1 but {what} is unusable: {why}")
    pytest.skip(f"{what} unusable ({why}); {_INSTALL[what]}, set {REQUIRE_RUNTIMES_ENV}=1 to fail")


def _need(module: str, what: str):
    """Import ``module``, or skip (fail when required) naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        _missing(what, str(e))


def _writer(engine: str):
    """The export function for ``engine``'s file format, or skip if its packages are missing."""
    if engine == "numpy":
        return save_npz
    if engine == "onnxruntime":
        _need("onnx", "onnx")
        from edge_swarm.learn.export_onnx import write_onnx

        return write_onnx
    _need("flatbuffers", "tflite-schema"), _need("tflite", "tflite-schema")
    from edge_swarm.learn.export_tflite import write_tflite

    return write_tflite


def _random_model(sizes: tuple[int, ...], activation: str = "relu", seed: int = 0):
    """Spec and params with nonzero biases (init_params would leave them at zero)."""
    spec = ModelSpec(sizes, activation)
    params = np.random.default_rng(seed).normal(0, 0.3, spec.n_params).astype(np.float32)
    return spec, params


def _export_and_load(engine: str, tmp_path: Path, layers: list[Dense], **kwargs):
    path = tmp_path / f"model{EXT[engine]}"
    sha = _writer(engine)(layers, path)
    try:
        return load_model(path, expect_sha256=sha, **kwargs)
    except EngineUnavailableError as e:
        _missing("onnxruntime" if engine == "onnxruntime" else "tflite", str(e))


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("engine", ["onnxruntime", "tflite", "numpy"])
@pytest.mark.parametrize(
    ("sizes", "activation"), [(s, "relu") for s in SHAPES] + [((30, 16, 8, 2), "tanh")]
)
def test_runtime_logits_match_numpy_forward(tmp_path, engine, sizes, activation):
    spec, params = _random_model(sizes, activation, seed=len(sizes))
    model = _export_and_load(engine, tmp_path, layers_of(spec, params), threads=1)
    assert (model.engine, model.n_inputs, model.n_outputs) == (engine, sizes[0], sizes[-1])
    rng = np.random.default_rng(42)
    for batch in BATCHES:
        X = rng.normal(size=(batch, sizes[0])).astype(np.float32)
        logits = model.predict_logits(X)
        assert logits.dtype == np.float32 and logits.shape == (batch, sizes[-1])
        if engine == "numpy":  # same numpy operations in the same order: same bits
            np.testing.assert_array_equal(logits, forward(spec, params, X))
        else:
            np.testing.assert_allclose(logits, forward(spec, params, X), atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(model.predict(X), predict(spec, params, X))


@pytest.mark.parametrize("engine", ["onnxruntime", "tflite", "numpy"])
def test_backbone_layers_with_activation_on_the_last_layer(tmp_path, engine):
    """A backbone is the hidden layers only: its output layer applies the activation too."""
    for activation in ("relu", "tanh"):
        spec, params = _random_model((30, 16, 8, 2), activation, seed=9)
        backbone = layers_of(spec, params)[:-1]
        model = _export_and_load(engine, tmp_path, backbone)
        X = np.random.default_rng(2).normal(size=(7, 30)).astype(np.float32)
        expected = forward_layers(backbone, X)
        assert expected.min() >= (0 if activation == "relu" else -1)
        np.testing.assert_allclose(model.predict_logits(X), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("engine", ["onnxruntime", "tflite"])
def test_float64_input_and_empty_batch(tmp_path, engine):
    spec, params = _random_model((30, 16, 2))
    model = _export_and_load(engine, tmp_path, layers_of(spec, params))
    X = np.random.default_rng(1).normal(size=(5, 30))  # float64: converted, not refused
    np.testing.assert_allclose(model.predict_logits(X), forward(spec, params, X), atol=1e-5)
    assert model.predict_logits(np.zeros((0, 30))).shape == (0, 2)
    with pytest.raises(ValueError, match=r"shape \(n, 30\)"):
        model.predict_logits(np.zeros((3, 31), np.float32))


def test_tflite_is_safe_across_threads(tmp_path):
    """One interpreter, several threads, different batch sizes: every answer is right."""
    spec, params = _random_model((64, 32, 10))
    model = _export_and_load("tflite", tmp_path, layers_of(spec, params))
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(b, 64)).astype(np.float32) for b in (1, 5, 64, 13)]
    errors: list[BaseException] = []

    def worker(X: np.ndarray) -> None:
        try:
            for _ in range(50):
                np.testing.assert_allclose(
                    model.predict_logits(X), forward(spec, params, X), atol=1e-5, rtol=1e-5
                )
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(X,)) for X in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# --------------------------------------------------------------------------- layers, files


def test_layers_of_cuts_like_unflatten():
    spec, params = _random_model((30, 16, 8, 2), "tanh")
    layers = layers_of(spec, params)
    assert [d.activation for d in layers] == ["tanh", "tanh", None]
    for d, (W, b) in zip(layers, unflatten(spec, params), strict=True):
        np.testing.assert_array_equal(d.weight, W)
        np.testing.assert_array_equal(d.bias, b)
    params[:] = 0  # the layers hold copies: a training step does not change an export
    assert np.any(layers[0].weight != 0)
    assert not layers[0].weight.flags.writeable
    assert layers_of(ModelSpec((4, 3)), np.zeros(15, np.float32))[0].relu is False


def test_load_layers_round_trip(tmp_path):
    spec, params = _random_model((30, 16, 8, 2), "tanh")
    layers = layers_of(spec, params)
    sha = save_npz(layers, tmp_path / "m.npz")
    back = load_layers(tmp_path / "m.npz", expect_sha256=sha)
    assert [d.activation for d in back] == [d.activation for d in layers]
    for a, b in zip(back, layers, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
    with pytest.raises(ModelFileError, match="sha256 is"):
        load_layers(tmp_path / "m.npz", expect_sha256="1" * 64)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFileError, match="not a valid numpy .npz model"):
        load_layers(tmp_path / "bad.npz")


def test_dense_refuses_bad_layers():
    w, b = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="bias"):
        Dense(w, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="floating point"):
        Dense(w.astype(np.int32), b)
    with pytest.raises(ValueError, match="activation"):
        Dense(w, b, "sigmoid")
    with pytest.raises(ValueError, match="layer 1 gives 3 values but layer 2 takes 5"):
        save_npz([Dense(w, b), Dense(np.zeros((5, 2), np.float32), np.zeros(2))], "/nonexistent")


@pytest.mark.parametrize("engine", ["onnxruntime", "tflite", "numpy"])
def test_export_is_atomic_and_deterministic(tmp_path, engine):
    write = _writer(engine)
    spec, params = _random_model((30, 16, 2))
    path = tmp_path / f"m{EXT[engine]}"
    sha1 = write(layers_of(spec, params), path)
    assert sha1 == hashlib.sha256(path.read_bytes()).hexdigest()
    sha2 = write(layers_of(spec, params.copy()), path)
    assert sha2 == sha1  # same layers, same bytes: a sha256 can name a model
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_onnx_graph_shape():
    onnx = _need("onnx", "onnx")
    from edge_swarm.learn.export_onnx import IR_VERSION, OPSET, onnx_bytes

    spec, params = _random_model((64, 32, 10))
    model = onnx.load_from_string(onnx_bytes(layers_of(spec, params), "features", "scores"))
    assert model.ir_version == IR_VERSION and model.opset_import[0].version == OPSET
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = [(d.dim_param or d.dim_value) for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims) == ("features", ["N", 64])
    assert out.name == "scores"
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Relu", "Gemm"]


def test_tflite_flatbuffer_layout():
    tflite = _need("tflite", "tflite-schema")
    from edge_swarm.learn.export_tflite import tflite_bytes

    spec, params = _random_model((64, 32, 10))
    layers = layers_of(spec, params)
    model = tflite.Model.GetRootAs(tflite_bytes(layers))
    assert model.Version() == 3 and model.SubgraphsLength() == 1
    sg = model.Subgraphs(0)
    x = sg.Tensors(sg.Inputs(0))
    assert x.ShapeAsNumpy().tolist() == [1, 64]
    assert x.ShapeSignatureAsNumpy().tolist() == [-1, 64]
    assert x.Type() == tflite.TensorType.FLOAT32
    fused = []
    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()
        assert code == tflite.BuiltinOperator.FULLY_CONNECTED
        options = tflite.FullyConnectedOptions()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        fused.append(options.FusedActivationFunction())
        weight = sg.Tensors(op.Inputs(1))
        assert weight.ShapeAsNumpy().tolist() == [layers[k].n_out, layers[k].n_in]
        buffer = model.Buffers(weight.Buffer())
        assert buffer._tab.Vector(buffer._tab.Offset(4)) % 16 == 0  # aligned for SIMD loads
        data = buffer.DataAsNumpy().view("<f4")
        np.testing.assert_array_equal(data, layers[k].weight.T.ravel())
    assert fused == [tflite.ActivationFunctionType.RELU, tflite.ActivationFunctionType.NONE]


# --------------------------------------------------------------------------- bad files


def _good_file(engine: str, tmp_path: Path) -> Path:
    spec, params = _random_model((30, 16, 2))
    path = tmp_path / f"good{EXT[engine]}"
    _writer(engine)(layers_of(spec, params), path)
    return path


def _load_or_skip(path: Path, **kwargs):
    """load_model, skipping (not failing) when the runtime itself is missing."""
    try:
        return load_model(path, **kwargs)
    except EngineUnavailableError as e:
        _missing("onnxruntime" if path.suffix == ".onnx" else "tflite", str(e))


@pytest.mark.parametrize("engine", ["onnxruntime", "tflite", "numpy"])
@pytest.mark.parametrize("damage", ["truncated", "tail_cut", "random", "empty"])
def test_damaged_file_raises_model_file_error(tmp_path, engine, damage):
    good = _good_file(engine, tmp_path)
    _load_or_skip(good)  # the runtime is there and the intact file loads
    data = good.read_bytes()
    bad = tmp_path / f"bad{EXT[engine]}"
    bad.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "tail_cut": data[:-7],  # a download that stopped just short
            "random": np.random.default_rng(5).bytes(len(data)),
            "empty": b"",
        }[damage]
    )
    with pytest.raises(ModelFileError) as info:
        load_model(bad)
    message = str(info.value)
    assert str(bad) in message
    assert "again" in message  # says what to do: export or download it again


@pytest.mark.parametrize("engine", ["onnxruntime", "tflite", "numpy"])
def test_wrong_sha256_and_wrong_width(tmp_path, engine):
    good = _good_file(engine, tmp_path)
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    assert _load_or_skip(good, expect_sha256=sha.upper()).sha256 == sha
    with pytest.raises(ModelFileError, match=f"sha256 is {sha} but {'0' * 64} was expected"):
        load_model(good, expect_sha256="0" * 64)
    with pytest.raises(ModelFileError, match="takes 30 input features but 64 were expected"):
        load_model(good, expect_inputs=64)
    assert load_model(good, expect_inputs=30).n_inputs == 30


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "absent.onnx")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="cannot tell the engine"):
        load_model(odd)
    with pytest.raises(ValueError, match="engine must be one of"):
        load_model(odd, engine="tensorrt")
    with pytest.raises(ValueError, match="threads"):
        load_model(odd, engine="numpy", threads=0)
    with pytest.raises(ValueError, match="64 hex digits"):
        load_model(odd, engine="numpy", expect_sha256="abc")


def test_engine_override_by_name(tmp_path):
    good = _good_file("numpy", tmp_path)
    renamed = good.rename(tmp_path / "model.weights")
    assert load_model(renamed, engine="numpy").engine == "numpy"


def _onnx_graph(tmp_path: Path, name: str, elem_type: int, dims: list) -> Path:
    """A one-node Identity ONNX graph with the given input type and shape."""
    helper = _need("onnx.helper", "onnx")

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", elem_type, dims)],
        [helper.make_tensor_value_info("y", elem_type, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_graph_that_is_not_a_dense_float_model(tmp_path):
    TensorProto = _need("onnx", "onnx").TensorProto  # noqa: N806

    cases = {
        "int": (TensorProto.INT64, ["N", 4], "tensor\\(int64\\), not float32"),
        "double": (TensorProto.DOUBLE, ["N", 4], "tensor\\(double\\), not float32"),
        "image": (TensorProto.FLOAT, ["N", 3, 8, 8], "needs \\(batch, features\\)"),
        "open_width": (TensorProto.FLOAT, ["N", "F"], "fixed feature count"),
    }
    for name, (elem_type, dims, expected) in cases.items():
        path = _onnx_graph(tmp_path, name, elem_type, dims)
        with pytest.raises(ModelFileError, match=expected):
            _load_or_skip(path)


def test_onnx_fixed_batch_graph_runs_in_chunks(tmp_path):
    """A graph exported with batch 4 (not by us) still serves 1, 7 or 64 rows."""
    TensorProto = _need("onnx", "onnx").TensorProto  # noqa: N806

    model = _load_or_skip(_onnx_graph(tmp_path, "fixed", TensorProto.FLOAT, [4, 3]))
    for n in (1, 7, 64):
        X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        np.testing.assert_array_equal(model.predict_logits(X), X)


# --------------------------------------------------------------------------- engines


def test_unavailable_provider_falls_back_to_cpu_with_one_log_line(tmp_path, caplog):
    good = _good_file("onnxruntime", tmp_path)
    _load_or_skip(good)
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA; the fallback cannot be observed here")
    caplog.set_level(logging.WARNING, logger="edge_swarm.learn.runtimes")
    model = load_model(good, providers=["CUDAExecutionProvider"], threads=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_swarm.learn.runtimes"]
    assert len(lines) == 1, lines
    assert (
        "CUDAExecutionProvider" in lines[0] and "falling back to CPUExecutionProvider" in lines[0]
    )
    assert "CPUExecutionProvider" in model.backend
    assert model.predict_logits(np.zeros((3, 30), np.float32)).shape == (3, 2)
    with pytest.raises(ValueError, match="providers only apply"):
        load_model(tmp_path / "x.npz", providers=["CPUExecutionProvider"])


def test_tflite_runtime_built_for_numpy1_is_passed_over(tmp_path, monkeypatch):
    """tflite-runtime 2.14 imports under numpy 2 but cannot build an interpreter: that is
    EngineUnavailableError naming the package, never ModelFileError blaming the file."""
    pytest.importorskip("tflite_runtime")
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("numpy 1.x: tflite-runtime works here")
    from edge_swarm.learn import runtimes

    good = _good_file("tflite", tmp_path)
    monkeypatch.setattr(
        runtimes, "_TFLITE_MODULES", (("tflite_runtime.interpreter", "tflite-runtime"),)
    )
    with pytest.raises(EngineUnavailableError, match="tflite-runtime.*pip install ai-edge-litert"):
        load_model(good)
    assert available_engines()["tflite"] is None  # not claimed as available either


def test_available_engines_lists_versions():
    engines = available_engines()
    assert set(engines) == {"onnxruntime", "tflite", "numpy"}
    assert engines["numpy"] == np.__version__


def test_import_loads_no_runtime():
    """A numpy-only agent imports runtimes without pulling in any runtime or exporter."""
    heavy = ["onnxruntime", "onnx", "tflite_runtime", "ai_edge_litert", "tensorflow", "tflite"]
    code = (
        "import sys, edge_swarm.learn.runtimes as r; r.available_engines(); "
        f"loaded = [m for m in {heavy!r} if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
