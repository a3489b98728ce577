"""The gateway's dashboard on a running swarm, rendered by headless Chromium.

A real swarm (gateway and agents as processes) runs with gateway-1 serving its dashboard;
after round 3 a screenshot is taken and the DOM Chromium built is read back: the device table
lists every agent online with its validation accuracy, and the validation chart holds, per
site and per round, the held-out accuracy of that round's final model that each site signed
into its next commit on the ledger (docs/VALIDATION.md).
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


def site_scores(entries: list) -> dict[tuple[str, int], str]:
    """(site, round) -> its held-out accuracy of that round's final model, from the ledger:
    the rows of round_close (committee) or the delta_commit entries ("all")."""
    out = {}
    for e in entries:
        rows = e.payload.get("commits") if e.kind == "round_close" else None
        if e.kind == "delta_commit":
            rows = [[e.author, 0, 0, 0, 0, e.payload["metrics"]]]
        for row in rows if isinstance(rows, list) else []:
            m = row[5] if len(row) == 6 else {}
            if "val_acc" in m:
                out[(row[0], m["val_round"])] = f"{m['val_acc']:.3f}"
    return out


def test_the_dashboard_shows_the_running_swarm(tmp_path: Path) -> None:
    binary = find_chromium()
    # Port 0: the gateway picks one. Each site holds a fifth out and scores every model on it.
    # Rounds enough to go on training while Chromium looks, most of the time; the checks
    # hold as well on a swarm that has just finished (its nodes run until `look` returns).
    cfg = small(tmp_path, "embedded", rounds=12, dashboard_port=0, val_fraction=0.2)
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
        assert re.search(r"<td>0\.\d{3}</td>|<td>1\.000</td>", row.group(2)), "no val acc"
    circle = r'<circle data-site="([^"]+)" data-round="(\d+)" data-accuracy="([0-9.]+)"'
    points = {(site, int(r)): a for site, r, a in re.findall(circle, dom)}
    scores = site_scores(seen["entries"])  # type: ignore[arg-type]
    # Every site scored rounds 0 (the initial model), 1 and 2 by the time round 3 was final.
    for rnd in (0, 1, 2):
        for i in range(1, cfg.n_agents + 1):
            site = f"agent-0{i}"
            assert (site, rnd) in scores, (site, rnd)
            assert points.get((site, rnd)) == scores[(site, rnd)], (site, rnd, points)
    legend = re.search(r'<table[^>]*id="validation-sites".*?</table>', dom, re.S)
    assert legend is not None and all(f'data-site="agent-0{i}"' in legend.group(0) for i in (1, 4))
