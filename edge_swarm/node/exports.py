"""The merged model as files a device serves: .onnx, .tflite and .npz of backbone + head.

After every ``model_final`` a gateway writes the global model into ``exports/`` of its state
directory (``model-r0012.onnx`` ... and ``latest.*``); ``edge-swarm model export`` does the
same on demand from a checkpoint file. A swarm with a backbone exports the whole network:
the frozen layers (from ``backbone.npz``, checked against the genesis's hash) followed by
the head the swarm trained, so the file maps raw inputs to logits.

A gateway keeps the files of its last ``[gateway] keep_exports`` rounds (older ones are
deleted before a round is written, so that they make room for it; ``latest.*`` are never
deleted), and writes a round only if it leaves ``[gateway] min_free_mb`` free for the
ledger: on a full disk the round is skipped with one message (`node.disk`), and no file is
left half-written (each is written to a temporary file and renamed).

A gateway exports on a thread of its own (``export_soon``), one round after another:
written on its loop, the three files held up the next ``round_open`` by about 20 ms after
every ``model_final`` (issue 20). ``close`` writes what is queued before the gateway stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from pathlib import Path

import numpy as np

from edge_swarm.learn.backbone import FILES, BackboneRef, read_ref
from edge_swarm.learn.model import ModelSpec
from edge_swarm.node.config import DEFAULT_KEEP_EXPORTS, DEFAULT_MIN_FREE_MB
from edge_swarm.node.disk import fits, watch_for
from ledger_lite.store import free_bytes, is_no_space

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


KEEP_ROUNDS = DEFAULT_KEEP_EXPORTS  # rounds of files kept besides latest.* ([gateway] keep_exports)
MIN_FREE_BYTES = int(DEFAULT_MIN_FREE_MB * 2**20)  # left for the ledger ([gateway] min_free_mb)


def round_of(path: Path) -> int | None:
    """The round of an export file ``model-r0012.onnx`` (12), None for any other name."""
    stem, dot, _ = path.name.partition(".")
    if not dot or not stem.startswith("model-r") or not stem[7:].isdigit():
        return None
    return int(stem[7:])


def prune_exports(out_dir: Path, keep: int, rnd: int) -> list[Path]:
    """Delete the round files of rounds before the last `keep` up to `rnd` (those <=
    ``rnd - keep``), and temporary files a stopped writer left; never ``latest.*`` (hard
    links: the model they hold stays). Returns what was deleted."""
    gone = []
    for path in out_dir.glob("*"):
        old = round_of(path)
        stale_tmp = path.name.endswith(".tmp") and not path.name.startswith("latest.")
        if (old is not None and old <= rnd - keep) or stale_tmp:
            path.unlink(missing_ok=True)
            gone.append(path)
    return gone


class RoundExporter:
    """A gateway's exports: the global model as files after every ``model_final``.

    Keeps the last `keep` rounds; writes only if `min_free_bytes` stay free. Never raises:
    a missing export library, a missing or mismatched backbone file or a full disk is
    logged (a full disk once for the whole gateway, `node.disk`; anything else once per
    kind) and the round goes on; training does not depend on it.
    """

    def __init__(
        self,
        out_dir: Path,
        backbone_dir: Path | None,
        backbone: object,
        *,
        keep: int = KEEP_ROUNDS,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.out_dir = out_dir
        self.backbone_dir = backbone_dir
        self.ref = BackboneRef.from_dict(backbone) if backbone is not None else None
        self.keep = keep
        self.min_free_bytes = min_free_bytes
        self._backbone: list | None = None
        self._warned: set[str] = set()
        self._queue: queue.SimpleQueue[tuple[ModelSpec, np.ndarray, int] | None] = (
            queue.SimpleQueue()
        )
        self._worker: threading.Thread | None = None

    def export_soon(self, spec: ModelSpec, params: np.ndarray, rnd: int) -> None:
        """``export`` on the exporter's thread (started on first use), rounds in order."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="exports", daemon=True)
            self._worker.start()
        self._queue.put((spec, params.copy(), rnd))  # the holder's array may change meanwhile

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop the thread (if one was started)."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout_s)
            self._worker = None

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self.export(*item)

    def export(self, spec: ModelSpec, params: np.ndarray, rnd: int) -> dict[Path, str]:
        """Write round `rnd`'s files and point ``latest.*`` at them; the files written
        (path -> sha256), or {} if the round was not exported (logged)."""
        try:
            layers = model_layers(spec, params, self._backbone_layers())
            prune_exports(self.out_dir, self.keep, rnd)  # first: they make room for this one
            if not self._room(rnd):
                return {}
            written = export_layers(layers, self.out_dir, f"model-r{rnd:04d}")
            publish_latest(written)
        except Exception as exc:  # noqa: BLE001 - exporting is a service, never a reason to stop
            self._failed(rnd, exc)
            return {}
        watch_for(self.out_dir).ok("exports", self.out_dir)
        log.info("round %d exported to %s (%s)", rnd, self.out_dir, ", ".join(FORMATS))
        return written

    def _room(self, rnd: int) -> bool:
        """Whether a round's files fit (as big as the last ones) with the reserve left."""
        size = 0
        for ext in FORMATS:
            with contextlib.suppress(OSError):
                size += (self.out_dir / f"latest{ext}").stat().st_size
        ok, free, need = fits(self.out_dir, size, self.min_free_bytes)
        if not ok:
            self._no_space(rnd, free, need)
        return ok

    def _failed(self, rnd: int, exc: Exception) -> None:
        if not is_no_space(exc):
            self._warn(type(exc).__name__, f"round {rnd}: model not exported: {exc}")
            return
        # Each file is whole (a temporary file, renamed): drop this round's, so that the
        # space goes back to the ledger; latest.* keep naming whole files.
        for ext in FORMATS:
            (self.out_dir / f"model-r{rnd:04d}{ext}").unlink(missing_ok=True)
        self._no_space(rnd, free_bytes(self.out_dir), 0)

    def _no_space(self, rnd: int, free: int, need: int) -> None:
        waits = f"the model is not exported (from round {rnd} on; latest.* stay as they are)"
        watch_for(self.out_dir).full("exports", self.out_dir, free, need, waits)

    def _backbone_layers(self) -> list | None:
        if self.ref is None or self._backbone is not None:
            return self._backbone
        if self.backbone_dir is None:
            raise ValueError("the swarm has a backbone and [gateway] backbone is not set")
        self._backbone = backbone_layers(self.backbone_dir, self.ref)
        return self._backbone

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("%s", message)
