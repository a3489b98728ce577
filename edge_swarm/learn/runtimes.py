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

    The TFLite interpreter is looked for as ``ai_edge_litert``, then ``tflite_runtime``,
    then ``tensorflow.lite`` (`_new_interpreter` says why). A .tflite file is
    bounds-checked before any interpreter sees it (``learn.tflite_check``), and every
    model runs a probe batch before ``load_model`` returns it.

    This module keeps what touches engines and model files: reading and checking a file,
    the engines, `ServedModel` and the errors. The layers and the .npz format are in
    ``learn.layers``, the flatbuffer checker in ``learn.tflite_check``; the public names
    of ``learn.layers`` are re-exported here, so callers import from one place.

Invariants:
    - Importing this module imports numpy (and the two pure modules above) and nothing
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

import hashlib
import importlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np

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
from edge_swarm.learn.model import MAX_WIDTH
from edge_swarm.learn.tflite_check import check_tflite_structure

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

log = logging.getLogger(__name__)

ENGINES = ("onnxruntime", "tflite", "numpy")
_EXTENSIONS = {".onnx": "onnxruntime", ".tflite": "tflite", ".npz": "numpy"}
_MAX_ERROR_DETAIL = 300  # characters of a runtime's message kept in ours
# Tried in this order; the docstring of _new_interpreter says why. Tests patch it here.
_TFLITE_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)
_BROKEN_WARNED: set[str] = set()  # TFLite packages already warned about as unusable


class ModelFileError(ValueError):
    """The model file is missing, not the one expected, corrupt, or not a dense float model."""


class EngineUnavailableError(ImportError):
    """The runtime the model needs is not installed; the message names the package."""


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
        n_in, n_out, run, backend = _open_tflite(path, data, threads)
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


def _tflite_dists(dist: str) -> tuple[str, ...]:
    if dist == "tensorflow":
        return ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64", "tf-nightly")
    return (dist,)


def _numpy1_only(tflite_runtime_version: str) -> bool:
    """True if this tflite-runtime is known to fail under the installed numpy (2.x).

    Every tflite-runtime release (the last is 2.14.0) was built against numpy 1.x: it
    imports under numpy 2 but cannot build an interpreter.
    """
    try:
        release = tuple(int(p) for p in tflite_runtime_version.split(".")[:2])
    except ValueError:
        return False
    return release <= (2, 14) and int(np.__version__.split(".")[0]) >= 2


def _dist_version(dists: Sequence[str]) -> str:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"  # importable but not pip-installed (a vendor build on a Jetson image)


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


def _read_checked(path: Path, expect_sha256: str | None) -> tuple[bytes, str]:
    """The file's bytes and their sha256 hex, checked against ``expect_sha256``."""
    if expect_sha256 is not None:
        expect_sha256 = expect_sha256.lower()
        if len(expect_sha256) != 64 or any(c not in "0123456789abcdef" for c in expect_sha256):
            raise ValueError(f"expect_sha256 must be 64 hex digits, got {expect_sha256!r}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"{path}: no such model file; check the path, or export the model first "
            "(write_onnx, write_tflite or save_npz)"
        ) from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the model file ({e.strerror})") from e
    if not data:
        raise ModelFileError(f"{path}: the model file is empty; export or download it again")
    sha = hashlib.sha256(data).hexdigest()
    if expect_sha256 is not None and sha != expect_sha256:
        raise ModelFileError(
            f"{path}: sha256 is {sha} but {expect_sha256} was expected; the file is damaged "
            "or is another model - download or export it again"
        )
    return data, sha


def _one_line(exc: BaseException, limit: int) -> str:
    return " ".join(str(exc).split())[:limit]


def _corrupt(path: Path, kind: str, exc: BaseException) -> ModelFileError:
    detail = _one_line(exc, _MAX_ERROR_DETAIL)
    return ModelFileError(
        f"{path}: not a valid {kind} model ({type(exc).__name__}: {detail}); the file may be "
        "truncated or corrupt - export or download it again"
    )


# (shape, dtype name, is float32) of one graph input or output
_Port = tuple[Sequence[object], str, bool]


def _check_graph(
    path: Path, kind: str, inputs: list[_Port], outputs: list[_Port]
) -> tuple[int, int]:
    """(n_inputs, n_outputs) of a graph with one 2-D float32 input and output."""
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(
            f"{path}: the {kind} graph has {len(inputs)} inputs and {len(outputs)} outputs; "
            "a dense model has one of each - export it with edge_swarm.learn.export_*"
        )
    widths = []
    for role, (shape, dtype, is_float) in (("input", inputs[0]), ("output", outputs[0])):
        if not is_float:
            raise ModelFileError(
                f"{path}: the {kind} {role} is {dtype}, not float32; quantized or integer "
                "models are not served here - export the float model"
            )
        width = shape[1] if len(shape) == 2 else None
        if not isinstance(width, (int, np.integer)) or not 1 <= width <= MAX_WIDTH:
            raise ModelFileError(
                f"{path}: the {kind} {role} has shape {list(shape)}; a dense model needs "
                f"(batch, features) with a fixed feature count of at most {MAX_WIDTH}"
            )
        widths.append(int(width))
    return widths[0], widths[1]


def _probe(
    path: Path, engine: str, run: Callable[[np.ndarray], np.ndarray], n_in: int, n_out: int
) -> None:
    """Run batches of 1 and 2 zero rows, so a graph that loads but cannot run (a damaged
    shape or tensor index) fails here as ModelFileError, not in the first prediction."""
    for batch in (1, 2):  # 2 also exercises the TFLite resize path
        try:
            shape = np.shape(run(np.zeros((batch, n_in), np.float32)))
        except Exception as e:
            raise _corrupt(path, engine, e) from e
        if shape != (batch, n_out):
            raise _corrupt(path, engine, ValueError(f"{batch} rows gave logits {shape}"))


def _in_chunks(
    run: Callable[[np.ndarray], np.ndarray], size: int, n_in: int
) -> Callable[[np.ndarray], np.ndarray]:
    """``run`` for a graph fixed to batches of ``size``: the last chunk is zero-padded."""

    def chunked(X: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, X.shape[0], size):
            part = X[start : start + size]
            n = part.shape[0]
            if n < size:
                part = np.concatenate([part, np.zeros((size - n, n_in), np.float32)])
            outs.append(run(part)[:n])
        return np.concatenate(outs)

    return chunked


# --------------------------------------------------------------------------- engines


def _open_onnx(
    path: Path, data: bytes, threads: int | None, providers: list[str] | None
) -> tuple[int, int, Callable[[np.ndarray], np.ndarray], str]:
    try:
        import onnxruntime as ort
    except Exception as e:  # ImportError, or a wheel built against another numpy
        raise EngineUnavailableError(
            f"onnxruntime cannot be imported ({type(e).__name__}: {e}); "
            "pip install onnxruntime (onnxruntime-gpu on a Jetson), or serve the .tflite/.npz"
        ) from e
    chosen = _choose_providers(ort.get_available_providers(), providers)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT's warnings bypass our logging
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # an MLP is one chain of ops
    opts.inter_op_num_threads = 1
    if threads is not None:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(data, sess_options=opts, providers=chosen)
        # Read everything now: a damaged name fails only when pybind11 decodes it.
        ins = [(p.name, list(p.shape), p.type) for p in sess.get_inputs()]
        outs = [(p.name, list(p.shape), p.type) for p in sess.get_outputs()]
        used = sess.get_providers()
    except Exception as e:
        raise _corrupt(path, "ONNX", e) from e

    def port(shape: list, kind: str) -> _Port:
        return shape, kind, kind == "tensor(float)"

    n_in, n_out = _check_graph(
        path, "ONNX", [port(*p[1:]) for p in ins], [port(*p[1:]) for p in outs]
    )
    (in_name, in_shape, _), (out_name, _, _) = ins[0], outs[0]

    def run(X: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {in_name: X})[0]

    failed = [p for p in chosen if p not in used]
    if failed:  # listed as available, but would not start (say, CUDA libraries missing)
        log.warning("onnxruntime: %s did not start; running on %s", ", ".join(failed), used)
    backend = f"onnxruntime {ort.__version__} ({', '.join(used)})"
    batch = in_shape[0]
    if isinstance(batch, int) and batch > 0:  # exported with a fixed batch (not by us)
        return n_in, n_out, _in_chunks(run, batch, n_in), backend
    return n_in, n_out, run, backend


def _choose_providers(available: list[str], requested: list[str] | None) -> list[str]:
    """``requested`` less those not available here, CPU last; one warning if any dropped."""
    if requested is None:
        return ["CPUExecutionProvider"]
    if isinstance(requested, str) or not all(isinstance(p, str) for p in requested):
        raise ValueError(f"providers must be a list of provider names, got {requested!r}")
    kept = [p for p in requested if p in available]
    dropped = [p for p in requested if p not in available]
    if "CPUExecutionProvider" not in kept:
        kept.append("CPUExecutionProvider")
    if dropped:
        log.warning(
            "onnxruntime: %s not available here (available: %s); falling back to %s",
            ", ".join(dropped),
            ", ".join(available),
            " then ".join(kept) if len(kept) > 1 else "CPUExecutionProvider",
        )
    return kept


def _new_interpreter(path: Path, data: bytes, threads: int | None) -> tuple[Any, str]:
    """A TFLite interpreter holding ``data`` and the package it came from.

    Packages are tried in `_TFLITE_MODULES` order. Why this order: ai-edge-litert is
    Google's maintained TFLite runtime, with wheels for current Pythons and numpy 2;
    tflite-runtime stopped at 2.14 (no wheels past Python 3.11, built against numpy 1.x)
    but is what older Pi and Jetson images carry; full TensorFlow comes last because
    importing it costs seconds and hundreds of MB, worth it only on a development machine
    that has it anyway. A package that imports but cannot build an interpreter for an
    ImportError (tflite-runtime 2.14 under numpy 2 does exactly that) is skipped, with one
    warning per process, instead of blaming the file.
    """
    failures = []
    for module, dist in _TFLITE_MODULES:
        if util.find_spec(module.split(".")[0]) is None:
            continue
        try:
            interpreter_class = importlib.import_module(module).Interpreter
            interp = interpreter_class(model_content=data, num_threads=threads)
            interp.allocate_tensors()
            return interp, f"{dist} {_dist_version(_tflite_dists(dist))}"
        except Exception as e:
            if not _caused_by_import(e):
                raise _corrupt(path, "TFLite", e) from e
            reason = f"{dist}: {type(e).__name__}: {_one_line(e, 200)}"
            failures.append(reason)
            if dist not in _BROKEN_WARNED:
                _BROKEN_WARNED.add(dist)
                log.warning(
                    "TFLite: %s is installed but unusable, trying the next (%s)", dist, reason
                )
    tried = "; ".join(failures) if failures else "none of them is installed"
    raise EngineUnavailableError(
        f"no usable TFLite interpreter ({tried}); pip install ai-edge-litert "
        "(or tflite-runtime on Python <= 3.11 with numpy < 2), or serve the .onnx/.npz"
    )


def _caused_by_import(exc: BaseException | None) -> bool:
    """True if ``exc`` or an exception it chains from is an ImportError."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ImportError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _open_tflite(
    path: Path, data: bytes, threads: int | None
) -> tuple[int, int, Callable[[np.ndarray], np.ndarray], str]:
    try:
        check_tflite_structure(data)
    except ValueError as e:
        raise _corrupt(path, "TFLite", e) from e
    interp, backend = _new_interpreter(path, data, threads)
    try:
        ins, outs = interp.get_input_details(), interp.get_output_details()
    except Exception as e:
        raise _corrupt(path, "TFLite", e) from e

    def port(d: dict) -> _Port:
        shape, signature = list(d["shape"]), d.get("shape_signature")
        if signature is not None and len(signature) == len(shape):
            shape = list(signature)  # -1 marks the batch dimension as resizable
        dtype = np.dtype(d["dtype"])
        return [int(s) for s in shape], dtype.name, dtype == np.float32

    n_in, n_out = _check_graph(path, "TFLite", [port(d) for d in ins], [port(d) for d in outs])
    in_index, out_index = ins[0]["index"], outs[0]["index"]
    lock = threading.Lock()  # a TFLite interpreter must not be entered by two threads
    batch = [int(ins[0]["shape"][0])]

    def run(X: np.ndarray) -> np.ndarray:
        with lock:
            if X.shape[0] != batch[0]:
                # One invoke over the whole batch, resizing when its size changes: for
                # batch 64 it took 7-15 us against 95-120 us row by row (64-10 and
                # 64-64-32-10 MLPs, 2-core x86 VM, ai-edge-litert 2.3 and tflite-runtime
                # 2.14), and 0.2 ms against 0.6-1.0 ms for a 784-256-128-10 MLP.
                interp.resize_tensor_input(in_index, list(X.shape), strict=False)
                interp.allocate_tensors()
                batch[0] = X.shape[0]
            interp.set_tensor(in_index, X)
            interp.invoke()
            return interp.get_tensor(out_index)

    run.model_content = data  # type: ignore[attr-defined]  # the interpreter may point into it
    return n_in, n_out, run, backend


def _open_npz(path: Path, data: bytes) -> tuple[int, int, Callable[[np.ndarray], np.ndarray], str]:
    try:
        layers = _layers_from_npz(data)
    except Exception as e:  # zipfile, numpy and our own ValueError alike
        raise _corrupt(path, "numpy .npz", e) from e

    def run(X: np.ndarray) -> np.ndarray:
        return forward_layers(layers, X)

    return layers[0].n_in, layers[-1].n_out, run, f"numpy {np.__version__}"
