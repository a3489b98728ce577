"""Dense layers, the model as the exporters and the runtimes see it, and the .npz file of our
own that the numpy engine serves.

How it works:
    ``layers_of`` cuts a ``ModelSpec`` and its flat parameter vector into `Dense` layers
    exactly as ``learn.model.unflatten`` does; ``forward_layers`` runs them with the same
    numpy operations as ``learn.model.forward``. ``npz_bytes`` lays the layers out as a .npz
    built by hand, ``save_npz`` writes it with ``write_atomic``, and ``_layers_from_npz``
    parses it back (``runtimes.load_layers`` and the numpy engine call it after checking
    the file). The exporters (``export_onnx``, ``export_tflite``) take the same layers and
    write with the same ``write_atomic``. These live apart from ``runtimes`` because they
    are pure data and file format: nothing here knows about engines or ``ModelFileError``.

Invariants:
    - Imports numpy and ``learn.model`` only: an exporter or a numpy-only agent pays for
      nothing else.
    - A `Dense` holds read-only, C-contiguous float32 copies; widths of a checked list chain.
    - ``forward_layers`` and ``learn.model.forward`` agree bit for bit.
    - Writers are atomic (temporary file, fsync, ``os.replace``) and deterministic: the same
      layers give the same bytes and so the same sha256. A .npz is read with
      ``allow_pickle=False``: a model file from the network is never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_swarm.learn.model import ACTIVATIONS, ModelSpec, unflatten

__all__ = [
    "NPZ_FORMAT",
    "Dense",
    "check_layers",
    "forward_layers",
    "layers_of",
    "npz_bytes",
    "save_npz",
    "write_atomic",
]

NPZ_FORMAT = 1  # version of the .npz layout written by save_npz
_NO_ACTIVATION = "none"  # how save_npz spells "no activation" (npz cannot hold None)


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
    """Write ``data`` atomically and durably (ledger_lite.files); returns its sha256 hex."""
    from ledger_lite.files import write_atomic as write

    write(path, data)
    return hashlib.sha256(data).hexdigest()


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
