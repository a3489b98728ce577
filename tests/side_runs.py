"""Independent swarms of a module's tests, run side by side, each in a thread of this process.

Most of a small run's time is spent waiting (processes starting, a round's messages going
round), so a few runs side by side take little longer than one. A test whose swarm needs
nothing of the others' and no tight timing of its own names the function that makes its run,
and reads what that function returned from the fixture ``side_run``::

    @side_by_side(late_start_run)
    @pytest.mark.parametrize("broker", BROKERS)
    def test_late_agent_joins(broker: str, side_run: RunResult) -> None: ...

How it works: the module fixture ``side_runs`` (tests/conftest.py), set up when the first
such test of a module starts, makes the runs of all the module's selected ones at once (up
to `SIDE_BY_SIDE`, in the module's order: put the longest first). Each run function is called
with a fresh directory, then by name with the test's parameters, and with fixtures (of module
scope or wider) for its other arguments. A run that raised fails (or skips) only the test
that reads it, with what it raised. Each run is bounded by its own timeouts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

MARKER = "side_run"
# Swarms run side by side at most: measured on a 2-core box, four small runs at once take
# about as long as two one after the other, also with both cores kept busy by other work.
SIDE_BY_SIDE = 4

T = TypeVar("T")


def side_by_side(make: Callable[..., Any]) -> pytest.MarkDecorator:
    """Mark a test whose swarm `make` makes, beside the other such tests of its module."""
    return getattr(pytest.mark, MARKER).with_args(make)  # with_args: `make` is a function


def run_at_once(
    runs: Mapping[str, Callable[[], T]], at_once: int = SIDE_BY_SIDE
) -> dict[str, Future[T]]:
    """Call each of `runs` (name -> a whole run), up to `at_once` at a time, each in a
    thread, in the order given; return once all are done, with each one's outcome:
    ``.result()`` gives its value or raises what it raised."""
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="side-run") as pool:
        futures = {name: pool.submit(run) for name, run in runs.items()}
    return futures


def make_side_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Future[Any]]:
    """The runs of the selected tests of the requesting module that carry the marker, made
    side by side; by test name (with its parameters' ids)."""
    runs = {}
    for item in request.session.items:
        marker = item.get_closest_marker(MARKER)
        if getattr(item, "module", None) is not request.module or marker is None:
            continue
        assert MARKER in getattr(item, "fixturenames", ()), f"{item.name} reads no {MARKER}"
        (make,) = marker.args
        workdir = tmp_path_factory.mktemp(item.name.removeprefix("test_")[:24])
        runs[item.name] = _bound(make, workdir, item, request)
    return run_at_once(runs)


def _bound(
    make: Callable[..., Any], workdir: object, item: pytest.Item, request: pytest.FixtureRequest
) -> Callable[[], Any]:
    """`make` with its arguments: `workdir` first, then each by name, a parameter of the test
    `item` or a fixture. Fixtures are looked up here, in the main thread."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    _workdir, *names = inspect.signature(make).parameters
    kwargs = {n: params[n] if n in params else request.getfixturevalue(n) for n in names}
    return lambda: make(workdir, **kwargs)


def read_side_run(side_runs: Mapping[str, Future[Any]], request: pytest.FixtureRequest) -> Any:
    """The requesting test's run: what it returned, or what it raised, raised here."""
    name = request.node.name
    assert name in side_runs, f"{name} reads {MARKER} but is not marked @side_by_side(...)"
    return side_runs[name].result()
