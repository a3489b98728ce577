"""The gateway's dashboard on a running swarm, rendered by headless Chromium.

A real swarm (gateway and agents as processes) runs with gateway-1 serving its dashboard;
after round 3 a screenshot is taken and the DOM Chromium built is read back: the device table
lists every agent online, and the accuracy chart holds, for every finished round, the mean
local accuracy the agents reported on the ledger (weighted by their samples).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_swarm.node.observer import SwarmObserver
from edge_swarm.site.demo import run_swarm
from edge_swarm.site.launch import SwarmProcesses

from .test_dashboard import chromium, find_chromium, png_size_and_pixels
from .test_e2e import small
from .waiting import dashboard_url

pytestmark = pytest.mark.network


def weighted_accuracy(entries: list, rnd: int) -> float:
    commits = [e.payload for e in entries if e.kind == "delta_commit" and e.payload["round"] == rnd]
    total = sum(c["n_samples"] for c in commits)
    return sum(c["metrics"]["accuracy"] * c["n_samples"] for c in commits) / total


def test_the_dashboard_shows_the_running_swarm(tmp_path: Path) -> None:
    binary = find_chromium()
    cfg = small(tmp_path, "embedded", rounds=40, dashboard_port=0)  # the gateway picks one
    seen: dict[str, object] = {}

    def look(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        url = dashboard_url(procs)
        assert obs.wait_for(lambda: obs.final_round() >= 3, timeout=60)
        # The gateway heard every agent's status and telemetry by now (sent every round).
        shot = tmp_path / "dashboard.png"
        run = chromium(binary, tmp_path / "profile-1", f"--screenshot={shot}", url)
        assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
        seen["png"] = shot.read_bytes()
        dom = chromium(binary, tmp_path / "profile-2", "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        seen["dom"] = dom.stdout
        seen["entries"] = list(obs.entries)

    run_swarm(cfg, during=look)
    width, height, _ = png_size_and_pixels(seen["png"])  # type: ignore[arg-type]
    assert width == 1280 and height > 500 and len(seen["png"]) > 20_000  # type: ignore[arg-type]
    dom = str(seen["dom"])
    table = re.search(r'<table[^>]*id="devices".*?</table>', dom, re.S)
    assert table is not None, "no device table"
    for i in range(1, cfg.n_agents + 1):
        row = re.search(rf'<tr data-node="agent-0{i}"([^>]*)>(.*?)</tr>', table.group(0), re.S)
        assert row is not None, f"agent-0{i} missing from the device table"
        assert 'data-state="online"' in row.group(1) and "online" in row.group(2)
    points = {
        int(r): a
        for r, a in re.findall(r'<circle data-round="(\d+)" data-accuracy="([0-9.]+)"', dom)
    }
    entries = seen["entries"]
    finished = [e.payload["round"] for e in entries if e.kind == "model_final"]  # type: ignore[union-attr]
    assert len(finished) >= 3
    for rnd in finished[:3]:
        assert points.get(rnd) == f"{weighted_accuracy(entries, rnd):.3f}", (rnd, points)  # type: ignore[arg-type]
