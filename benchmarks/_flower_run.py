"""Flower 1.42 on the standard workload, for ``bench_lean.py --flower BIN``.

Starts a SuperLink and 8 SuperNodes from the Flower installation in ``BIN`` (a venv's bin:
``python -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install flwr==1.42.*``), submits
``benchmarks/flower_lean`` with ``flwr run`` as soon as the SuperLink listens, and reports:
seconds from launching the processes to round 1 starting (the ServerApp's first
``configure_fit``), each round's time (``configure_fit`` to ``aggregate_fit``), and the peak
RSS (VmHWM) of every Flower process of a device: the SuperNode, its SuperExec and the
ClientApp process it starts each round, sampled every 0.1 s (a ClientApp lives a few seconds).
Everything runs on loopback and is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parent / "flower_lean"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _ours(pid: int, roots: set[int]) -> bool:
    """Whether ``pid`` is one of ``roots`` or descends from one (SuperExecs, ClientApps)."""
    while pid > 1:
        if pid in roots:
            return True
        pid = _parent(pid)
    return False


def _flower_processes(roots: set[int]) -> dict[int, str]:
    """pid -> kind of every Flower process this run started (``roots`` and their children)."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _ours(int(entry), roots):
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        for kind in ("flower-supernode", "flower-superexec", "flwr-clientapp", "flower-superlink"):
            if kind in cmd:
                if kind == "flower-superexec" and "--allow-runtime" in cmd:
                    kind = "superlink-superexec"  # the SuperLink's, not a device's
                out[int(entry)] = kind
    return out


def run_flower(bin_dir: Path, parts: list[Path], rounds: int = 3) -> dict[str, Any]:
    """One Flower run of ``rounds`` rounds over the partition files ``parts``."""
    work = Path(tempfile.mkdtemp(prefix="bench-flower-"))
    timeline = work / "timeline.txt"
    port = _free_port()
    (work / "home").mkdir()
    (work / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**os.environ, "FLWR_HOME": str(work / "home"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    procs: list[subprocess.Popen[bytes]] = []
    peak: dict[int, tuple[str, int]] = {}

    def start(*cmd: str, log: str) -> None:
        out = open(work / log, "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))

    def sample() -> None:
        for pid, kind in _flower_processes({p.pid for p in procs}).items():
            kb = _hwm_kb(pid)
            if kb is not None and kb > peak.get(pid, (kind, 0))[1]:
                peak[pid] = (kind, kb)

    t0 = time.time()
    start("flower-superlink", "--insecure", "--port", str(port),
          "--database", str(work / "state.db"), log="superlink.log")  # fmt: skip
    for i, part in enumerate(parts):
        node = f'partition-id={i} data="{part}"'
        link = f"127.0.0.1:{port}"
        start("flower-supernode", "--insecure", "--superlink", link, "--port",
              str(_free_port()), "--node-config", node, log=f"supernode-{i}.log")  # fmt: skip
    try:
        while not _listening(port):
            time.sleep(0.05)
        config = f'num-server-rounds={rounds} timeline="{timeline}"'
        run = subprocess.Popen(
            [str(bin_dir / "flwr"), "run", str(APP), "local", "--stream", "--run-config", config],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=work,
        )  # fmt: skip
        while run.poll() is None:
            sample()
            time.sleep(0.1)
        sample()
    finally:
        children = _flower_processes({p.pid for p in procs})  # SuperExecs, ClientApps left
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
    marks = [line.split() for line in timeline.read_text().splitlines()]
    opened = {int(r): float(t) for t, what, r in marks if what == "open"}
    final = {int(r): float(t) for t, what, r in marks if what == "final"}
    by_kind: dict[str, list[float]] = {}
    for kind, kb in peak.values():
        by_kind.setdefault(kind, []).append(kb / 1024)
    device = {k: max(v) for k, v in by_kind.items() if k != "superlink-superexec"}
    return {
        "rounds": rounds,
        "site_to_round1_s": opened[1] - t0,
        "round_s": statistics.median(final[r] - opened[r] for r in final),
        "peak_rss_mib": {
            k: {"median": statistics.median(v), "max": max(v), "n": len(v)}
            for k, v in by_kind.items()
        },  # fmt: skip
        # One device runs a SuperNode, its SuperExec and one ClientApp at a time.
        "device_peak_rss_mib": sum(
            device.get(k, 0.0) for k in ("flower-supernode", "flower-superexec", "flwr-clientapp")
        ),
        "supernode_peak_rss_mib": device.get("flower-supernode", float("nan")),
    }
