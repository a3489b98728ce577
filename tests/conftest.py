"""Shared fixtures: real brokers on loopback, and a guard against leaked threads/processes.

- ``embedded_broker``: amqtt in-process, fresh for each test.
- ``mosquitto_broker``: a real ``mosquitto`` process, fresh for each test; skipped when the
  binary is absent, unless ``EDGE_SWARM_REQUIRE_MOSQUITTO=1`` (CI), where that fails.
- ``broker``: parametrized over both, so one scenario runs against each. Every broker object
  has ``host``, ``port``, ``url``, ``start()`` and ``stop()``; stop() then start() restarts
  it on the same port.
- ``side_runs`` / ``side_run``: the swarms of a module's tests marked ``side_run``, made side
  by side; each test reads its own (tests/side_runs.py).
- An autouse guard fails a test that leaves behind non-daemon threads, paho/edge-swarm
  threads, or child processes it started. Mark a test ``allow_leaks`` to opt out.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from edge_swarm.io.broker import EmbeddedBroker, MosquittoBroker, find_mosquitto

from .side_runs import MARKER, make_side_runs, read_side_run

REQUIRE_MOSQUITTO_ENV = "EDGE_SWARM_REQUIRE_MOSQUITTO"
LEAK_GRACE_S = 2.0  # how long leaked threads get to finish on their own, in seconds
_WATCHED_THREAD_PREFIXES = ("paho-mqtt-client-", "es-")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_leaks: the test may leave threads or child processes behind"
    )
    config.addinivalue_line(
        "markers", f"{MARKER}(make): the test's swarm, made by make, beside others (side_run)"
    )


# --------------------------------------------------------------------------- brokers


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A fresh amqtt broker on 127.0.0.1 and a free port; stopped after the test."""
    broker = EmbeddedBroker("127.0.0.1", 0).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh ``mosquitto`` process on 127.0.0.1 and a free port; terminated after the test."""
    if find_mosquitto() is None:
        msg = (
            "mosquitto binary not found (apt-get install mosquitto); "
            f"set {REQUIRE_MOSQUITTO_ENV}=1 to make this a failure"
        )
        if os.environ.get(REQUIRE_MOSQUITTO_ENV) == "1":
            pytest.fail(f"{REQUIRE_MOSQUITTO_ENV}=1 but the mosquitto binary is missing")
        pytest.skip(msg)
    broker = MosquittoBroker(0, tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(
    params=[
        pytest.param("embedded", marks=pytest.mark.network),
        pytest.param("mosquitto", marks=[pytest.mark.network, pytest.mark.mosquitto]),
    ]
)
def broker(request: pytest.FixtureRequest) -> EmbeddedBroker | MosquittoBroker:
    """Each broker in turn: the same integration scenario runs against amqtt and Mosquitto."""
    return request.getfixturevalue(f"{request.param}_broker")


# --------------------------------------------------------------------------- side runs


@pytest.fixture(scope="module")
def side_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Future[Any]]:
    """The runs of this module's selected tests marked ``side_run``, made side by side;
    like a test, they must leave no threads or child processes behind."""
    threads_before = set(threading.enumerate())
    children_before = _children()
    runs = make_side_runs(request, tmp_path_factory)
    problems = _leaks(threads_before, children_before)
    if problems:
        pytest.fail("the side runs leaked " + "; ".join(problems))
    return runs


@pytest.fixture
def side_run(side_runs: dict[str, Future[Any]], request: pytest.FixtureRequest) -> Any:
    """What this test's ``side_run`` function returned (what it raised, raised here)."""
    return read_side_run(side_runs, request)


# --------------------------------------------------------------------------- leak guard


def _children() -> set[int]:
    """Pids of this process's children (Linux /proc; empty elsewhere)."""
    pids: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return pids


def _watched(t: threading.Thread) -> bool:
    return not t.daemon or t.name.startswith(_WATCHED_THREAD_PREFIXES)


def _leaks(threads_before: set[threading.Thread], children_before: set[int]) -> list[str]:
    """What was left running since the snapshots: watched threads still alive after a grace
    of LEAK_GRACE_S, and child processes (killed here, so that one leak does not spill into
    the next test)."""
    leaked = [t for t in threading.enumerate() if t not in threads_before and _watched(t)]
    deadline = time.monotonic() + LEAK_GRACE_S
    for t in leaked:
        t.join(max(0.0, deadline - time.monotonic()))
    names = sorted(t.name for t in leaked if t.is_alive())
    new_children = sorted(_children() - children_before)
    for pid in new_children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    problems = []
    if names:
        problems.append(f"threads still running: {names}")
    if new_children:
        problems.append(f"child processes left behind: {new_children}")
    return problems


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves threads or child processes behind (cheap: two snapshots)."""
    threads_before = set(threading.enumerate())
    children_before = _children()
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    problems = _leaks(threads_before, children_before)
    if problems:
        pytest.fail("test leaked " + "; ".join(problems))
