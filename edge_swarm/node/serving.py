"""The model a device answers predictions with: the newest final model that loaded.

A device whose profile says ``[runtime] serve = true`` writes every final model it holds
(backbone + head) as a file for its engine and loads it with that runtime. A file that does
not load — truncated by a full disk, corrupted, of the wrong shape — is refused with the
runtime's reason and the device keeps answering with its last good model.

The safety gate (docs/VALIDATION.md): a new final model is rolled out only if it is not
worse on the device's own held-out slice than the model it serves by more than the
genesis's ``serve_margin``. One that is held back is still written (``model-rNNNN``) so an
operator can roll it out by command (``fleet cmd rollout --round N``, which the gate does
not judge: the operator's word); the device says why in its log and its telemetry
(``serve_held_round``, its score and the served model's), which ``fleet ls`` shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_swarm.learn.model import ModelSpec
from edge_swarm.node.config import NodeConfig

if TYPE_CHECKING:
    from edge_swarm.node.validation import SiteValidation

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
        path, sha = self.write_layers(layers, rnd)
        return self.install_file(path, sha, int(layers[0].weight.shape[0]), rnd)

    def write_layers(self, layers: list, rnd: int) -> tuple[Path, str]:
        """Write round ``rnd``'s model for this engine without serving it: (path, sha256)."""
        from edge_swarm.node.exports import export_layers

        stem = f"model-r{rnd:04d}"
        written = export_layers(layers, self.out_dir, stem)
        path = self.out_dir / f"{stem}{EXTENSIONS[self.engine]}"
        return path, written[path]

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


@dataclass(frozen=True)
class HeldBack:
    """A final model the gate did not roll out: its round and score, and the served one's."""

    round: int
    val_acc: float
    served_round: int
    served_acc: float
    margin: float

    def reason(self, n_val: int) -> str:
        return (
            f"not serving round {self.round}'s model: it scores {self.val_acc:.4f} on our "
            f"{n_val} held-out samples against {self.served_acc:.4f} for round "
            f"{self.served_round}'s, which we keep serving (worse by more than the margin "
            f"{self.margin}; an operator may still roll it out: fleet cmd rollout --round "
            f"{self.round})"
        )


def gate(
    rnd: int, scores: Mapping[int, float], served_round: int | None, margin: float
) -> HeldBack | None:
    """Whether the final model of round ``rnd`` is held back: it is when both it and the
    model served (of ``served_round``) have a score and it is worse by more than ``margin``.
    No score, nothing served yet: no evidence against it, it goes out. Pure."""
    new = scores.get(rnd)
    old = scores.get(served_round) if served_round is not None else None
    if new is None or old is None or served_round == rnd or new >= old - margin:
        return None
    assert served_round is not None
    return HeldBack(rnd, new, served_round, old, margin)


class DeviceModel:
    """What a device's profile asks of the swarm's model besides training: features from the
    genesis's frozen backbone, and serving every model the device commits."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.backbone_ref: Any = None  # learn.backbone.BackboneRef, when the swarm has one
        self.server: ModelServer | None = None  # when [runtime] serve is on
        self._served_backbone: list[Any] | None = None
        self.held: HeldBack | None = None  # the last model the gate held back

    def backbone_features(self, ref_dict: object, spec: ModelSpec, X: np.ndarray) -> np.ndarray:
        """The frozen backbone's features of the local data, computed once with this
        device's engine; the swarm trains only the head on them. A device without the
        genesis's backbone, byte for byte, cannot take part: it stops saying why."""
        from edge_swarm.learn.backbone import BackboneRef, features, load_backbone
        from edge_swarm.learn.runtimes import EngineUnavailableError, ModelFileError

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
        except EngineUnavailableError as exc:  # a device has no registry to pip install from
            raise SystemExit(
                f"{who} run by {r.engine}, which this device cannot load ({exc}). Install a "
                f"bundle that carries it (edge-swarm bundle with a profile whose extras name "
                f'it), or set [runtime] engine = "numpy" in this node\'s config (any device '
                f"runs it; the swarm's models stay the same)"
            ) from None
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

    def serve(self, spec: ModelSpec, params: np.ndarray, rnd: int, val: SiteValidation) -> None:
        """Serve the model just committed, if this device's profile says so and the gate
        lets it through (``val``: the device's scores and the genesis's margin)."""
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
        layers = model_layers(spec, params, self._served_backbone)
        served = self.server.round if self.server.current is not None else None
        held = gate(rnd, val.scores, served, val.serve_margin)
        if held is None:
            self.server.install_layers(layers, rnd)
            return
        self.held = held
        self.server.write_layers(layers, rnd)  # for an operator's rollout
        log.warning("%s", held.reason(val.n))

    def telemetry(self) -> dict[str, float]:
        """What the gate did, for the device's telemetry (``fleet ls``): the round served,
        and the last one held back while the served model is older than it."""
        if self.server is None or self.server.current is None:
            return {}
        out: dict[str, float] = {"serving_round": self.server.round}
        h = self.held
        if h is not None and h.round > self.server.round:  # not since rolled out by command
            out |= {"serve_held_round": h.round, "serve_held_acc": h.val_acc}
            out["serve_kept_acc"] = h.served_acc
        return out
