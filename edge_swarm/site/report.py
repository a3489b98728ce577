"""What a person reads after a swarm run: reference points, tables, a plot, a JSON record.

The reference points are the two the swarm is judged against on the same split and model:
pooling every agent's data in one place, and each agent training alone. Tables use rich
when it is installed (the ``demo`` extra) and plain text otherwise; the plot uses
matplotlib's Agg backend so that it works without a screen.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.learn.data import Workload, load_local
from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.learn.train import LocalTraining, evaluate, train_local
from edge_swarm.node.observer import RoundRecord

# shared/WORKLOAD.md's reference training: 20 epochs, SGD lr 0.1, batch 32.
REFERENCE_TRAINING = LocalTraining(epochs=20, lr=0.1, batch_size=32)


@dataclass(frozen=True)
class Baselines:
    pooled: float
    alone: dict[str, float]

    @property
    def alone_mean(self) -> float:
        return statistics.fmean(self.alone.values())

    @property
    def alone_worst(self) -> float:
        return min(self.alone.values())


def baselines(
    spec: ModelSpec,
    workload: Workload,
    parts: list[Path],
    seed: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Baselines:
    """Pooled training and each agent alone, same model, same initial weights.

    ``transform`` maps raw inputs to the model's (a frozen backbone's features)."""
    p0 = init_params(spec, seed)

    def prep(X: np.ndarray) -> np.ndarray:
        return X if transform is None else transform(X)

    X_test = prep(workload.X_test)

    def acc(X: np.ndarray, y: np.ndarray) -> float:
        params, _ = train_local(spec, p0, prep(X), y, REFERENCE_TRAINING, seed)
        return evaluate(spec, params, X_test, workload.y_test)["accuracy"]

    pooled = acc(workload.X_train, workload.y_train)
    alone = {}
    for path in parts:
        X, y = load_local(path)
        alone[path.stem] = acc(X, y)
    return Baselines(pooled, alone)


def round_row(rec: RoundRecord, bytes_out: int, bytes_in: int) -> str:
    acc = "  -  " if rec.accuracy is None else f"{rec.accuracy:.3f}"
    return (
        f"round {rec.round:>3}  peers {len(rec.included):>2}  acc {acc}  "
        f"out {bytes_out / 1024:7.1f} KiB  in {bytes_in / 1024:7.1f} KiB  "
        f"time {rec.seconds:5.2f} s  overhead {rec.overhead_s:5.2f} s"
    )


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table on stdout: rich if present, aligned plain text otherwise."""
    cells = [[_fmt(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(columns, widths, strict=True)))
        for r in cells:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for h in columns:
        table.add_column(h, justify="right" if h != columns[0] else "left")
    for r in cells:
        table.add_row(*r)
    # Not a terminal (a log, CI, a pipe): wide enough that no column is cut.
    Console(width=None if sys.stdout.isatty() else 140).print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def plot_accuracy(
    path: Path,
    title: str,
    rounds: list[RoundRecord],
    base: Baselines,
    site_val: dict[int, float] | None = None,
) -> Path:
    """Accuracy per round of the swarm against pooled and alone; written as PNG. With
    ``site_val`` (round -> the sites' mean validation of that round's model), also that
    curve and, on a second axis, the samples each round trained on (data arriving)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.round for r in rounds if r.accuracy is not None]
    ys = [r.accuracy for r in rounds if r.accuracy is not None]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(xs, ys, marker="o", label="swarm (global model)")
    ax.axhline(base.pooled, color="tab:green", ls="--", label=f"pooled data ({base.pooled:.3f})")
    ax.axhline(
        base.alone_mean, color="tab:red", ls=":", label=f"alone, mean ({base.alone_mean:.3f})"
    )
    ax.axhline(
        base.alone_worst,
        color="tab:red",
        ls="-.",
        lw=0.8,
        label=f"alone, worst ({base.alone_worst:.3f})",
    )
    if site_val:
        vx = sorted(site_val)
        ax.plot(vx, [site_val[r] for r in vx], marker=".", color="tab:purple",
                label="sites' held-out validation, mean")  # fmt: skip
        ax2 = ax.twinx()
        ax2.step([r.round for r in rounds], [r.samples for r in rounds], where="mid",
                 color="tab:gray", alpha=0.6, label="samples trained on")  # fmt: skip
        ax2.set_ylabel("samples trained on", color="tab:gray")
        ax2.set_ylim(0, max([r.samples for r in rounds], default=1) * 1.1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
