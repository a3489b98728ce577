"""The emulated aarch64 agent beside an x86 one: install time, bundle size, peak RSS, seconds
per local epoch.

The aarch64 side is the Debian 12 arm64 root of ``make test-arm`` (tests/arm_root.py) run by
qemu-user on this x86 machine: its figures are those of emulation, NOT of a Raspberry Pi.
Each side installs its bundle with install.sh and no network:

1. a swarm as in tests/test_arm.py (3 x86 agents, the rpi4 device; int8, the standard merge,
   a frozen backbone the device runs with TFLite, 5 rounds): the rpi4 bundle's size and
   install time on the device, each agent's peak RSS (its telemetry: VmHWM; the emulated
   agent's includes qemu's own memory) and local training time per round (its commits);
2. the x86-agent bundle (this machine's Python) installed under a root prefix in a network
   namespace of its own: its size and install time;
3. the same local training on the same data (the device's partition, the standard MLP
   64-32-10, the standard local training) in the device's venv and in this one: seconds per
   epoch, median of 5 runs of 5 epochs.

Writes ``benchmarks/results/arm.json``.

    sudo .venv/bin/python benchmarks/bench_arm.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._machine import machine  # noqa: E402
from edge_swarm.learn.backbone import pretrain, write_backbone  # noqa: E402
from edge_swarm.learn.data import PUBLIC_FRACTION, WORKLOADS, public_private  # noqa: E402
from edge_swarm.site.report import print_table, write_json  # noqa: E402
from tests.arm_root import Device, arm_missing, cached_root  # noqa: E402
from tests.arm_site import ArmRun, Emulated, make_bundle, run_with_devices  # noqa: E402
from tests.test_arm import arm_config  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEVICE = "pi-arm-01"
MIB = 2**20

# Local training alone, on a partition file: the same code on both sides.
EPOCH_PROBE = """
import json, statistics, sys, time
import numpy as np
from edge_swarm.learn.model import ModelSpec, init_params
from edge_swarm.learn.train import STANDARD_TRAINING, train_local
with np.load(sys.argv[1]) as d:
    X, y = d["X"], d["y"]
spec = ModelSpec((X.shape[1], 32, 10))
runs = []
for i in range(6):  # the first warms up (imports, caches) and is not counted
    t0 = time.perf_counter()
    train_local(spec, init_params(spec, 0), X, y, STANDARD_TRAINING, i)
    runs.append(time.perf_counter() - t0)
e = STANDARD_TRAINING.epochs
print(json.dumps({"samples": len(y), "epochs": e, "s_per_epoch": statistics.median(runs[1:]) / e}))
"""


def x86_install(run: ArmRun, work: Path) -> dict[str, Any]:
    """The x86-agent bundle for this Python, installed under a prefix with no network."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    bundle = make_bundle(
        "x86-agent",
        run.layout,
        "x86-bench-01",
        work / "x86-bundle",
        broker="127.0.0.1:1883",
        backbone=run.config.backbone,
        python=py,
    )
    env = {
        **os.environ,
        "EDGE_SWARM_ROOT": str(work / "x86-device"),
        "EDGE_SWARM_PYTHON": os.path.realpath(sys.executable),
    }
    t0 = time.monotonic()
    argv = ["unshare", "--net", "sh", str(bundle.path / "install.sh")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"x86 install.sh failed:\n{proc.stderr[-3000:]}")
    return {"install_s": time.monotonic() - t0, "bundle_mib": bundle.size_mib, "python": py}


def epoch_seconds(pi: Device, data: Path) -> dict[str, dict[str, Any]]:
    """Seconds per local epoch on the same data, emulated aarch64 and native x86."""
    pi.copy_in(data, "/tmp/bench/part.npz")
    on_pi = pi.run(
        ["/opt/edge-swarm/venv/bin/python", "-c", EPOCH_PROBE, "/tmp/bench/part.npz"],
        timeout=1800,
    )
    if on_pi.returncode != 0:
        raise RuntimeError(on_pi.stderr[-3000:])
    native = subprocess.run(
        [sys.executable, "-c", EPOCH_PROBE, str(data)], capture_output=True, text=True, timeout=600
    )
    native.check_returncode()
    return {"aarch64": json.loads(on_pi.stdout), "x86_64": json.loads(native.stdout)}


def main() -> int:
    why = arm_missing()
    if why is not None:
        print(f"bench_arm: {why}", file=sys.stderr)
        return 1
    root = cached_root()
    with tempfile.TemporaryDirectory(prefix="bench-arm-") as tmp:
        work = Path(tmp)
        public, _ = public_private(WORKLOADS["digits"](), PUBLIC_FRACTION, 0)
        write_backbone(pretrain(public)[0], work / "backbone")
        cfg = arm_config(work / "swarm", 1, backbone=work / "backbone")
        with Device(root.path, work / "pi") as pi:
            t0 = time.monotonic()
            run = run_with_devices(cfg, [Emulated(pi, "rpi4", DEVICE)])
            swarm_s = time.monotonic() - t0
            epochs = epoch_seconds(pi, sorted((cfg.workdir / "part-0").glob("agent-*.npz"))[-1])
        x86 = x86_install(run, work)
    side = run.devices[DEVICE]
    x86_rss = [run.peak_rss_kb[n] for n in run.x86_agents]
    x86_train = [s for n in run.x86_agents for s in run.train_s(n)]
    e = cfg.local.epochs
    rows = {
        "aarch64 (emulated, qemu-user)": {
            "install_s": side.installed.seconds,
            "bundle_mib": side.bundle.size_mib,
            "bundle": "rpi4 (tflite extra)",
            "peak_rss_mib": run.peak_rss_kb[DEVICE] / 1024,
            "s_per_epoch_same_data": epochs["aarch64"]["s_per_epoch"],
            "s_per_epoch_in_swarm": statistics.median(run.train_s(DEVICE)) / e,
        },
        "x86_64 (native)": {
            "install_s": x86["install_s"],
            "bundle_mib": x86["bundle_mib"],
            "bundle": f"x86-agent (serve extra: onnxruntime and TFLite), Python {x86['python']}",
            "peak_rss_mib": max(x86_rss) / 1024,
            "s_per_epoch_same_data": epochs["x86_64"]["s_per_epoch"],
            "s_per_epoch_in_swarm": statistics.median(x86_train) / e,
        },
    }
    print_table(
        "emulated aarch64 agent vs x86 agent (emulated figures are not Pi speed)",
        ["agent", "install s", "bundle MiB", "peak RSS MiB", "s/epoch same data", "s/epoch swarm"],
        [
            [k, v["install_s"], v["bundle_mib"], v["peak_rss_mib"]]
            + [v["s_per_epoch_same_data"], v["s_per_epoch_in_swarm"]]
            for k, v in rows.items()
        ],
    )
    out = write_json(
        RESULTS / "arm.json",
        {
            "note": "aarch64 figures are qemu-user emulation on the x86 machine, not Pi speed",
            "agents": rows,
            "same_data": epochs,
            "swarm": {
                "x86_agents": len(run.x86_agents),
                "rounds": cfg.rounds,
                "codec": cfg.codec.to_dict(),
                "merge": cfg.merge.to_dict(),
                "merge_by": cfg.merge_by,
                "backbone_engine_on_device": "tflite",
                "wall_s": swarm_s,
                "device_attests_equal_final": all(
                    run.attests()[r][DEVICE][0] == h for r, h in run.finals().items()
                ),
                "device_rounds_adopted": sorted(side.adopted_rounds()),
                "finals": run.finals(),
                "peak_rss_kb": run.peak_rss_kb,
                "train_s": {n: run.train_s(n) for n in [*run.x86_agents, DEVICE]},
            },
            "root": {"suite": root.suite, "build_s": root.build_s, "built": root.built},
            "machine": machine(None),
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
