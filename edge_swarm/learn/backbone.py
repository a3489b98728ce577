"""A frozen feature extractor (the backbone) under a small head that the swarm fine-tunes.

How it works
------------
``pretrain`` trains an MLP with this project's own numpy code on the *public* part of a
workload (``data.public_private``), and keeps its hidden layers as the backbone.
``write_backbone`` stores those layers in the three formats a device may run them with —
``backbone.npz`` (numpy), ``backbone.onnx`` (onnxruntime), ``backbone.tflite`` (a TFLite
interpreter) — and ``backbone.json``: the layer sizes and the sha256 of every file. That
``BackboneRef`` goes into the genesis (``params["backbone"]``), so every agent provably
extracts features with the same bytes: ``load_backbone`` refuses a file whose hash differs.
An agent computes the features of its private data once, with the engine of its device
profile, and the swarm trains and merges only the head, an ordinary ``ModelSpec`` whose
inputs are the backbone's outputs. No TensorFlow, PyTorch or model hub anywhere.

Invariants
----------
- The three files hold the same layers; the runtimes agree with numpy within 1e-5
  (tests/test_runtimes.py, tests/test_backbone.py).
- ``BackboneRef.from_dict`` takes untrusted JSON and raises only ValueError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_swarm.learn.data import Workload
from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.learn.train import LocalTraining, evaluate, train_local

if TYPE_CHECKING:  # the runtimes are imported lazily: a numpy-only device never loads them
    from edge_swarm.learn.runtimes import Dense, ServedModel

FILES: Mapping[str, str] = MappingProxyType(
    {"numpy": "backbone.npz", "onnxruntime": "backbone.onnx", "tflite": "backbone.tflite"}
)
REF_FILE = "backbone.json"
PRETRAINING = LocalTraining(epochs=40, lr=0.1, batch_size=32)
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BackboneRef:
    """Which backbone a swarm uses: its layer sizes and the sha256 of each format's file."""

    sizes: tuple[int, ...]
    files: Mapping[str, str] = field(hash=False)

    def __post_init__(self) -> None:
        sizes = tuple(self.sizes)
        if len(sizes) < 2 or not all(isinstance(s, int) and 0 < s <= 4096 for s in sizes):
            raise ValueError(f"backbone sizes must be 2+ positive ints, got {self.sizes!r}")
        if not isinstance(self.files, Mapping) or set(self.files) != set(FILES):
            raise ValueError(f"backbone files must name exactly {sorted(FILES)}")
        for engine, digest in self.files.items():
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise ValueError(f"backbone {engine} hash must be 64 lowercase hex characters")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "files", MappingProxyType(dict(sorted(self.files.items()))))

    @property
    def n_inputs(self) -> int:
        return self.sizes[0]

    @property
    def n_features(self) -> int:
        return self.sizes[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "sha256": dict(self.files)}

    @classmethod
    def from_dict(cls, obj: object) -> BackboneRef:
        if not isinstance(obj, Mapping) or set(obj) != {"sizes", "sha256"}:
            raise ValueError("a backbone reference is {sizes: [...], sha256: {engine: hex}}")
        sizes, files = obj["sizes"], obj["sha256"]
        if not isinstance(sizes, list) or not isinstance(files, Mapping):
            raise ValueError("backbone sizes must be a list and sha256 an object")
        return cls(tuple(sizes), dict(files))


def pretrain(
    public: Workload,
    hidden: tuple[int, ...] = (64, 32),
    training: LocalTraining = PRETRAINING,
    seed: int = 0,
) -> tuple[list[Dense], float]:
    """Train ``n_in -> hidden... -> n_classes`` on the public data; return the hidden layers
    (the backbone) and the pretrained classifier's accuracy on the test set."""
    from edge_swarm.learn.runtimes import layers_of

    spec = ModelSpec((public.n_features, *hidden, public.n_classes))
    params, _ = train_local(
        spec, init_params(spec, seed), public.X_train, public.y_train, training, seed
    )
    accuracy = evaluate(spec, params, public.X_test, public.y_test)["accuracy"]
    return layers_of(spec, params)[:-1], float(accuracy)


def write_backbone(layers: list[Dense], out_dir: Path) -> BackboneRef:
    """Write the backbone in every format, and ``backbone.json``; return its reference."""
    from edge_swarm.learn.export_onnx import write_onnx
    from edge_swarm.learn.export_tflite import write_tflite
    from edge_swarm.learn.runtimes import save_npz

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "numpy": save_npz(layers, out_dir / FILES["numpy"]),
        "onnxruntime": write_onnx(layers, out_dir / FILES["onnxruntime"]),
        "tflite": write_tflite(layers, out_dir / FILES["tflite"]),
    }
    sizes = (layers[0].weight.shape[0], *(layer.weight.shape[1] for layer in layers))
    ref = BackboneRef(tuple(int(s) for s in sizes), files)
    (out_dir / REF_FILE).write_text(json.dumps(ref.to_dict(), indent=2, sort_keys=True) + "\n")
    return ref


def read_ref(out_dir: Path) -> BackboneRef:
    """The reference written next to a backbone (ValueError if missing or malformed)."""
    path = out_dir / REF_FILE
    try:
        return BackboneRef.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a backbone reference ({exc})") from None


def load_backbone(
    directory: Path,
    ref: BackboneRef,
    engine: str,
    threads: int | None = None,
    providers: tuple[str, ...] = (),
) -> ServedModel:
    """Load the backbone file for ``engine``, checking its hash against the genesis's and its
    input width; raises ``ModelFileError`` saying which file and what is wrong."""
    from edge_swarm.learn.runtimes import load_model

    return load_model(
        directory / FILES[engine],
        engine=engine,
        threads=threads,
        providers=list(providers) or None,
        expect_sha256=ref.files[engine],
        expect_inputs=ref.n_inputs,
    )


def features(model: ServedModel, X: np.ndarray, batch: int = 256) -> np.ndarray:
    """The backbone's outputs for ``X`` (float32), computed in batches."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    parts = [model.predict_logits(X[i : i + batch]) for i in range(0, len(X), batch)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
