"""Serve a dense model with an on-device runtime: ONNX Runtime, TFLite, or plain numpy.

How it works:
    A trained model is a list of `Dense` layers (``layers_of`` cuts them out of a
    ``ModelSpec`` and its flat vector exactly as ``learn.model`` does; both live in
    ``learn.layers`` and are re-exported here). The exporters turn the list into a file:
    ``export_onnx.write_onnx`` (.onnx), ``export_tflite.write_tflite`` (.tflite) or
    ``save_npz`` (.npz, our own layers for the numpy engine). Each returns the sha256 of
    the bytes it wrote.

    ``load_model(path)`` reads the file once, checks its sha256 against ``expect_sha256``
    on those bytes, hands the same bytes to the runtime (no second read that could differ)
    and checks the graph: one 2-D float32 input, one 2-D float32 output. The returned
    `ServedModel` answers ``predict_logits(X)`` for any batch size.

    ``_open_onnx`` and ``_open_tflite`` (``learn._engines``) open the bytes with a runtime;
    ``learn._model_checks`` holds the errors and the checks of files and graphs.
    The TFLite interpreter is looked for as ``ai_edge_litert``, then ``tflite_runtime``,
    then ``tensorflow.lite`` (`_TFLITE_MODULES`; ``_engines._new_interpreter`` says why).
    A .tflite file is bounds-checked before any interpreter sees it
    (``learn.tflite_check``), and every model runs a probe batch before ``load_model``
    returns it.

    This module keeps the public face: `load_model`, `ServedModel`, `available_engines`,
    `load_layers`, the errors, and the numpy engine. The layers and the .npz format are in
    ``learn.layers``; the public names of ``learn.layers`` are re-exported here, so callers
    import from one place.

Invariants:
    - Importing this module imports numpy (and the pure modules above) and nothing
      heavier: onnxruntime and the TFLite interpreters are imported inside the functions
      that need them, so a numpy-only agent on a Pi never loads them.
    - ``load_model`` raises `ModelFileError` for anything wrong with the file (missing,
      wrong hash, corrupt, wrong shape or dtype), `EngineUnavailableError` when the runtime
      is not installed, and ValueError for a bad argument; no runtime's own exception type
      escapes it.
    - Writers are atomic (temporary file, fsync, ``os.replace``) and deterministic: the same
      layers give the same bytes and so the same sha256.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import util
from pathlib import Path

import numpy as np

from edge_swarm.learn._engines import (
    _dist_version,
    _numpy1_only,
    _open_onnx,
    _open_tflite,
    _tflite_dists,
)
from edge_swarm.learn._model_checks import (
    EngineUnavailableError,
    ModelFileError,
    _corrupt,
    _probe,
    _read_checked,
)
from edge_swarm.learn.layers import (
    NPZ_FORMAT as NPZ_FORMAT,  # public before the split; not in __all__, as before
)
from edge_swarm.learn.layers import (
    Dense,
    _layers_from_npz,
    check_layers,
    forward_layers,
    layers_of,
    npz_bytes,
    save_npz,
    write_atomic,
)

__all__ = [
    "ENGINES",
    "Dense",
    "EngineUnavailableError",
    "ModelFileError",
    "ServedModel",
    "available_engines",
    "check_layers",
    "forward_layers",
    "layers_of",
    "load_layers",
    "load_model",
    "npz_bytes",
    "save_npz",
    "write_atomic",
]

ENGINES = ("onnxruntime", "tflite", "numpy")
_EXTENSIONS = {".onnx": "onnxruntime", ".tflite": "tflite", ".npz": "numpy"}
# Tried in this order; the docstring of _new_interpreter says why. Tests patch it here.
_TFLITE_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)


# --------------------------------------------------------------------------- files


def load_layers(path: str | os.PathLike[str], expect_sha256: str | None = None) -> list[Dense]:
    """The layers in a .npz written by `save_npz` (a backbone, say), for re-export.

    Raises ModelFileError, as `load_model` does, if the file is missing, does not hash to
    ``expect_sha256`` or is not such a file.
    """
    path = Path(path)
    data, _ = _read_checked(path, expect_sha256)
    try:
        return _layers_from_npz(data)
    except Exception as e:  # zipfile, numpy and our own ValueError alike
        raise _corrupt(path, "numpy .npz", e) from e


# --------------------------------------------------------------------------- serving


class ServedModel:
    """A loaded model: ``predict_logits(X)`` for any batch size, plus what was loaded.

    Attributes: ``engine`` (one of `ENGINES`), ``backend`` (the package and version that
    runs it, with ONNX Runtime's providers), ``path``, ``sha256`` (of the file's bytes),
    ``n_inputs``, ``n_outputs``. Safe to call from several threads.
    """

    def __init__(
        self,
        engine: str,
        backend: str,
        path: Path,
        sha256: str,
        n_inputs: int,
        n_outputs: int,
        run: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self.engine = engine
        self.backend = backend
        self.path = path
        self.sha256 = sha256
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs
        self._run = run

    def predict_logits(self, X: np.ndarray) -> np.ndarray:
        """Logits (n, n_outputs) float32 for ``X`` (n, n_inputs); ValueError on another shape."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise ValueError(f"X must have shape (n, {self.n_inputs}), got {X.shape}")
        if X.shape[0] == 0:
            return np.zeros((0, self.n_outputs), dtype=np.float32)
        out = self._run(np.ascontiguousarray(X, dtype=np.float32))
        return np.asarray(out, dtype=np.float32).reshape(X.shape[0], self.n_outputs)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class per row (int64), as ``learn.model.predict``."""
        return np.argmax(self.predict_logits(X), axis=1).astype(np.int64)

    def __repr__(self) -> str:
        return (
            f"ServedModel({self.backend}, {str(self.path)!r}, "
            f"{self.n_inputs}->{self.n_outputs}, sha256={self.sha256[:12]}...)"
        )


def load_model(
    path: str | os.PathLike[str],
    engine: str | None = None,
    threads: int | None = None,
    providers: list[str] | None = None,
    expect_sha256: str | None = None,
    expect_inputs: int | None = None,
) -> ServedModel:
    """Load a model file and return a `ServedModel`.

    ``engine`` is one of `ENGINES`, or None to pick by extension (.onnx, .tflite, .npz).
    ``threads`` caps the runtime's intra-op threads (None: the runtime's default).
    ``providers`` are ONNX Runtime execution providers in order of preference; those not
    available here are dropped with one warning and CPUExecutionProvider is used instead.
    ``expect_sha256`` and ``expect_inputs`` are checked against the file and the graph.

    Raises ModelFileError (what is wrong with the file and what to do), EngineUnavailableError
    (which package to install), or ValueError for a bad argument.
    """
    path = Path(path)
    engine = _engine_for(path, engine)
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if providers is not None and engine != "onnxruntime":
        raise ValueError(f"providers only apply to the onnxruntime engine, not {engine}")
    data, sha = _read_checked(path, expect_sha256)
    if engine == "onnxruntime":
        n_in, n_out, run, backend = _open_onnx(path, data, threads, providers)
    elif engine == "tflite":
        n_in, n_out, run, backend = _open_tflite(path, data, threads, _TFLITE_MODULES)
    else:
        n_in, n_out, run, backend = _open_npz(path, data)
    if expect_inputs is not None and n_in != expect_inputs:
        raise ModelFileError(
            f"{path}: the model takes {n_in} input features but {expect_inputs} were expected; "
            "it was exported for another dataset or spec - export it again from the right model"
        )
    _probe(path, engine, run, n_in, n_out)
    return ServedModel(engine, backend, path, sha, n_in, n_out, run)


def available_engines() -> dict[str, str | None]:
    """Each of `ENGINES` mapped to the version of the package that would serve it, or None.

    Reads installed package metadata and does not import the runtimes, so it is cheap; a
    package that is installed but broken (say, built for another numpy) still shows a
    version here and fails in `load_model` with EngineUnavailableError.
    For "tflite" it is the first of ai-edge-litert, tflite-runtime, tensorflow present,
    passing over a tflite-runtime known to be built for numpy 1.x when numpy is 2.x.
    """
    ort = None
    if util.find_spec("onnxruntime") is not None:
        ort = _dist_version(("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"))
    tfl = None
    for module, dist in _TFLITE_MODULES:
        if util.find_spec(module.split(".")[0]) is not None:
            version = _dist_version(_tflite_dists(dist))
            if dist == "tflite-runtime" and _numpy1_only(version):
                continue
            tfl = version
            break
    return {"onnxruntime": ort, "tflite": tfl, "numpy": np.__version__}


def _engine_for(path: Path, engine: str | None) -> str:
    if engine is not None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES} or None, got {engine!r}")
        return engine
    try:
        return _EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise ModelFileError(
            f"{path}: cannot tell the engine from the extension {path.suffix!r}; "
            f"name the file .onnx, .tflite or .npz, or pass engine= one of {ENGINES}"
        ) from None


def _open_npz(path: Path, data: bytes) -> tuple[int, int, Callable[[np.ndarray], np.ndarray], str]:
    try:
        layers = _layers_from_npz(data)
    except Exception as e:  # zipfile, numpy and our own ValueError alike
        raise _corrupt(path, "numpy .npz", e) from e

    def run(X: np.ndarray) -> np.ndarray:
        return forward_layers(layers, X)

    return layers[0].n_in, layers[-1].n_out, run, f"numpy {np.__version__}"
