"""Serve a dense model with an on-device runtime: ONNX Runtime, TFLite, or plain numpy.

How it works:
    A trained model is a list of `Dense` layers (``layers_of`` cuts them out of a
    ``ModelSpec`` and its flat vector exactly as ``learn.model`` does). The exporters turn
    the list into a file: ``export_onnx.write_onnx`` (.onnx), ``export_tflite.write_tflite``
    (.tflite) or ``save_npz`` here (.npz, our own layers for the numpy engine). Each returns
    the sha256 of the bytes it wrote.

    ``load_model(path)`` reads the file once, checks its sha256 against ``expect_sha256``
    on those bytes, hands the same bytes to the runtime (no second read that could differ)
    and checks the graph: one 2-D float32 input, one 2-D float32 output. The returned
    `ServedModel` answers ``predict_logits(X)`` for any batch size.

    The TFLite interpreter is looked for as ``ai_edge_litert``, then ``tflite_runtime``,
    then ``tensorflow.lite`` (`_new_interpreter` says why). A .tflite file is
    bounds-checked here before any interpreter sees it (`_check_tflite_structure`), and
    every model runs a probe batch before ``load_model`` returns it.

Invariants:
    - Importing this module imports numpy and nothing heavier: onnxruntime and the TFLite
      interpreters are imported inside the functions that need them, so a numpy-only agent
      on a Pi never loads them.
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
import io
import logging
import math
import os
import struct
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.learn.model import ACTIVATIONS, MAX_PARAMS, MAX_WIDTH, ModelSpec, unflatten

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
NPZ_FORMAT = 1  # version of the .npz layout written by save_npz
_NO_ACTIVATION = "none"  # how save_npz spells "no activation" (npz cannot hold None)
_MAX_ERROR_DETAIL = 300  # characters of a runtime's message kept in ours
# Tried in this order; the docstring of _new_interpreter says why.
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


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True, eq=False)
class Dense:
    """One fully connected layer: ``y = act(x @ weight + bias)``.

    ``weight`` is (in, out) and ``bias`` (out,), both stored as read-only C-contiguous
    float32 copies; ``activation`` is None (logits) or one of ``learn.model.ACTIVATIONS``.
    Raises ValueError on wrong shapes, a non-float dtype or an unknown activation.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str | None = None

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weight), np.asarray(self.bias)
        if w.dtype.kind != "f" or b.dtype.kind != "f":
            raise ValueError(f"weight and bias must be floating point, got {w.dtype}, {b.dtype}")
        if w.ndim != 2 or b.shape != (w.shape[1],) or 0 in w.shape:
            raise ValueError(f"need weight (in, out) and bias (out,), got {w.shape}, {b.shape}")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be None or one of {ACTIVATIONS}, got {self.activation!r}"
            )
        for name, arr in (("weight", w), ("bias", b)):
            arr = np.array(arr, dtype=np.float32, order="C")  # a copy: training may reuse params
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[1])

    @property
    def relu(self) -> bool:
        """True if the layer applies ReLU (the common case on the device)."""
        return self.activation == "relu"


def layers_of(spec: ModelSpec, params: np.ndarray) -> list[Dense]:
    """The model as `Dense` layers, cut exactly as ``learn.model.unflatten`` cuts it.

    Hidden layers carry ``spec.activation``; the last has none (it yields logits).
    Raises ValueError if ``params`` does not fit ``spec``.
    """
    pairs = unflatten(spec, np.asarray(params).astype(np.float32, copy=False))
    last = len(pairs) - 1
    return [Dense(w, b, None if i == last else spec.activation) for i, (w, b) in enumerate(pairs)]


def check_layers(layers: Sequence[Dense]) -> list[Dense]:
    """``layers`` as a list after checking it is non-empty `Dense` whose widths chain."""
    layers = list(layers)
    if not layers or not all(isinstance(d, Dense) for d in layers):
        raise ValueError("layers must be a non-empty list of Dense")
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:], strict=False), start=1):
        if a.n_out != b.n_in:
            raise ValueError(f"layer {i} gives {a.n_out} values but layer {i + 1} takes {b.n_in}")
    return layers


def forward_layers(layers: Sequence[Dense], X: np.ndarray) -> np.ndarray:
    """Float32 logits of ``layers`` for ``X`` (n, n_in), with the same numpy operations as
    ``learn.model.forward``, so the two agree bit for bit."""
    h = np.asarray(X, dtype=np.float32)
    for d in layers:
        h = h @ d.weight + d.bias
        if d.activation == "relu":
            np.maximum(h, 0, out=h)
        elif d.activation == "tanh":
            np.tanh(h, out=h)
    return h


# --------------------------------------------------------------------------- files


def write_atomic(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` to ``path`` via a temporary file, fsync and ``os.replace``; returns its
    sha256 hex. A crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX). Not ledger_lite's: importing it pulls in crypto."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def npz_bytes(layers: Sequence[Dense]) -> bytes:
    """The .npz that `save_npz` writes: ``format``, ``activations`` and ``W1, b1, ...``.

    The zip is built by hand with fixed timestamps (``numpy.savez`` stamps the current
    time), so equal layers give equal bytes and an equal sha256.
    """
    layers = check_layers(layers)
    arrays: list[tuple[str, np.ndarray]] = [
        ("format", np.array(NPZ_FORMAT, dtype="<i4")),
        ("activations", np.array([d.activation or _NO_ACTIVATION for d in layers], dtype="<U8")),
    ]
    for i, d in enumerate(layers, start=1):
        arrays += [(f"W{i}", d.weight.astype("<f4")), (f"b{i}", d.bias.astype("<f4"))]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buf.getvalue()


def save_npz(layers: Sequence[Dense], path: str | os.PathLike[str]) -> str:
    """Write ``layers`` for the numpy engine (see `npz_bytes`), atomically; returns sha256."""
    return write_atomic(path, npz_bytes(layers))


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


def _layers_from_npz(data: bytes) -> list[Dense]:
    """Parse `npz_bytes` output; raises ValueError (or a zip/numpy error) when malformed."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        if int(z["format"]) != NPZ_FORMAT:
            raise ValueError(f"npz format {int(z['format'])}, this code reads {NPZ_FORMAT}")
        acts = [str(a) for a in z["activations"]]
        layers = []
        for i, act in enumerate(acts, start=1):
            w, b = z[f"W{i}"], z[f"b{i}"]
            if w.dtype != np.float32 or b.dtype != np.float32:
                raise ValueError(f"W{i}/b{i} are {w.dtype}/{b.dtype}, need float32")
            layers.append(Dense(w, b, None if act == _NO_ACTIVATION else act))
    return check_layers(layers)


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


class _FlatReader:
    """Bounds-checked reads of a flatbuffer; anything out of range raises ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def unpack(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise ValueError(f"offset {pos} lies past the end of the {len(self.data)} bytes")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int) -> tuple[int, int, int]:
        """(position, vtable position, vtable length) of the table at ``pos``."""
        vtable = pos - self.unpack("<i", pos)
        vlen, tlen = self.unpack("<H", vtable), self.unpack("<H", vtable + 2)
        if vlen < 4 or vlen % 2 or pos + tlen > len(self.data):
            raise ValueError(f"malformed table at offset {pos}")
        self.unpack("<H", vtable + vlen - 2)
        return pos, vtable, vlen

    def field(self, table: tuple[int, int, int], slot: int) -> int:
        pos, vtable, vlen = table
        if 4 + 2 * slot + 2 > vlen:
            return 0
        off = self.unpack("<H", vtable + 4 + 2 * slot)
        return pos + off if off else 0

    def scalar(self, table: tuple[int, int, int], slot: int, fmt: str) -> int:
        pos = self.field(table, slot)
        return self.unpack(fmt, pos) if pos else 0

    def ref(self, table: tuple[int, int, int], slot: int) -> int:
        pos = self.field(table, slot)
        return pos + self.unpack("<I", pos) if pos else 0

    def vector(self, table: tuple[int, int, int], slot: int, size: int) -> tuple[int, int]:
        """(first element's position, length) of a vector field; (0, 0) when absent."""
        pos = self.ref(table, slot)
        if not pos:
            return 0, 0
        n = self.unpack("<I", pos)
        if pos + 4 + n * size > len(self.data):
            raise ValueError(f"vector at offset {pos} runs past the end")
        return pos + 4, n

    def ints(self, table: tuple[int, int, int], slot: int) -> list[int]:
        start, n = self.vector(table, slot, 4)
        return [self.unpack("<i", start + 4 * i) for i in range(n)]

    def tables(self, table: tuple[int, int, int], slot: int) -> list[tuple[int, int, int]]:
        start, n = self.vector(table, slot, 4)
        return [self.table(start + 4 * i + self.unpack("<I", start + 4 * i)) for i in range(n)]


def _check_tflite_structure(data: bytes) -> None:
    """Raise ValueError unless every table, vector and index the interpreter follows lies
    inside ``data``.

    tflite-runtime 2.14 does not verify a model given as bytes: a truncated file makes it
    read past the end (seen: segfaults, or a model that "loads" with garbage weights).
    ai-edge-litert verifies, but running this for every package keeps one behaviour.
    Field slots are those of tensorflow/lite/schema/schema.fbs (version 3).
    """
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("no TFL3 file identifier at offset 4: not a .tflite flatbuffer")
    r = _FlatReader(data)
    model = r.table(r.unpack("<I", 0))
    if r.scalar(model, 0, "<I") != 3:
        raise ValueError(f"schema version {r.scalar(model, 0, '<I')}, expected 3")
    r.vector(model, 3, 1), r.vector(model, 5, 4)  # description, metadata_buffer
    codes, buffers, subgraphs = r.tables(model, 1), r.tables(model, 4), r.tables(model, 2)
    if not subgraphs:
        raise ValueError("the model has no subgraph")
    for code in codes:
        r.vector(code, 1, 1)  # custom_code
    filled = []  # per buffer: does it hold data (a constant tensor)?
    for buf in buffers:
        _, size = r.vector(buf, 0, 1)  # data
        offset, outside = r.scalar(buf, 1, "<Q"), r.scalar(buf, 2, "<Q")
        if offset > 1 and offset + outside > len(data):  # data stored after the flatbuffer
            raise ValueError(f"buffer data at {offset}+{outside} lies past the end")
        filled.append(size > 0 or offset > 1)
    for meta in r.tables(model, 6):
        r.vector(meta, 0, 1)
        if r.scalar(meta, 1, "<I") >= len(buffers):
            raise ValueError("metadata names a buffer that does not exist")
    for sig in r.tables(model, 7):
        r.vector(sig, 2, 1)
        if r.scalar(sig, 4, "<I") >= len(subgraphs):
            raise ValueError("a signature names a subgraph that does not exist")
        for tensor_map in r.tables(sig, 0) + r.tables(sig, 1):
            r.vector(tensor_map, 0, 1)
    for sg in subgraphs:
        _check_tflite_subgraph(r, sg, len(codes), filled)


def _check_tflite_subgraph(
    r: _FlatReader, sg: tuple[int, int, int], n_codes: int, filled: list[bool]
) -> None:
    """Bounds and indices of one subgraph, and that each operator reads only tensors that
    exist by then (tflite-runtime 2.14 crashes on a cycle that one flipped bit can make)."""
    r.vector(sg, 4, 1)  # name
    tensors = r.tables(sg, 0)
    ready = set(r.ints(sg, 1))  # the subgraph's inputs, then constants and variables
    for i, t in enumerate(tensors):
        shape = r.ints(t, 0)
        r.vector(t, 7, 4), r.vector(t, 3, 1)  # shape_signature, name
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_PARAMS:
            # A flipped bit in a dimension would otherwise have the interpreter allocate
            # gigabytes (ai-edge-litert then dies of OOM rather than raising).
            raise ValueError(f"tensor {i} has shape {shape}: negative or over {MAX_PARAMS} values")
        r.tables(t, 10)  # variant_tensors
        buffer = r.scalar(t, 2, "<I")
        if buffer >= len(filled):
            raise ValueError(f"tensor {i} names buffer {buffer}, which does not exist")
        for slot in (4, 6):  # quantization, sparsity
            if r.ref(t, slot):
                r.table(r.ref(t, slot))
        if filled[buffer] or r.scalar(t, 5, "<B"):  # constant or is_variable
            ready.add(i)
    if not all(0 <= i < len(tensors) for i in r.ints(sg, 1) + r.ints(sg, 2)):
        raise ValueError("a subgraph input or output names a tensor that does not exist")
    for k, op in enumerate(r.tables(sg, 3)):
        if r.scalar(op, 0, "<I") >= n_codes:
            raise ValueError(f"operator {k} names an operator code that does not exist")
        inputs, outputs = r.ints(op, 1), r.ints(op, 2)
        if not all(-1 <= i < len(tensors) for i in inputs + outputs):
            raise ValueError(f"operator {k} names a tensor that does not exist")
        if not all(i == -1 or i in ready for i in inputs):
            raise ValueError(f"operator {k} reads a tensor before any operator writes it")
        ready.update(outputs)
        for slot in (4, 13):  # builtin_options, builtin_options_2
            if r.ref(op, slot):
                r.table(r.ref(op, slot))
        r.vector(op, 5, 1), r.vector(op, 7, 1), r.ints(op, 9)  # custom, mutating, intermediates


def _open_tflite(
    path: Path, data: bytes, threads: int | None
) -> tuple[int, int, Callable[[np.ndarray], np.ndarray], str]:
    try:
        _check_tflite_structure(data)
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
