"""Secure aggregation and DP in a real swarm (issue 18): agent and gateway processes, a real
broker, sealed deltas, ``privacy`` fixed at genesis.

Each agent writes the integer update it masked, and each committee member what it received
and what it unmasked, into ``EDGE_SWARM_SECAGG_TRACE`` (a test hook of
node/secure_rounds.py), so that the tests compare the committee's view with the truth:
every upload the committee holds looks uniform, and the unmasked sum is the plain integer
sum, bit for bit. Agents are killed (SIGKILL) once their delta_commit has reached the
broker, i.e. after uploading; more dead than the threshold allows fails the round safe.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from edge_swarm.io.mqtt import Message
from edge_swarm.swarm.committee import draw_committee
from edge_swarm.swarm.messages import MessageError, Submission
from edge_swarm.swarm.privacy import PrivacyPolicy

from .test_e2e import BROKERS, entries_of, need, small
from .waiting import run_settled

pytestmark = pytest.mark.network

RING = 2**32


def _cfg(tmp_path: Path, broker: str, **kw: Any) -> Any:
    base = small(
        tmp_path / "run",
        broker,
        n_agents=8,
        rounds=3,
        merge_by="committee",
        committee_k=2,
        privacy=PrivacyPolicy("secagg"),
        round_deadline_s=12.0,  # a loaded 2-core machine: the agents still make it
        attest_timeout_s=6.0,
    )
    return replace(base, **kw)


@pytest.fixture
def trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "trace"
    out.mkdir()
    monkeypatch.setenv("EDGE_SWARM_SECAGG_TRACE", str(out))  # the nodes inherit it
    return out


def _vec(path: Path) -> np.ndarray:
    return np.load(path).astype(np.uint64)


def _plain_sum(trace: Path, rnd: int, nodes: list[str]) -> np.ndarray:
    total = np.zeros_like(_vec(trace / f"x-{rnd}-{nodes[0]}.npy"))
    for n in nodes:
        total = (total + _vec(trace / f"x-{rnd}-{n}.npy")) % RING
    return total


def _uniform_p(values: np.ndarray) -> float:
    """The smaller p of a chi-square test on the top 4 bits and a KS test on the whole
    value against the uniform distribution over the ring."""
    counts = np.bincount((values >> 28).astype(np.int64), minlength=16)
    chi = stats.chisquare(counts).pvalue
    ks = stats.kstest(values.astype(np.float64) / RING, "uniform").pvalue
    return float(min(chi, ks))


@pytest.mark.parametrize("broker", BROKERS)
def test_the_committee_sees_uniform_noise_and_unmasks_the_exact_integer_sum(
    tmp_path: Path, trace: Path, broker: str
) -> None:
    need(broker)
    cfg = _cfg(tmp_path, broker)
    result = run_settled(cfg)
    entries = entries_of(result)
    agents = sorted(result.layout.agent_configs)
    finals = [e.payload for e in entries if e.kind == "model_final"]
    assert [p["round"] for p in finals] == [1, 2, 3]
    assert not [p for p in finals if "abandoned" in p], finals
    for rnd in (1, 2, 3):
        sums = sorted(trace.glob(f"sum-{rnd}-*.npy"))
        assert sums, f"no committee member unmasked round {rnd}"
        want = _plain_sum(trace, rnd, agents)
        for path in sums:  # the gateway and the drawn agents that merged: all the same bits
            assert np.array_equal(_vec(path), want), path.name
        for a in agents:
            view = _vec(trace / f"view-{rnd}-{a}.npy")
            assert view.shape == (2410,)
            # At 1e-6 a truly uniform vector fails once in a million; 24 checks per run.
            assert _uniform_p(view) > 1e-6, (rnd, a)
            assert _uniform_p(_vec(trace / f"x-{rnd}-{a}.npy")) < 1e-12  # the truth is not
    # The round's model is the merge of that sum: light agents ended on the final bytes.
    closes = [e.payload for e in entries if e.kind == "round_close"]
    assert all(len(p["included"]) == 8 and "included_bits" in p for p in closes)
    opens = [e.payload for e in entries if e.kind == "round_open"]
    assert all("agents_bits" in p for p in opens)
    assert all(set(p["merge"]["weights"]) == set(agents) for p in finals)


def _kill_after_upload(
    rnd: int, how_many: int, gateways: set[str], k: int
) -> tuple[Any, dict[str, Any]]:
    """A `during` that kills ``how_many`` agents off round ``rnd``'s committee once their
    delta_commit of that round reached the broker; its dict says whom it killed."""
    killed: dict[str, Any] = {}

    def during(procs: Any, obs: Any) -> None:
        commits: set[str] = set()
        handle, submit = obs._handle, obs.topics.ledger_submit()

        def watch(msg: Message) -> None:  # the observer, also reading ledger/submit
            if msg.topic != submit:
                handle(msg)
                return
            try:
                tx = Submission.decode(msg.payload).tx
            except MessageError:
                return
            p = tx.get("payload") or {}
            if tx.get("kind") == "delta_commit" and p.get("round") == rnd:
                commits.add(str(tx.get("author")))

        obs._handle = watch
        obs.mqtt.subscribe(submit, qos=1)
        opened = lambda: [e for e in obs.entries if e.kind == "round_open"]  # noqa: E731
        assert obs.wait_for(lambda: len(opened()) >= rnd, 120), f"round {rnd} never opened"
        open_entry = opened()[rnd - 1]
        agents = set(procs.agents)
        members = set(draw_committee(open_entry.hash, agents, gateways, k).members)
        victims = sorted(agents - members)[:how_many]
        assert obs.wait_for(lambda: set(victims) <= commits, 120), f"no commits of {victims}"
        for v in victims:
            procs.agents[v].kill()  # SIGKILL, after its upload and its commit
        killed["nodes"] = victims

    return during, killed


def test_two_agents_killed_after_uploading_the_round_completes_with_the_exact_sum(
    tmp_path: Path, trace: Path
) -> None:
    # The gateway alone merges (k = 0): drawn onto round 3's committee, the dead would cost
    # it its quorum (a committee's known weak spot, docs/COMMITTEE.md), not secure aggregation.
    cfg = _cfg(tmp_path, "embedded", committee_k=0)
    during, killed = _kill_after_upload(2, 2, {"gateway-1"}, cfg.committee_k)
    result = run_settled(cfg, during)
    entries = entries_of(result)
    agents = sorted(result.layout.agent_configs)
    finals = {e.payload["round"]: e.payload for e in entries if e.kind == "model_final"}
    assert sorted(finals) == [1, 2, 3]
    assert "abandoned" not in finals[2], finals[2]
    # Their masked updates were in: their self seeds came back from their neighbours' shares.
    close2 = next(e.payload for e in entries if e.kind == "round_close" and e.payload["round"] == 2)
    assert close2["included"] == agents
    want = _plain_sum(trace, 2, agents)
    assert np.array_equal(_vec(trace / "sum-2-gateway-1.npy"), want)
    # The next round goes on with the six left (the dead are offline: not in its graph).
    close3 = next(e.payload for e in entries if e.kind == "round_close" and e.payload["round"] == 3)
    assert close3["included"] == sorted(set(agents) - set(killed["nodes"]))
    assert "abandoned" not in finals[3]
    assert np.array_equal(
        _vec(trace / "sum-3-gateway-1.npy"), _plain_sum(trace, 3, close3["included"])
    )


def test_more_dead_than_the_threshold_fails_the_round_safe_and_the_next_goes_on(
    tmp_path: Path, trace: Path
) -> None:
    # A committee of the gateway alone (k = 0), so that the dead are never its members.
    cfg = _cfg(tmp_path, "embedded", committee_k=0)
    during, killed = _kill_after_upload(2, 5, {"gateway-1"}, 0)
    result = run_settled(cfg, during)
    entries = entries_of(result)
    finals = {e.payload["round"]: e.payload for e in entries if e.kind == "model_final"}
    assert sorted(finals) == [1, 2, 3]
    why = finals[2].get("abandoned", "")
    assert why.startswith("secure aggregation failed safe") and "short of shares" in why, why
    assert finals[2]["model_hash"] == finals[1]["model_hash"]  # no model change
    assert not list(trace.glob("sum-2-*.npy"))  # nothing was unmasked
    assert "abandoned" not in finals[3]
    alive = sorted(set(result.layout.agent_configs) - set(killed["nodes"]))
    close3 = next(e.payload for e in entries if e.kind == "round_close" and e.payload["round"] == 3)
    assert close3["included"] == alive
    assert finals[3]["model_hash"] != finals[2]["model_hash"]


def test_a_dp_swarm_records_epsilon_and_stops_when_its_budget_is_spent(
    tmp_path: Path, trace: Path
) -> None:
    import dp_accounting

    from edge_swarm.swarm import dp

    z = 2.0
    budget = (dp.epsilon([z] * 3, 1e-5) + dp.epsilon([z] * 4, 1e-5)) / 2  # room for 3 rounds
    policy = PrivacyPolicy("secagg+dp", noise_multiplier=z, epsilon_budget=budget)
    cfg = _cfg(tmp_path, "embedded", n_agents=4, rounds=10, committee_k=0, privacy=policy)
    result = run_settled(cfg)
    entries = entries_of(result)
    finals = [e.payload for e in entries if e.kind == "model_final"]
    assert [p["round"] for p in finals] == [1, 2, 3]
    acc = dp_accounting.rdp.RdpAccountant()
    for p in finals:
        spent = p["privacy"]
        assert spent["n"] == spent["expected"] == 4 and spent["z"] == z
        acc.compose(dp_accounting.GaussianDpEvent(spent["z"]))
        assert spent["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), abs=1e-5)
    ends = [e.payload for e in entries if e.kind == "campaign" and e.payload.get("op") == "end"]
    assert ends and ends[-1]["reason"].startswith("privacy budget spent"), ends
    assert finals[-1]["privacy"]["epsilon"] <= budget < finals[-1]["privacy"]["epsilon_next"]
    # The auditor sees the privacy spent round by round.
    audit = subprocess.run(
        [sys.executable, "-m", "edge_swarm", "audit", str(result.layout.ledger_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stderr
    assert "differential privacy spent" in audit.stdout
    for p in finals:
        assert f"{p['privacy']['epsilon']:.3f}" in audit.stdout


def test_a_gateway_killed_as_the_round_closes_unmasks_it_once_restarted(
    tmp_path: Path, trace: Path
) -> None:
    # The one gateway is the committee; it dies as round 2 closes, before the agents'
    # reveals reach it, and comes back with nothing of them in memory: the agents send their
    # reveals again until the round is final, and their kept deltas when asked.
    from .test_e2e_faults import DOWNTIME_S, pause

    cfg = _cfg(tmp_path, "embedded", n_agents=4, committee_k=0)

    def during(procs: Any, obs: Any) -> None:
        closed = lambda: any(  # noqa: E731
            e.kind == "round_close" and e.payload["round"] == 2 for e in list(obs.entries)
        )
        assert obs.wait_for(closed, 120), "round 2 never closed"
        gateway = procs.gateways["gateway-1"]
        gateway.freeze()  # at once: nothing more reaches its memory
        gateway.kill()
        pause(obs, DOWNTIME_S)  # the fault: how long it stays down
        gateway.start("gateway")

    result = run_settled(cfg, during)
    entries = entries_of(result)
    agents = sorted(result.layout.agent_configs)
    finals = {e.payload["round"]: e.payload for e in entries if e.kind == "model_final"}
    assert sorted(finals) == [1, 2, 3]
    assert not [p for p in finals.values() if "abandoned" in p], finals
    assert np.array_equal(_vec(trace / "sum-2-gateway-1.npy"), _plain_sum(trace, 2, agents))
