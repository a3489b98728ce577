"""What is wrong with a model file, and the checks that find it (for ``learn.runtimes``).

``_read_checked`` reads a file once and checks its sha256; ``_check_graph`` checks that a
graph has one 2-D float32 input and one 2-D float32 output; ``_probe`` runs a loaded model
on batches of 1 and 2 rows. Each raises `ModelFileError` saying what is wrong and what to
do; ``_corrupt`` turns a runtime's own exception into one. `EngineUnavailableError` is the
other error ``load_model`` raises: the runtime is not installed.

Imports numpy and ``learn.model`` only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edge_swarm.learn.model import MAX_WIDTH

_MAX_ERROR_DETAIL = 300  # characters of a runtime's message kept in ours


class ModelFileError(ValueError):
    """The model file is missing, not the one expected, corrupt, or not a dense float model."""


class EngineUnavailableError(ImportError):
    """The runtime the model needs is not installed; the message names the package."""


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
