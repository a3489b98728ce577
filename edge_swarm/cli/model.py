"""``edge-swarm model pretrain | export`` and ``edge-swarm predict``: models as files.

- ``model pretrain`` makes a backbone from the public part of a bundled public dataset with
  this project's own numpy code and writes it as .npz, .onnx and .tflite (+ backbone.json,
  whose hashes go into a genesis).
- ``model export`` writes a checkpoint (the gateway's ``checkpoint.bin``), with its backbone
  if the swarm has one, as one .onnx, .tflite and .npz model: what a device serves.
- ``predict`` runs such a file with the runtime its extension names (or ``--engine``) on
  an .npz (``X``, optional ``y``) or .csv input, and prints the predicted classes (and the
  accuracy when labels are there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def run_model(args: argparse.Namespace) -> int:
    try:
        if args.model_command == "pretrain":
            return _pretrain(args)
        return _export(args)
    except (ValueError, OSError) as exc:
        print(f"edge-swarm model {args.model_command}: {exc}", file=sys.stderr)
        return 2


def _pretrain(args: argparse.Namespace) -> int:
    from edge_swarm.learn.backbone import pretrain, write_backbone
    from edge_swarm.learn.data import WORKLOADS, public_private

    hidden = tuple(int(s) for s in args.hidden.split(","))
    public, private = public_private(WORKLOADS[args.workload](), args.public_fraction, args.seed)
    layers, accuracy = pretrain(public, hidden, seed=args.seed)
    ref = write_backbone(layers, args.out)
    print(
        f"backbone {'-'.join(map(str, ref.sizes))} pretrained on {len(public.y_train)} public "
        f"{args.workload} samples ({len(private.y_train)} left private); its classifier "
        f"scores {accuracy:.3f} on the test set"
    )
    for engine, digest in ref.files.items():
        print(f"  {engine:12s} {args.out / _file(engine)}  sha256 {digest}")
    print(f"reference for the genesis: {args.out / 'backbone.json'}")
    return 0


def _file(engine: str) -> str:
    from edge_swarm.learn.backbone import FILES

    return FILES[engine]


def _export(args: argparse.Namespace) -> int:
    from edge_swarm.node.exports import export_checkpoint

    written = export_checkpoint(args.checkpoint, args.out, args.backbone)
    for path, digest in written.items():
        print(f"{path}  sha256 {digest}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from edge_swarm.learn.runtimes import ModelFileError, load_model

    try:
        X, y = _read_input(args.input)
        model = load_model(
            args.model,
            engine=args.engine,
            threads=args.threads,
            expect_sha256=args.expect_sha256,
            expect_inputs=X.shape[1],
        )
    except (ModelFileError, ValueError, OSError) as exc:
        print(f"edge-swarm predict: {exc}", file=sys.stderr)
        return 2
    pred = np.argmax(model.predict_logits(X), axis=1)
    if args.json:
        out = {"engine": model.engine, "predictions": pred.tolist()}
        if y is not None:
            out["accuracy"] = float(np.mean(pred == y))
        print(json.dumps(out))
        return 0
    print(" ".join(str(int(p)) for p in pred))
    if y is not None:
        print(
            f"accuracy {np.mean(pred == y):.4f} on {len(y)} samples ({model.engine})",
            file=sys.stderr,
        )
    return 0


def _read_input(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (and labels if present) from an .npz (X[, y]) or a .csv of feature rows."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "X" not in data:
                raise ValueError(f"{path}: an .npz input needs an array X (and optionally y)")
            X = np.asarray(data["X"], dtype=np.float32)
            y = np.asarray(data["y"]) if "y" in data else None
    else:
        X = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        y = None
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise ValueError(f"{path}: features must be a finite 2-D array, got shape {X.shape}")
    return X, y


def add_parsers(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("model", help="make a backbone from public data, export a model")
    msub = m.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    pt = msub.add_parser("pretrain", help="pretrain a backbone on public data; write 3 formats")
    pt.add_argument("--out", type=Path, required=True, help="directory for the backbone files")
    pt.add_argument("--workload", default="digits", choices=["digits", "breast_cancer"])
    pt.add_argument("--hidden", default="64,32", help="backbone layer sizes (default 64,32)")
    pt.add_argument(
        "--public-fraction", type=float, default=0.2, help="share of the train split (0.2)"
    )
    pt.add_argument("--seed", type=int, default=0)
    ex = msub.add_parser("export", help="write a checkpoint as .onnx, .tflite and .npz")
    ex.add_argument(
        "--checkpoint", type=Path, required=True, help="e.g. state/gateway-1/checkpoint.bin"
    )
    ex.add_argument("--backbone", type=Path, help="the swarm's backbone directory, if it has one")
    ex.add_argument("--out", type=Path, required=True, help="directory for the model files")
    m.set_defaults(func=run_model)

    p = sub.add_parser("predict", help="run a model file (.onnx, .tflite, .npz) on inputs")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("input", type=Path, help=".npz with X (and y) or .csv of feature rows")
    p.add_argument(
        "--engine", choices=["numpy", "onnxruntime", "tflite"], help="default: by extension"
    )
    p.add_argument("--threads", type=int)
    p.add_argument("--expect-sha256", help="refuse the file unless it has this sha256")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_predict)
