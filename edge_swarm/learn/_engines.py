"""The engines behind ``learn.runtimes.load_model``: ONNX Runtime and TFLite, opened from
a model file's bytes, and the versions of the packages that provide them.

How it works:
    ``_open_onnx`` and ``_open_tflite`` each take the checked bytes of a file and return
    (n_inputs, n_outputs, run, backend): ``run`` maps a float32 batch to its logits, and
    ``backend`` names the package and version. The TFLite interpreter is looked for in the
    order of the ``modules`` given (``runtimes._TFLITE_MODULES``; `_new_interpreter` says
    why), and a .tflite file is bounds-checked before any interpreter sees it
    (``learn.tflite_check``).

Invariants:
    - onnxruntime and the TFLite interpreters are imported inside the functions that need
      them, never at import: a numpy-only agent on a Pi never loads them.
    - A runtime's own exception never escapes: a file it cannot load is `ModelFileError`,
      a runtime that is missing or unusable is `EngineUnavailableError`.
    - Logs to ``edge_swarm.learn.runtimes``, the logger of ``load_model``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.learn._model_checks import (
    EngineUnavailableError,
    _check_graph,
    _corrupt,
    _one_line,
    _Port,
)
from edge_swarm.learn.tflite_check import check_tflite_structure

# The logger of learn.runtimes: one name for everything loading a model logs, as before the split.
log = logging.getLogger("edge_swarm.learn.runtimes")

_BROKEN_WARNED: set[str] = set()  # TFLite packages already warned about as unusable


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


def _new_interpreter(
    path: Path, data: bytes, threads: int | None, modules: Sequence[tuple[str, str]]
) -> tuple[Any, str]:
    """A TFLite interpreter holding ``data`` and the package it came from.

    Packages are tried in the order of ``modules`` ((module, distribution) pairs:
    ``runtimes._TFLITE_MODULES``, where tests patch it). Why this order: ai-edge-litert is
    Google's maintained TFLite runtime, with wheels for current Pythons and numpy 2;
    tflite-runtime stopped at 2.14 (no wheels past Python 3.11, built against numpy 1.x)
    but is what older Pi and Jetson images carry; full TensorFlow comes last because
    importing it costs seconds and hundreds of MB, worth it only on a development machine
    that has it anyway. A package that imports but cannot build an interpreter for an
    ImportError (tflite-runtime 2.14 under numpy 2 does exactly that) is skipped, with one
    warning per process, instead of blaming the file.
    """
    failures = []
    for module, dist in modules:
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
    path: Path, data: bytes, threads: int | None, modules: Sequence[tuple[str, str]]
) -> tuple[int, int, Callable[[np.ndarray], np.ndarray], str]:
    try:
        check_tflite_structure(data)
    except ValueError as e:
        raise _corrupt(path, "TFLite", e) from e
    interp, backend = _new_interpreter(path, data, threads, modules)
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
