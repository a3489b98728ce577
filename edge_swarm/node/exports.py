"""The merged model as files a device serves: .onnx, .tflite and .npz of backbone + head.

After every ``model_final`` a gateway writes the global model into ``exports/`` of its state
directory (``model-r0012.onnx`` ... and ``latest.*``); ``edge-swarm model export`` does the
same on demand from a checkpoint file. A swarm with a backbone exports the whole network:
the frozen layers (from ``backbone.npz``, checked against the genesis's hash) followed by
the head the swarm trained, so the file maps raw inputs to logits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edge_swarm.learn.backbone import FILES, BackboneRef, read_ref
from edge_swarm.learn.model import ModelSpec

log = logging.getLogger(__name__)

FORMATS = (".onnx", ".tflite", ".npz")


def backbone_layers(directory: Path, ref: BackboneRef) -> list:
    """The backbone's layers from its .npz, refused unless it hashes to ``ref``'s."""
    from edge_swarm.learn.runtimes import load_layers

    return load_layers(directory / FILES["numpy"], expect_sha256=ref.files["numpy"])


def model_layers(spec: ModelSpec, params: np.ndarray, backbone: list | None = None) -> list:
    """The whole network: the backbone's layers (if any), then the model's."""
    from edge_swarm.learn.runtimes import layers_of

    return [*(backbone or []), *layers_of(spec, params)]


def export_layers(layers: list, out_dir: Path, stem: str) -> dict[Path, str]:
    """Write ``stem`` in every format into ``out_dir``; returns each file's sha256."""
    from edge_swarm.learn.export_onnx import write_onnx
    from edge_swarm.learn.export_tflite import write_tflite
    from edge_swarm.learn.runtimes import save_npz

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for ext, write in ((".onnx", write_onnx), (".tflite", write_tflite), (".npz", save_npz)):
        path = out_dir / f"{stem}{ext}"
        written[path] = write(layers, path)
    return written


def publish_latest(written: dict[Path, str]) -> None:
    """Point ``latest.*`` at the files just written (a hard link: atomic, no copy)."""
    for path in written:
        latest = path.with_name("latest" + path.suffix)
        tmp = latest.with_suffix(latest.suffix + ".tmp")
        if tmp.exists():
            tmp.unlink()
        os.link(path, tmp)
        os.replace(tmp, latest)


def export_checkpoint(
    checkpoint: Path, out_dir: Path, backbone_dir: Path | None
) -> dict[Path, str]:
    """``edge-swarm model export``: a checkpoint file (and its backbone) as model files."""
    from edge_swarm.swarm.checkpoint import decode_checkpoint

    ck = decode_checkpoint(checkpoint.read_bytes())
    spec = ModelSpec.from_dict(ck.spec)
    backbone = None
    if backbone_dir is not None:
        ref = read_ref(backbone_dir)
        if ref.n_features != spec.n_inputs:
            raise ValueError(
                f"backbone outputs {ref.n_features} features, the model takes {spec.n_inputs}"
            )
        backbone = backbone_layers(backbone_dir, ref)
    return export_layers(model_layers(spec, ck.params, backbone), out_dir, f"model-r{ck.round:04d}")


KEEP_ROUNDS = 5  # round files kept in exports/ besides latest.*


class RoundExporter:
    """A gateway's exports: the global model as files after every ``model_final``.

    Never raises: a missing export library, a missing or mismatched backbone file or a full
    disk is logged (once per kind) and the round goes on; training does not depend on it.
    """

    def __init__(self, out_dir: Path, backbone_dir: Path | None, backbone: object) -> None:
        self.out_dir = out_dir
        self.backbone_dir = backbone_dir
        self.ref = BackboneRef.from_dict(backbone) if backbone is not None else None
        self._backbone: list | None = None
        self._warned: set[str] = set()

    def export(self, spec: ModelSpec, params: np.ndarray, rnd: int) -> dict[Path, str]:
        try:
            layers = model_layers(spec, params, self._backbone_layers())
            written = export_layers(layers, self.out_dir, f"model-r{rnd:04d}")
            publish_latest(written)
            self._prune(rnd)
        except Exception as exc:  # noqa: BLE001 - exporting is a service, never a reason to stop
            self._warn(type(exc).__name__, f"round {rnd}: model not exported: {exc}")
            return {}
        log.info("round %d exported to %s (%s)", rnd, self.out_dir, ", ".join(FORMATS))
        return written

    def _backbone_layers(self) -> list | None:
        if self.ref is None or self._backbone is not None:
            return self._backbone
        if self.backbone_dir is None:
            raise ValueError("the swarm has a backbone and [gateway] backbone is not set")
        self._backbone = backbone_layers(self.backbone_dir, self.ref)
        return self._backbone

    def _prune(self, rnd: int) -> None:
        for path in self.out_dir.glob("model-r*.*"):
            try:
                old = int(path.stem.split("-r", 1)[1])
            except ValueError:
                continue
            if old <= rnd - KEEP_ROUNDS:
                path.unlink(missing_ok=True)

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("%s", message)
