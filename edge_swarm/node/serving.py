"""The model a device answers predictions with: the newest final model that loaded.

A device whose profile says ``[runtime] serve = true`` writes every final model it holds
(backbone + head) as a file for its engine and loads it with that runtime. A file that does
not load — truncated by a full disk, corrupted, of the wrong shape — is refused with the
runtime's reason and the device keeps answering with its last good model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.learn.model import ModelSpec
from edge_swarm.node.config import NodeConfig

log = logging.getLogger(__name__)

EXTENSIONS = {"numpy": ".npz", "onnxruntime": ".onnx", "tflite": ".tflite"}


class ModelServer:
    """Holds the last good served model; ``install*`` replace it only with one that loads."""

    def __init__(
        self,
        out_dir: Path,
        engine: str,
        threads: int | None = None,
        providers: tuple[str, ...] = (),
    ) -> None:
        self.out_dir = out_dir
        self.engine = engine
        self.threads = threads
        self.providers = providers
        self.current = None  # a runtimes.ServedModel
        self.round = 0

    def install_layers(self, layers: list, rnd: int) -> bool:
        """Write the model for this engine (``model-rNNNN``) and serve it if it loads."""
        from edge_swarm.node.exports import export_layers

        stem = f"model-r{rnd:04d}"
        ext = EXTENSIONS[self.engine]
        written = export_layers(layers, self.out_dir, stem)
        path = self.out_dir / f"{stem}{ext}"
        return self.install_file(path, written[path], int(layers[0].weight.shape[0]), rnd)

    def install_file(
        self, path: Path, expect_sha256: str | None, expect_inputs: int | None, rnd: int
    ) -> bool:
        """Serve the model in ``path`` if it loads and checks; else keep the current one."""
        from edge_swarm.learn.runtimes import ModelFileError, load_model

        try:
            model = load_model(
                path,
                engine=self.engine,
                threads=self.threads,
                providers=list(self.providers) or None,
                expect_sha256=expect_sha256,
                expect_inputs=expect_inputs,
            )
        except ModelFileError as exc:
            kept = f"round {self.round}'s" if self.current is not None else "no"
            log.error("not serving the model of round %d: %s; keeping %s model", rnd, exc, kept)
            return False
        self.current, self.round = model, rnd
        log.info("serving the model of round %d with %s", rnd, model.engine)
        return True

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class predictions of the model being served (RuntimeError if none yet)."""
        if self.current is None:
            raise RuntimeError("no model is being served yet")
        return np.argmax(self.current.predict_logits(np.asarray(X, np.float32)), axis=1)

    def serve_round(self, rnd: int) -> tuple[str, str]:
        """Serve again the file of an earlier round this device wrote (fleet ``rollout`` and
        ``rollback``): ``("done" | "failed", why)``."""
        path = self.out_dir / f"model-r{rnd:04d}{EXTENSIONS[self.engine]}"
        if not path.exists():
            return "failed", f"no model of round {rnd} on this device"
        n_in = self.current.n_inputs if self.current is not None else None
        if not self.install_file(path, None, n_in, rnd):
            return "failed", f"the model of round {rnd} does not load; still serving {self.round}"
        return "done", f"serving round {rnd}"


class DeviceModel:
    """What a device's profile asks of the swarm's model besides training: features from the
    genesis's frozen backbone, and serving every model the device commits."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.backbone_ref: Any = None  # learn.backbone.BackboneRef, when the swarm has one
        self.server: ModelServer | None = None  # when [runtime] serve is on
        self._served_backbone: list[Any] | None = None

    def backbone_features(self, ref_dict: object, spec: ModelSpec, X: np.ndarray) -> np.ndarray:
        """The frozen backbone's features of the local data, computed once with this
        device's engine; the swarm trains only the head on them. A device without the
        genesis's backbone, byte for byte, cannot take part: it stops saying why."""
        from edge_swarm.learn.backbone import BackboneRef, features, load_backbone
        from edge_swarm.learn.runtimes import ModelFileError

        cfg = self.cfg
        who = f"{cfg.node_id}: swarm {cfg.swarm} fine-tunes a head over a backbone"
        ref = BackboneRef.from_dict(ref_dict)
        if ref.n_features != spec.n_inputs:
            raise SystemExit(f"{who} whose {ref.n_features} outputs do not fit its head")
        if cfg.backbone_dir is None:
            raise SystemExit(f"{who}; copy its files here and set [agent] backbone = DIR")
        r = cfg.runtime
        try:
            model = load_backbone(cfg.backbone_dir, ref, r.engine, r.threads, r.providers)
        except ModelFileError as exc:
            raise SystemExit(f"{who}, and {exc}") from None
        t0 = time.perf_counter()
        feats = features(model, X)
        log.info(
            "backbone features of %d samples with %s in %.3f s",
            len(feats),
            model.engine,
            time.perf_counter() - t0,
        )
        self.backbone_ref = ref
        return feats

    def serve(self, spec: ModelSpec, params: np.ndarray, rnd: int) -> None:
        """Serve the model just committed, if this device's profile says so."""
        if not self.cfg.runtime.serve:
            return
        from edge_swarm.node.exports import backbone_layers, model_layers

        if self.server is None:
            r = self.cfg.runtime
            self.server = ModelServer(
                self.cfg.state_dir / "serving", r.engine, r.threads, r.providers
            )
            if self.backbone_ref is not None and self.cfg.backbone_dir is not None:
                self._served_backbone = backbone_layers(self.cfg.backbone_dir, self.backbone_ref)
        self.server.install_layers(model_layers(spec, params, self._served_backbone), rnd)
