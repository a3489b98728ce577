"""The model a device answers predictions with: the newest final model that loaded.

A device whose profile says ``[runtime] serve = true`` writes every final model it holds
(backbone + head) as a file for its engine and loads it with that runtime. A file that does
not load — truncated by a full disk, corrupted, of the wrong shape — is refused with the
runtime's reason and the device keeps answering with its last good model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

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
