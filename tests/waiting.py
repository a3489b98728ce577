"""Waiting in tests: on a condition, with a deadline, never a fixed sleep.

- `wait_until(cond, timeout, what)`: poll a condition that lives elsewhere (another
  process, a file) until it holds; TimeoutError naming `what`.
- `ledger_tip(path)` / `wait_for_same_tip(paths, timeout)`: read the tip of ledger files
  (read-only, while their gateways run) and wait until every replica holds the same one;
  the AssertionError on timeout names each replica's height.
- `settle(cfg, procs, obs)` / `run_settled(cfg, during)`: `run_swarm` stops the site as soon
  as the observer has seen the last round final, but the ledger is not quiet yet then: the
  last round's late attestations are still on their way, and a replica that was restarted
  may still be catching up. A test that reads ledger files afterwards must first wait for
  both (while the site runs), or it reads whatever the shutdown happened to cut off.
- `kill_once_finished(cfg, procs, obs, nodes)`: `run_swarm` waits (up to 10 s) for the last
  round's telemetry of every agent still running; an agent that cannot send it (frozen,
  revoked) is killed once the rounds are done, so that the run does not sit that wait out.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_swarm.node.observer import SwarmObserver
    from edge_swarm.site.demo import RunConfig, RunResult
    from edge_swarm.site.launch import SwarmProcesses

POLL_S = 0.05  # between two looks at a condition nothing signals (files, other processes)
SETTLE_S = 90.0  # bound on the ledger settling after the last round (a 2-core box, loaded)

Tip = tuple[int, str]
Waiter = Callable[[Callable[[], bool], float], bool]  # (predicate, timeout) -> held?


def poll_until(cond: Callable[[], Any], timeout: float, interval: float = POLL_S) -> bool:
    """Whether `cond()` became true within `timeout` s (checked every `interval` s)."""
    deadline = time.monotonic() + timeout
    while not cond():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        # Nothing signals a change in another process or in a file: look again shortly.
        threading.Event().wait(min(interval, left))
    return True


def wait_until(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    """Poll `cond` until it returns a true value (returned) or `timeout` s pass
    (TimeoutError naming `what`)."""
    seen: list[Any] = [None]

    def check() -> bool:
        seen[0] = cond()
        return bool(seen[0])

    if not poll_until(check, timeout, poll):
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
    return seen[0]


# --------------------------------------------------------------------------- ledger files


def ledger_tip(path: Path) -> Tip | None:
    """(height, hash) of the last entry in a ledger file, or None if there is none yet (or
    the file cannot be read at this moment). Read-only and closed at once, so that it can
    watch the file of a running gateway without holding a lock on it."""
    if not Path(path).is_file():
        return None
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as db:
            row = db.execute("SELECT height, hash FROM entries ORDER BY height DESC LIMIT 1")
            found = row.fetchone()
    except sqlite3.Error:
        return None  # e.g. a gateway creating the file right now: look again later
    return None if found is None else (int(found[0]), str(found[1]))


def describe_tips(tips: Mapping[str, Tip | None]) -> str:
    return ", ".join(
        f"{name} at height {tip[0]} ({tip[1][:12]})" if tip else f"{name} has no entries"
        for name, tip in sorted(tips.items())
    )


def wait_for_same_tip(
    paths: Mapping[str, Path], timeout: float = SETTLE_S, wait: Waiter = poll_until
) -> Tip:
    """Until every ledger file in `paths` (name -> file) ends on the same entry; returns
    that tip. `wait` is how to wait for a predicate: `poll_until` by default, or an observer's
    `wait_for`, which keeps handling its messages meanwhile. AssertionError on timeout,
    naming each replica's height."""
    tips: dict[str, Tip | None] = {}

    def same() -> bool:
        tips.update({name: ledger_tip(path) for name, path in paths.items()})
        found = set(tips.values())
        return len(found) == 1 and None not in found

    if not wait(same, timeout):
        raise AssertionError(
            f"the ledger replicas did not reach the same tip within {timeout:g} s: "
            + describe_tips(tips)
        )
    return next(iter(tips.values()))  # type: ignore[return-value]


# --------------------------------------------------------------------------- swarm runs


def ledger_paths(procs: SwarmProcesses) -> dict[str, Path]:
    """Each gateway's ledger file, from its config."""
    from edge_swarm.node.config import load_config

    paths = {}
    for name, p in procs.gateways.items():
        path = load_config(p.config).ledger_path
        assert path is not None, name
        paths[name] = path
    return paths


def settle(
    cfg: RunConfig,
    procs: SwarmProcesses,
    obs: SwarmObserver,
    *,
    attesters: Iterable[str] | None = None,
    timeout: float = SETTLE_S,
) -> None:
    """Wait until the swarm has finished its rounds and its ledger is quiet: every agent of
    `attesters` (by default those included in the last round) has its attestation of the
    last round on the ledger (in a committee swarm, those on the last round's committee),
    and every gateway's ledger file ends on the same entry.

    To be called at the end of a `run_swarm` ``during`` callback: the site is still up, and
    `run_swarm` stops it right after. Bounded: RuntimeError if the rounds do not finish
    within ``cfg.timeout_s`` (naming the processes' state), AssertionError if the ledger
    does not settle within `timeout` s (naming who is missing, or each replica's height).
    """
    from edge_swarm.site.demo import _failure, _finished, last_round

    def last_done() -> bool:  # the budget's last round, or the last once the campaign ended
        return _finished(obs, last_round(obs, cfg.rounds))

    done = obs.wait_for(lambda: last_done() or bool(procs.failed()), cfg.timeout_s)
    last = last_round(obs, cfg.rounds)
    if not done or not _finished(obs, last):
        raise RuntimeError(_failure(f"the swarm did not finish {last} rounds", procs))
    expected = set(obs.rounds[last].included if attesters is None else attesters)
    if attesters is None:  # a committee swarm: only the round's committee attests
        committee = [
            e.payload["committee"]
            for e in list(obs.entries)
            if e.kind == "model_final" and e.payload["round"] == last and "committee" in e.payload
        ]
        if committee:
            expected &= set(committee[0])

    def attested() -> set[str]:
        return {
            e.author
            for e in list(obs.entries)
            if e.kind == "model_attest" and e.payload.get("round") == last
        }

    # An agent that merged a moment after the majority attests after model_final: that
    # entry is still in flight when the observer reports the round final.
    if not obs.wait_for(lambda: expected <= attested(), timeout):
        missing = sorted(expected - attested())
        raise AssertionError(
            f"no attestation of round {last} on the ledger from {missing} within {timeout:g} s"
        )
    # A replica that was down catches up from the others: wait for it while they all run.
    wait_for_same_tip(ledger_paths(procs), timeout, wait=obs.wait_for)


def run_settled(
    cfg: RunConfig,
    during: Callable[[SwarmProcesses, SwarmObserver], None] | None = None,
    *,
    attesters: Iterable[str] | None = None,
    timeout: float = SETTLE_S,
) -> RunResult:
    """`run_swarm(cfg, during=...)`, stopping the site only once it has settled (`settle`),
    so that the ledger files it leaves hold everything the run appended, on every replica."""
    from edge_swarm.site.demo import run_swarm

    def scenario(procs: SwarmProcesses, obs: SwarmObserver) -> None:
        if during is not None:
            during(procs, obs)
        settle(cfg, procs, obs, attesters=attesters, timeout=timeout)

    return run_swarm(cfg, during=scenario)


def dashboard_url(procs: SwarmProcesses, timeout: float = 60.0) -> str:
    """The URL gateway-1's dashboard serves on, from its log line ``dashboard on URL``. Runs
    give it port 0 (``RunConfig(dashboard_port=0)``): a port picked ahead by the test could
    be taken by another socket before the gateway binds it (seen: a flood test's dashboard
    request went to whatever had taken the port, and timed out)."""
    import re

    found = re.compile(r"dashboard on (http://\S+/)")

    def url() -> str | None:
        with contextlib.suppress(OSError):
            m = found.search(procs.gateway.log_path.read_text(errors="replace"))
            return m.group(1) if m else None
        return None

    return wait_until(url, timeout, "the gateway's dashboard line in its log")


def kill_once_finished(
    cfg: RunConfig, procs: SwarmProcesses, obs: SwarmObserver, nodes: Iterable[str]
) -> None:
    """Once the swarm has finished its rounds, SIGKILL the agents `nodes`: agents still
    running that will never report the last round (one frozen, one revoked), for which
    `run_swarm` would wait out its 10 s bound on the last telemetry. To be called at the end
    of a ``during`` callback. Kills nothing if the rounds do not finish within
    ``cfg.timeout_s``: the run then fails as it would have, naming the processes' state.
    Not before: an agent killed sooner is seen offline, and closes rounds without waiting."""
    finished = obs.wait_for(
        lambda: obs.final_round() >= cfg.rounds or bool(procs.failed()), cfg.timeout_s
    )
    if finished and obs.final_round() >= cfg.rounds:
        for node in nodes:
            procs.agents[node].kill()
