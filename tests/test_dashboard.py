"""The gateway's dashboard: the views over a real ledger, the HTTP server on loopback, and the
page as headless Chromium renders it (skipped without Chromium unless
``EDGE_SWARM_REQUIRE_CHROMIUM=1``, as in CI).

Times in the ledger are explicit integers; no test sleeps: every wait is a bounded socket or
subprocess timeout.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import edge_swarm.dashboard.source as dashboard
from edge_swarm.dashboard import (
    BAR_W,
    ID_CHARS,
    REFRESH_S,
    TAIL,
    DashboardServer,
    DashboardSource,
    DeviceRow,
    render_page,
    weighted_accuracy,
)
from edge_swarm.swarm.audit import audit_rounds
from ledger_lite import Entry

from .test_ledger_support import T0, Swarm

AGENTS = ("agent-01", "agent-02", "agent-03")
SAMPLES = {"agent-01": 120, "agent-02": 60, "agent-03": 20}
# Local accuracy each agent reports in its delta_commit, per round.
ACCURACY = {
    1: {"agent-01": 0.612, "agent-02": 0.540, "agent-03": 0.380},
    2: {"agent-01": 0.744, "agent-02": 0.701, "agent-03": 0.520},
    3: {"agent-01": 0.903, "agent-02": 0.871, "agent-03": 0.655},
}
# Each site's held-out accuracy of round r's final model, reported with its commit to r + 1.
VALIDATION = {
    0: {"agent-01": 0.100, "agent-02": 0.133, "agent-03": 0.0},
    1: {"agent-01": 0.633, "agent-02": 0.600, "agent-03": 0.4},
    2: {"agent-01": 0.867, "agent-02": 0.733, "agent-03": 0.8},
}
VAL_N = {"agent-01": 30, "agent-02": 15, "agent-03": 5}
INCLUDED = {1: list(AGENTS), 2: ["agent-01", "agent-02"], 3: list(AGENTS)}  # 03 late in 2
DURATION_MS = {1: 41_500, 2: 38_000, 3: 45_250}
REASON = {1: "all in", 2: "deadline", 3: "<script>alert('reason')</script>"}
# What the merge rule did in round 3: agent-03 (20 of 200 samples) left out.
MERGE = {3: {"rule": "nnm+median", "weights": {"agent-01": 0.5, "agent-02": 0.5, "agent-03": 0.0}}}
HOSTILE_NODE = "<script>alert('node')</script>"
HTTP_TIMEOUT_S = 5.0
CHROMIUM_TIMEOUT_S = 90.0
REQUIRE_CHROMIUM_ENV = "EDGE_SWARM_REQUIRE_CHROMIUM"


def accuracy(rnd: int) -> dict[str, float]:
    return ACCURACY.get(rnd, ACCURACY[3])  # later rounds (added by some tests) as round 3


def validation(rnd: int) -> dict[str, float]:
    return VALIDATION.get(rnd, VALIDATION[2])


def expected_circles(rounds: int = 3) -> dict[tuple[str, int], str]:
    """The chart's points: each site's score of each final model reported so far (round r's
    comes with round r + 1's commits)."""
    return {(n, r): f"{validation(r)[n]:.3f}" for r in range(rounds) for n in AGENTS}


def expected_mean(rnd: int) -> float:
    """Mean of the reported accuracies weighted by samples, worked out independently."""
    acc = accuracy(rnd)
    return sum(acc[n] * SAMPLES[n] for n in acc) / sum(SAMPLES[n] for n in acc)


def open_ts(rnd: int) -> int:
    return T0 + rnd * 100_000


def add_round(s: Swarm, rnd: int, *, close: bool = True) -> None:
    """round_open, a delta_commit from every agent, then round_close and model_final."""
    t = open_ts(rnd)
    opening = {"round": rnd, "base_model_hash": "cd" * 32, "deadline_ms": t + 60_000}
    s.submit("gw", "round_open", opening, ts=t)
    for i, node in enumerate(AGENTS):
        commit = {
            "round": rnd,
            "node": node,
            "envelope_sha256": f"{i + 1:02x}" * 32,
            "n_samples": SAMPLES[node],
            "metrics": {
                "accuracy": accuracy(rnd)[node],
                "loss": 1.0 - accuracy(rnd)[node],
                "val_acc": validation(rnd - 1)[node],
                "val_n": VAL_N[node],
                "val_round": rnd - 1,
            },
        }
        s.submit(node, "delta_commit", commit, ts=t + 1_000 * (i + 1))
    if not close:
        return
    included, duration = INCLUDED.get(rnd, list(AGENTS)), DURATION_MS.get(rnd, 40_000)
    close_p = {"round": rnd, "included": included, "reason": REASON.get(rnd, "all in")}
    s.submit("gw", "round_close", close_p, ts=t + duration - 500)
    final = {
        "round": rnd,
        "model_hash": f"{rnd:02x}" * 32,
        "state_hash": "ee" * 32,
        "attesters": included,
        **({"merge": MERGE[rnd]} if rnd in MERGE else {}),
    }
    s.submit("gw", "model_final", final, ts=t + duration)


def new_swarm(path: Path, rounds: int = 3, observers: tuple[str, ...] = ()) -> Swarm:
    s = Swarm(path)
    s.enroll("gw", "gateway")
    for node in observers:
        s.enroll(node, "observer")
    for node in AGENTS:
        s.enroll(node, "agent")
    for rnd in range(1, rounds + 1):
        add_round(s, rnd)
    return s


DEVICES: dict[str, dict[str, Any]] = {
    "agent-01": {"role": "agent", "state": "online", "round": 3, "peak_rss_kb": 91_136},
    "agent-02": {"role": "agent", "state": "paused", "round": 3, "accuracy": 0.871},
    "agent-03": {"role": "agent", "state": "offline", "round": 2, "cpu_temp_c": 61.5},
    "gw": {"role": "gateway", "state": "online", "round": 3, "bytes_out": 1_234_567},
}


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    s = new_swarm(tmp_path / "ledger.sqlite")
    try:
        yield s
    finally:
        s.ledger.close()


@pytest.fixture
def source(swarm: Swarm) -> DashboardSource:
    return DashboardSource(swarm.ledger.entries, lambda: DEVICES)


class Elements(HTMLParser):
    """Every start tag with its attributes and the id of the table around it."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None], str | None]] = []
        self._tables: list[str | None] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a, self._tables[-1] if self._tables else None))
        if tag == "table":
            self._tables.append(a.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._tables:
            self._tables.pop()

    def rows(self, table: str, attr: str) -> list[str | None]:
        """The `data-{attr}` of each body row of the table `table` (the header row has none)."""
        key = f"data-{attr}"
        return [a[key] for t, a, tb in self.tags if t == "tr" and tb == table and key in a]

    def circles(self) -> dict[tuple[str | None, int], str | None]:
        """The validation chart's points: (site, round) -> accuracy."""
        return {
            (a.get("data-site"), int(a["data-round"] or -1)): a.get("data-accuracy")
            for t, a, _ in self.tags
            if t == "circle"
        }

    def ids(self) -> dict[str, str]:
        return {a["id"]: t for t, a, _ in self.tags if a.get("id")}


# --------------------------------------------------------------------------- the views


def test_rounds_view(source: DashboardSource) -> None:
    rounds = source.state()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        n = r["round"]
        assert r["participants"] == INCLUDED[n] and r["closed"]
        assert r["close_reason"] == REASON[n]
        assert r["duration_s"] == pytest.approx(DURATION_MS[n] / 1000)
        assert r["mean_accuracy"] == pytest.approx(expected_mean(n))
        assert r["samples"] == sum(SAMPLES[a] for a in INCLUDED[n])
        assert r["model_hash"] == f"{n:02x}" * 6
        assert r["down_weighted"] == (["agent-03"] if n == 3 else [])
    # Weighting matters: the plain mean of round 1 is well below the weighted one.
    assert expected_mean(1) - sum(ACCURACY[1].values()) / 3 > 0.03


def test_an_open_round_lists_its_committers(swarm: Swarm, source: DashboardSource) -> None:
    add_round(swarm, 4, close=False)
    r4 = source.state()["rounds"][-1]
    assert r4["round"] == 4 and not r4["closed"] and r4["participants"] == list(AGENTS)
    assert r4["duration_s"] is None and r4["model_hash"] == "" and r4["samples"] == 0
    assert r4["mean_accuracy"] == pytest.approx(expected_mean(4))  # reported, even if open


def test_weighted_accuracy_skips_what_it_cannot_weigh() -> None:
    def commit(n: Any, metrics: Any) -> dict[str, Any]:
        return {"n_samples": n, "metrics": metrics}

    commits = {
        "a": commit(30, {"accuracy": 0.9}),
        "b": commit(10, {"accuracy": 0.5}),
        "no-acc": commit(50, {"loss": 0.1}),
        "zero": commit(0, {"accuracy": 0.1}),
        "percent": commit(50, {"accuracy": 91.0}),  # not a fraction: left out, not plotted
        "bool": commit(50, {"accuracy": True}),
        "bad-metrics": commit(50, "0.2"),
    }
    assert weighted_accuracy(commits) == pytest.approx((0.9 * 30 + 0.5 * 10) / 40)
    assert weighted_accuracy({}) is None
    assert weighted_accuracy({"x": commit(0, {"accuracy": 0.5})}) is None


def test_contributions_agree_with_the_audit(swarm: Swarm, source: DashboardSource) -> None:
    contributions = source.state()["contributions"]
    assert contributions == [
        {"node": "agent-01", "rounds": 3, "samples": 360},
        {"node": "agent-02", "rounds": 3, "samples": 180},
        {"node": "agent-03", "rounds": 2, "samples": 40},  # committed but left out of round 2
    ]
    # The same numbers as `edge-swarm audit` gets from the same ledger.
    totals: dict[str, list[int]] = {}
    for a in audit_rounds(swarm.ledger.entries()).values():
        for c in a.to_dict()["contributors"]:
            t = totals.setdefault(c["node"], [0, 0])
            t[0], t[1] = t[0] + 1, t[1] + c["n_samples"]
    assert {c["node"]: [c["rounds"], c["samples"]] for c in contributions} == totals


def test_the_ledger_tail(swarm: Swarm, source: DashboardSource) -> None:
    tail = source.state()["ledger_tail"]
    entries = swarm.ledger.entries()
    assert len(tail) == TAIL < len(entries)
    assert [t["height"] for t in tail] == [e.height for e in reversed(entries[-TAIL:])]
    newest = tail[0]
    assert newest["kind"] == "model_final" and newest["author"] == "gw"
    assert newest["hash"] == entries[-1].hash[:12]
    assert newest["summary"] == f"round 3, model {'03' * 6}, 3 attester(s)"
    commit = next(t for t in tail if t["kind"] == "delta_commit")
    assert commit["summary"] == "round 3, 20 samples, acc 0.655"
    close = next(t for t in tail if t["kind"] == "round_close")
    assert close["summary"] == f"round 3: 3 included ({REASON[3]})"


def test_device_rows_are_coerced_not_trusted() -> None:
    row = DeviceRow.from_status("agent-01", DEVICES["agent-01"])
    assert (row.role, row.state, row.round, row.memory_mib) == ("agent", "online", 3, 89.0)
    odd = DeviceRow.from_status(
        "x" * 500,
        {"role": 7, "state": "rebooting", "round": -1, "accuracy": float("nan"), "bytes_out": True},
    )
    assert len(odd.id) == ID_CHARS and odd.role == "" and odd.state == "unknown"
    assert odd.round is None and odd.accuracy is None and odd.bytes_out is None
    assert DeviceRow.from_status("y", None).state == "unknown"


def test_folding_is_incremental(
    tmp_path: Path, swarm: Swarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    audited: list[int] = []

    def counting_audit(entries: list[Entry]) -> Any:
        audited.append(len(entries))
        return audit_rounds(entries)

    monkeypatch.setattr(dashboard, "audit_rounds", counting_audit)
    source = DashboardSource(swarm.ledger.entries, dict)
    first = source.refresh()
    assert first == len(swarm.ledger.entries()) and len(audited) == 3
    assert source.refresh() == 0 and len(audited) == 3  # nothing new, nothing redone
    audited.clear()
    add_round(swarm, 4)
    assert source.refresh() == 6  # open, 3 commits, close, final
    assert audited == [6]  # only round 4, and only its own entries
    assert source.state()["contributions"][0] == {"node": "agent-01", "rounds": 4, "samples": 480}


def test_entries_from_reads_only_what_is_new(swarm: Swarm) -> None:
    reads: list[tuple[Any, ...]] = []

    def whole() -> list[Entry]:
        reads.append(("whole",))
        return swarm.ledger.entries()

    def tail(height: int) -> list[Entry]:
        got = swarm.ledger.entries(height)
        reads.append(("from", height, len(got)))
        return got

    source = DashboardSource(whole, dict, entries_from=tail)
    assert source.refresh() == len(swarm.ledger.entries())
    h = swarm.ledger.height
    add_round(swarm, 4)
    assert source.refresh() == 6 and source.refresh() == 0
    assert reads == [("whole",), ("from", h, 7), ("from", h + 6, 1)]
    assert [r["round"] for r in source.state()["rounds"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("tail", [False, True], ids=["entries", "entries_from"])
def test_a_replaced_ledger_is_folded_again(
    tmp_path: Path, swarm: Swarm, caplog: pytest.LogCaptureFixture, tail: bool
) -> None:
    current = [swarm.ledger]
    source = DashboardSource(
        lambda: current[0].entries(),
        dict,
        entries_from=(lambda h: current[0].entries(h)) if tail else None,
    )
    assert len(source.state()["rounds"]) == 3
    # Longer than what was folded, but a different chain from height 2 on.
    other = new_swarm(tmp_path / "other.sqlite", observers=("laptop",))
    try:
        add_round(other, 4, close=False)
        current[0] = other.ledger
        with caplog.at_level(logging.WARNING, logger="edge_swarm.dashboard"):
            state = source.state()
        assert "refolding" in caplog.text
        assert state["height"] == other.ledger.height > swarm.ledger.height
        assert state["tip"] == other.ledger.tip[:12]
        assert [r["round"] for r in state["rounds"]] == [1, 2, 3, 4]
        assert state["contributions"][-1] == {"node": "agent-03", "rounds": 2, "samples": 40}
        assert state["ledger_tail"][-1]["height"] == other.ledger.height - TAIL + 1
    finally:
        other.ledger.close()


def test_untrusted_text_is_escaped(swarm: Swarm) -> None:
    devices = {**DEVICES, HOSTILE_NODE: {"role": "<b>r</b>", "state": "online"}}
    source = DashboardSource(swarm.ledger.entries, lambda: devices)
    html = render_page(source.state(), "n0nce")
    assert html.count("<script") == 1  # the page's own
    assert "&lt;script&gt;alert(&#x27;node&#x27;)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(&#x27;reason&#x27;)&lt;/script&gt;" in html
    assert "<b>r</b>" not in html
    page = Elements(html)
    assert HOSTILE_NODE in page.rows("devices", "node")  # the attribute holds it, escaped


def test_the_page_holds_every_view(source: DashboardSource) -> None:
    page = Elements(render_page(source.state(), "n0nce"))
    ids = page.ids()
    for eid, tag in {
        "devices": "table",
        "rounds": "table",
        "contributions": "table",
        "ledger-tail": "table",
        "accuracy-chart": "svg",
    }.items():
        assert ids.get(eid) == tag, eid
    assert page.rows("devices", "node") == sorted(DEVICES)
    assert page.rows("rounds", "round") == ["1", "2", "3"]
    assert page.circles() == expected_circles()
    assert page.rows("contributions", "node") == ["agent-01", "agent-02", "agent-03"]
    assert len(page.rows("ledger-tail", "height")) == TAIL
    # Three contribution bars, the widest for the biggest contributor.
    widths = [
        int(a["width"] or 0) for t, a, tb in page.tags if t == "rect" and tb == "contributions"
    ]
    assert widths == [BAR_W, BAR_W // 2, round(BAR_W * 40 / 360)]


def test_an_empty_ledger_renders() -> None:
    source = DashboardSource(list, dict)
    state = source.state()
    assert state["height"] == -1 and state["rounds"] == [] and state["devices"] == []
    html = render_page(state, "n0nce")
    assert "no validation reported yet" in html and Elements(html).circles() == {}


# --------------------------------------------------------------------------- HTTP


def fetch(url: str, method: str = "GET") -> tuple[int, Mapping[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read()


@pytest.fixture
def server(source: DashboardSource) -> Iterator[DashboardServer]:
    srv = DashboardServer(source, "127.0.0.1", 0).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.network
def test_get_the_page_and_the_state(server: DashboardServer, source: DashboardSource) -> None:
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/"
    status, headers, body = fetch(server.url)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    html = body.decode()
    nonce = headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert (
        f'<script nonce="{nonce}">' in html
        and "default-src 'none'" in headers["Content-Security-Policy"]
    )
    # Nothing from outside the LAN: no links, no sources, and no URL but the SVG namespace.
    assert re.findall(r"https?://[^\s\"'<>]+", html) == ["http://www.w3.org/2000/svg"]
    assert not {"link", "img", "iframe"} & {t for t, _, _ in Elements(html).tags}
    assert " src=" not in html and "@import" not in html and "url(" not in html
    assert Elements(html).circles() == expected_circles()

    status, headers, body = fetch(server.url + "api/state?x=1")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    state = json.loads(body)
    assert state == json.loads(json.dumps(source.state()))
    assert [r["mean_accuracy"] for r in state["rounds"]] == pytest.approx(
        [expected_mean(n) for n in ACCURACY]
    )

    status, headers, body = fetch(server.url, "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000


@pytest.mark.network
def test_read_only_and_nothing_else(server: DashboardServer) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, body = fetch(server.url, method)
        assert (status, headers["Allow"]) == (405, "GET, HEAD"), method
        assert headers["Cache-Control"] == "no-store" and body.startswith(b"read-only")
    for path in ("nope", "api/state/", "api", "index.html", "../etc/passwd"):
        status, headers, body = fetch(server.url + path)
        assert (status, body) == (404, b"not found\n"), path
        assert headers["Cache-Control"] == "no-store"
    status, _, body = fetch(server.url, "BREW")  # not a method at all: 501, still short
    assert status == 501 and len(body) < 100


@pytest.mark.network
def test_malformed_requests_get_short_replies(server: DashboardServer) -> None:
    for request, status in (
        (b"GET / HTTP/banana\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S) as s:
            s.sendall(request)
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.0 " + status), reply[:80]
        assert b"Cache-Control: no-store" in reply and len(reply) < 1000


@pytest.mark.network
def test_a_failing_source_is_a_500_and_a_log_line(
    swarm: Swarm, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, dict[str, Any]]:
        raise RuntimeError("status store unavailable")

    with (
        caplog.at_level(logging.ERROR, logger="edge_swarm.dashboard"),
        DashboardServer(DashboardSource(swarm.ledger.entries, broken)) as srv,
    ):
        for path in ("", "api/state"):
            status, headers, body = fetch(srv.url + path)
            assert status == 500 and body.startswith(b"internal error")
            assert b"status store" not in body and headers["Cache-Control"] == "no-store"
    assert "status store unavailable" in caplog.text


@pytest.mark.network
def test_concurrent_readers(server: DashboardServer) -> None:
    results: list[int] = []

    def read() -> None:
        results.append(fetch(server.url + "api/state")[0])

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HTTP_TIMEOUT_S * 2)
    assert results == [200] * 8


@pytest.mark.network
def test_clients_past_the_limit_are_dropped(source: DashboardSource) -> None:
    with DashboardServer(source, max_clients=2) as srv:
        addr = ("127.0.0.1", srv.port)
        idle = [socket.create_connection(addr, timeout=HTTP_TIMEOUT_S) for _ in range(2)]
        try:  # the two idle clients hold both slots until they hang up
            with socket.create_connection(addr, timeout=HTTP_TIMEOUT_S) as extra:
                extra.sendall(b"GET /api/state HTTP/1.0\r\n\r\n")
                try:
                    reply = extra.recv(100)
                except ConnectionResetError:
                    reply = b""
            assert reply == b""
        finally:
            for sock in idle:
                sock.close()


@pytest.mark.network
def test_stop_closes_the_port(source: DashboardSource) -> None:
    srv = DashboardServer(source).start()
    port = srv.port
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# --------------------------------------------------------------------------- Chromium


def find_chromium() -> str:
    """The Chromium binary, or skip (fail when EDGE_SWARM_REQUIRE_CHROMIUM=1)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get(REQUIRE_CHROMIUM_ENV) == "1":
        pytest.fail(f"{REQUIRE_CHROMIUM_ENV}=1 but no chromium, chromium-browser or google-chrome")
    pytest.skip(
        "headless Chromium not found (apt-get install chromium); "
        f"set {REQUIRE_CHROMIUM_ENV}=1 to make this a failure"
    )


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once, bounded; its whole process group is killed on timeout."""
    cmd = [
        binary,
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,1600",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {cmd}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def png_size_and_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the raw (filtered) scanlines of an 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)


@pytest.mark.network
def test_chromium_screenshot(tmp_path: Path, server: DashboardServer) -> None:
    binary = find_chromium()
    shot = tmp_path / "dashboard.png"
    run = chromium(binary, tmp_path / "profile", f"--screenshot={shot}", server.url)
    assert shot.is_file(), f"no screenshot (rc {run.returncode}): {run.stderr[-2000:]}"
    data = shot.read_bytes()
    assert len(data) > 20_000
    width, height, pixels = png_size_and_pixels(data)
    assert width == 1280 and height >= 1000
    assert len(set(pixels)) > 16  # tables, text and a chart, not a blank page


@pytest.mark.network
def test_chromium_dom_holds_the_ledger(tmp_path: Path, server: DashboardServer) -> None:
    binary = find_chromium()
    run = chromium(binary, tmp_path / "profile", "--dump-dom", server.url)
    assert run.returncode == 0, run.stderr[-2000:]
    page = Elements(run.stdout)
    assert page.ids()["accuracy-chart"] == "svg"
    assert page.rows("devices", "node") == sorted(DEVICES)
    assert page.circles() == expected_circles()
    assert page.rows("rounds", "round") == ["1", "2", "3"]


@pytest.mark.network
def test_chromium_script_refreshes_from_the_api(tmp_path: Path, swarm: Swarm) -> None:
    """The page's script redraws from /api/state: a device that appears after the page was
    served shows up, and the chart it draws matches the server's."""
    binary = find_chromium()
    calls = itertools.count()
    late = {"agent-04": {"role": "agent", "state": "online", "round": 4}}

    def devices() -> dict[str, dict[str, Any]]:
        return DEVICES if next(calls) == 0 else {**DEVICES, **late}

    source = DashboardSource(swarm.ledger.entries, devices)
    with DashboardServer(source) as srv:
        # Virtual time runs the 5 s refresh timer at once; the fetch itself is real.
        budget = f"--virtual-time-budget={REFRESH_S * 1000 + 2000}"
        run = chromium(binary, tmp_path / "profile", budget, "--dump-dom", srv.url)
    assert run.returncode == 0, run.stderr[-2000:]
    status = re.search(r'<p id="status">([^<]*)</p>', run.stdout)
    assert status and "; updated " in status[1], f"the refresh did not run: {status}"
    page = Elements(run.stdout)
    assert page.rows("devices", "node") == sorted({**DEVICES, **late})
    assert page.circles() == expected_circles()
    assert page.rows("ledger-tail", "height") == [
        str(h) for h in range(swarm.ledger.height, swarm.ledger.height - TAIL, -1)
    ]


def test_each_rounds_model_is_shown_as_each_site_scored_it(source: DashboardSource) -> None:
    state = source.state()
    by_round = {r["round"]: r for r in state["rounds"]}
    for rnd in (1, 2):  # round 3's scores come with round 4's commits: not yet
        assert by_round[rnd]["val_mean"] == pytest.approx(sum(VALIDATION[rnd].values()) / 3)
        worst = min(VALIDATION[rnd], key=VALIDATION[rnd].__getitem__)
        assert by_round[rnd]["val_worst"] == f"{worst} {VALIDATION[rnd][worst]:.3f}"
    assert by_round[3]["val_mean"] is None
    val = state["validation"]
    assert val["rounds"] == [0, 1, 2] and val["sites_total"] == 3
    assert [s["site"] for s in state["validation_sites"]] == list(AGENTS)
    assert [s["val_n"] for s in state["validation_sites"]] == [VAL_N[n] for n in AGENTS]
    assert val["mean"] == pytest.approx([sum(VALIDATION[r].values()) / 3 for r in (0, 1, 2)])
    page = Elements(render_page(state, "n0nce"))
    assert page.rows("validation-sites", "site") == list(AGENTS)


def test_a_devices_serving_gate_is_shown_and_coerced() -> None:
    held = {
        "serving_round": 3,
        "serve_held_round": 5,
        "serve_held_acc": 0.41,
        "serve_kept_acc": 0.938,
        "val_acc": 0.9,
    }
    row = DeviceRow.from_status("a", {"state": "online", **held})
    assert row.serving == "r3; held back r5: val 0.410 < 0.938" and row.val_acc == 0.9
    odd = DeviceRow.from_status("a", {"serving_round": "x", "val_acc": 7, "serve_held_acc": 2})
    assert odd.serving == "" and odd.val_acc is None
    assert DeviceRow.from_status("a", {"serving_round": 4, "serve_held_round": 5}).serving == "r4"
