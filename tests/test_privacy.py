"""Privacy against fellow members without sockets (issue 18): the genesis policy and its
refusals, a whole secure-aggregation round between in-memory nodes (masks, seed shares,
reveals, dropouts), and the privacy the coordinator records against dp-accounting."""

from __future__ import annotations

import argparse
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_swarm.cli.privacy_options import privacy_policy
from edge_swarm.learn.model import ModelSpec
from edge_swarm.learn.train import LocalTraining
from edge_swarm.node.private_merge import PrivacyRecord, private_contributions
from edge_swarm.node.secure_rounds import (
    RevealsPending,
    SecureRounds,
    included_bits,
    parse_bits,
)
from edge_swarm.site.provision import SwarmParams
from edge_swarm.swarm import dp, ring_codec, secagg
from edge_swarm.swarm.codec import EnvelopeError
from edge_swarm.swarm.merge import MergeRule
from edge_swarm.swarm.privacy import PrivacyError, PrivacyPolicy, check_merge
from edge_swarm.swarm.rounds import Merge
from edge_swarm.trust.keyring import EncryptionKey
from ledger_lite import SigningKey

SWARM = "s"
HASH = "ab" * 32


# --------------------------------------------------------------------------- the policy


def test_policy_defaults_and_refusals() -> None:
    assert not PrivacyPolicy().active
    pol = PrivacyPolicy("secagg")
    assert pol.secagg and not pol.dp and pol.scale is not None
    # The scale lets max_agents clipped updates add up without wrapping the signed ring.
    assert pol.scale * pol.clip * pol.max_agents < 2**31
    with pytest.raises(PrivacyError, match="noise multiplier"):
        PrivacyPolicy("dp")
    with pytest.raises(PrivacyError, match="needs DP"):
        PrivacyPolicy("secagg", epsilon_budget=3.0)
    with pytest.raises(PrivacyError, match="one of"):
        PrivacyPolicy("secure")
    with pytest.raises(PrivacyError, match="wrap"):
        PrivacyPolicy("secagg", scale=1e12)
    with pytest.raises(PrivacyError, match="unknown keys"):
        PrivacyPolicy.from_params({"privacy": {"mode": "secagg", "typo": 1}})
    assert PrivacyPolicy.from_params({}) == PrivacyPolicy()
    again = PrivacyPolicy.from_params(
        {"privacy": PrivacyPolicy("dp", noise_multiplier=2).to_dict()}
    )
    assert again == PrivacyPolicy("dp", noise_multiplier=2)
    # Sample counts weigh without DP; under DP every update counts the same.
    assert pol.weight(338) > pol.weight(72)
    assert PrivacyPolicy("dp", noise_multiplier=1).weight(338) == 1.0


def test_secure_aggregation_with_a_robust_rule_is_refused_naming_both() -> None:
    rule = MergeRule("fedavgm", momentum=0.5, aggregator="median", f=2, mix="nnm")
    with pytest.raises(PrivacyError) as caught:
        check_merge(PrivacyPolicy("secagg"), rule.aggregation, rule.clip, "committee")
    text = str(caught.value)
    assert "'secagg'" in text and "nnm+median" in text and "--merge mean" in text
    with pytest.raises(PrivacyError, match="krum"):
        check_merge(PrivacyPolicy("dp", noise_multiplier=1), "krum", None, "all")
    with pytest.raises(PrivacyError, match="merge_by 'committee'"):
        check_merge(PrivacyPolicy("secagg"), "mean", None, "all")
    check_merge(PrivacyPolicy("secagg+dp", noise_multiplier=1), "mean", None, "committee")
    check_merge(PrivacyPolicy("dp", noise_multiplier=1), "mean", None, "all")
    with pytest.raises(PrivacyError, match="nnm\\+median"):
        SwarmParams(
            model=ModelSpec((64, 32, 10)),
            local=LocalTraining(),
            merge=rule,
            merge_by="committee",
            privacy=PrivacyPolicy("secagg"),
        )


def test_admin_init_refuses_secagg_with_nnm_median(tmp_path: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge_swarm", "admin", "init", "--swarm", "s", "--out",
         str(tmp_path / "a"), "--privacy", "secagg", "--merge", "nnm+median,f=1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "'secagg'" in out.stderr and "nnm+median" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "a" / "genesis.json").exists()


def test_a_genesis_without_privacy_is_unchanged() -> None:
    params = SwarmParams(model=ModelSpec((64, 32, 10)), local=LocalTraining(), merge=MergeRule())
    assert "privacy" not in params.to_dict()
    none = SwarmParams(
        model=ModelSpec((64, 32, 10)),
        local=LocalTraining(),
        merge=MergeRule(),
        privacy=PrivacyPolicy(),
    )
    assert none.to_dict() == params.to_dict()


def test_target_epsilon_picks_the_multiplier_and_a_budget_a_round_spends_is_refused() -> None:
    ns = argparse.Namespace(
        privacy="dp", clip=1.0, noise_multiplier=None, target_epsilon=3.0, dp_delta=1e-5,
        epsilon_budget=None,
    )  # fmt: skip
    pol = privacy_policy(ns, 20)
    assert dp.epsilon([pol.noise_multiplier] * 20, 1e-5) == pytest.approx(3.0, rel=0.01)
    ns.epsilon_budget = 0.01
    with pytest.raises(PrivacyError, match="spent by the first round"):
        privacy_policy(ns, 20)


# --------------------------------------------------------------------------- the accountant


def test_the_recorded_epsilon_matches_dp_accounting_run_directly() -> None:
    import dp_accounting

    pol = PrivacyPolicy("secagg+dp", noise_multiplier=6.678, epsilon_budget=3.5)
    record = PrivacyRecord(pol)
    seen = []
    for n in (8, 8, 6, 8, 7):  # agents whose noise each round's sum carried, of 8
        spent = record.record(n, 8)
        record.fold_final({"privacy": spent})  # what every gateway folds from the ledger
        seen.append(spent["z"])
        acc = dp_accounting.rdp.RdpAccountant()
        for z in seen:
            acc.compose(dp_accounting.GaussianDpEvent(z))
        assert spent["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), abs=1e-5)
        acc.compose(dp_accounting.GaussianDpEvent(pol.noise_multiplier))
        assert spent["epsilon_next"] == pytest.approx(acc.get_epsilon(1e-5), abs=1e-5)
    # Fewer agents than expected took their noise with them: a smaller multiplier.
    assert seen[2] == pytest.approx(6.678 * (6 / 8) ** 0.5, abs=1e-6)


# --------------------------------------------------------------------------- a round in memory


@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_included_bits_round_trip(flags: list[bool]) -> None:
    order = tuple(f"agent-{i:03d}" for i in range(len(flags)))
    chosen = {n for n, f in zip(order, flags, strict=True) if f}
    assert parse_bits(order, included_bits(order, chosen)) == chosen
    assert parse_bits(order, "zz") is None and parse_bits(order, 5) is None


class _Site:
    """n agents and one committee member, wired through a list of published messages."""

    def __init__(self, n: int, policy: PrivacyPolicy) -> None:
        self.names = [f"agent-{i:02d}" for i in range(1, n + 1)]
        enc = {a: EncryptionKey.generate() for a in self.names}
        self.sign = {a: SigningKey.generate() for a in self.names}
        members = {
            a: SimpleNamespace(role="agent", enc_pubkey=enc[a].public_hex, active_at=lambda t: True)
            for a in self.names
        }
        self.state = SimpleNamespace(members=members)
        self.sent: list[tuple[str, bytes]] = []
        publish = lambda topic, body: self.sent.append((topic, body))  # noqa: E731
        self.nodes = {
            a: SecureRounds(a, SWARM, policy, enc[a].private_bytes, self.sign[a].sign, publish)
            for a in self.names
        }
        self.member = SecureRounds("gateway-1", SWARM, policy, None, lambda b: b"", publish)
        for node in [*self.nodes.values(), self.member]:
            node.open_round(1, HASH, self.state, 0)  # type: ignore[arg-type]

    def deliver_shares(self) -> None:
        for topic, body in self.sent:
            if "/share/" in topic:
                to = topic.rsplit("/", 1)[1]
                assert self.nodes[to].offer_share(1, body) is None
        self.sent.clear()

    def reveal(self, who: list[str], included: list[str]) -> None:
        for a in who:
            assert self.nodes[a].reveal(1, {"included": included})
        for topic, body in self.sent:
            node = topic.rsplit("/", 1)[1]
            pub = lambda n: self.sign[n].public_hex  # noqa: E731
            assert self.member.offer_reveal(1, node, body, pub) is None
        self.sent.clear()


def _updates(names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {a: rng.normal(0, 0.05, 2410).astype(np.float32) for a in names}


@pytest.mark.parametrize(("dead", "bits"), [(0, 32), (2, 32), (2, 24)])
def test_a_secure_round_unmasks_the_exact_sum_despite_dead_agents(dead: int, bits: int) -> None:
    pol = PrivacyPolicy("secagg", bits=bits, max_agents=128, max_samples=1000)
    site = _Site(8, pol)
    deltas = _updates(site.names)
    masked, plain = {}, {}
    for a in site.names:
        body = site.nodes[a].masked_body(1, deltas[a], 100)
        assert body is not None and len(body) == 2410 * (3 if bits == 24 else 4)
        masked[a] = ring_codec.unpack(body, ring_codec.ring_codec(bits), 2410)
        clipped, _ = dp.clip(deltas[a].astype(np.float64), pol.clip)
        assert pol.scale is not None
        plain[a] = secagg.encode_fixed(clipped * pol.weight(100), scale=pol.scale, bits=bits)
    site.deliver_shares()
    alive = site.names[dead:]  # the first `dead` agents died after uploading
    site.reveal(alive, site.names)
    total = site.member.unmask(1, masked)
    expected = np.zeros(2410, dtype=np.uint64)
    for x in plain.values():
        expected = (expected + x) % 2**bits
    assert np.array_equal(total.astype(np.uint64), expected)  # bit for bit


def test_too_many_dead_agents_leave_the_round_stuck_with_the_reason() -> None:
    site = _Site(8, PrivacyPolicy("secagg"))
    masked = {
        a: np.frombuffer(site.nodes[a].masked_body(1, d, 50) or b"", dtype="<u4").astype(np.uint32)
        for a, d in _updates(site.names).items()
    }
    site.deliver_shares()
    site.reveal(site.names[5:], site.names)  # 5 of 8 died after uploading: 3 reveal
    with pytest.raises(RevealsPending, match="short of shares"):
        site.member.unmask(1, masked)
    why = site.member.stuck(1, set(site.names))
    assert "self-mask seed(s) short of shares" in why and "agent-01" in why


def test_an_agent_that_never_uploaded_is_unmasked_by_its_neighbours_pair_seeds() -> None:
    pol = PrivacyPolicy("secagg")
    site = _Site(6, pol)
    deltas = _updates(site.names, seed=3)
    masked = {}
    for a in site.names:
        body = site.nodes[a].masked_body(1, deltas[a], 10)
        assert body is not None
        if a != "agent-01":  # its upload never arrived: round_close leaves it out
            masked[a] = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    site.deliver_shares()
    included = sorted(masked)
    site.reveal(included, included)
    total = site.member.unmask(1, masked)
    assert pol.scale is not None
    mean = secagg.decode_fixed(total, scale=pol.scale, bits=32) / (5 * pol.weight(10))
    want = np.mean([dp.clip(deltas[a].astype(np.float64), 1.0)[0] for a in included], axis=0)
    # Only fixed-point rounding differs: at most half a step per agent, 5 agents.
    assert np.max(np.abs(mean - want)) <= 5 * 0.5 / (pol.scale * 5 * pol.weight(10))


def test_the_merge_sees_only_the_weighted_mean() -> None:
    pol = PrivacyPolicy("secagg")
    site = _Site(4, pol)
    deltas = _updates(site.names, seed=5)
    counts = {"agent-01": 72, "agent-02": 338, "agent-03": 239, "agent-04": 246}
    masked = {
        a: np.frombuffer(site.nodes[a].masked_body(1, deltas[a], counts[a]) or b"", dtype="<u4")
        for a in site.names
    }
    site.deliver_shares()
    site.reveal(site.names, site.names)
    inbox = SimpleNamespace(
        take_raw=lambda rnd, inc, n: {a: masked[a].astype(np.uint32) for a, _ in inc}
    )
    action = Merge(1, tuple((a, "00" * 32) for a in site.names), counts)
    contribs, weights = private_contributions(pol, inbox, site.member, action)
    assert [c.node for c in contribs] == ["secure-sum"]
    assert weights == pytest.approx({a: counts[a] / sum(counts.values()) for a in counts})
    clipped = {a: dp.clip(d.astype(np.float64), pol.clip)[0] for a, d in deltas.items()}
    want = sum(counts[a] * clipped[a] for a in counts) / sum(counts.values())
    assert np.max(np.abs(contribs[0].delta - want)) < 1e-5


def test_bad_shares_and_reveals_are_dropped_with_a_reason() -> None:
    site = _Site(4, PrivacyPolicy("secagg"))
    for a in site.names:
        site.nodes[a].masked_body(1, np.zeros(10, np.float32), 1)
    topic, body = next((t, b) for t, b in site.sent if t.endswith("/agent-02"))
    sender = body  # a share for agent-02 offered to agent-03 is not for it
    assert site.nodes["agent-03"].offer_share(1, sender) is not None
    assert site.nodes["agent-02"].offer_share(1, b"garbage") is not None
    assert site.nodes["agent-02"].offer_share(2, body) is None  # held for the next round
    assert site.nodes["agent-02"].offer_share(9, body) is not None  # not for one far ahead
    pub = lambda n: site.sign[n].public_hex  # noqa: E731
    assert "signature" in (site.member.offer_reveal(1, "agent-01", b"x" * 100, pub) or "")
    assert site.member.offer_reveal(7, "agent-01", b"x" * 100, pub) is not None


def test_a_masked_body_of_the_wrong_size_is_refused() -> None:
    values = np.arange(10, dtype=np.uint32) * 1_000_003 % 2**24
    body = ring_codec.pack(values, ring_codec.CODEC_MASKED24)
    assert np.array_equal(ring_codec.unpack(body, ring_codec.CODEC_MASKED24, 10), values)
    with pytest.raises(EnvelopeError, match="masked body"):
        ring_codec.unpack(body[:-1], ring_codec.CODEC_MASKED24, 10)
    with pytest.raises(EnvelopeError, match="masked body"):
        ring_codec.unpack(body, ring_codec.CODEC_MASKED, 10)
    assert ring_codec.unpack(body, 2, 10) is None  # int8: not a ring


def test_a_second_open_of_a_round_keeps_the_first_graph_and_its_shares() -> None:
    # Two leaders a moment apart can both append round_open; the first counts everywhere.
    site = _Site(5, PrivacyPolicy("secagg"))
    node = site.nodes["agent-01"]
    first = node.rounds[1]
    assert node.masked_body(1, np.zeros(2410, np.float32), 3) is not None
    node.open_round(1, "cd" * 32, site.state, 0)  # type: ignore[arg-type]
    assert node.rounds[1] is first and node.rounds[1].round_hash == HASH
    assert "agent-01" in node.rounds[1].held


def test_the_dashboard_and_the_audit_carry_the_privacy_spent() -> None:
    from edge_swarm.dashboard.views import RoundView, summarize
    from edge_swarm.swarm.audit import RoundAudit

    spent = {"mode": "dp", "z": 2.0, "n": 4, "expected": 4, "delta": 1e-5, "epsilon": 1.2345}
    a = RoundAudit(3, model_hash="ab" * 32, privacy=spent)
    assert RoundView.from_audit(a, []).epsilon == pytest.approx(1.2345)
    assert a.to_dict()["privacy"] == spent
    entry = SimpleNamespace(
        kind="model_final",
        payload={"round": 3, "model_hash": "ab" * 32, "attesters": [], "privacy": spent},
    )
    assert "epsilon 1.234" in summarize(entry)  # type: ignore[arg-type]


def test_a_reveal_goes_again_until_its_round_is_final() -> None:
    # A gateway restarted after the reveals came lost them with its memory.
    site = _Site(3, PrivacyPolicy("secagg"))
    node = site.nodes["agent-01"]
    node.masked_body(1, np.zeros(2410, np.float32), 5)
    site.sent.clear()
    assert node.reveal(1, {"included": site.names})
    first = site.sent[-1]
    assert node.last_reveal is not None
    sent_at = node.last_reveal[3]
    assert not node.reveal_again(0, sent_at + 1.0)  # not yet
    assert node.reveal_again(0, sent_at + 6.0)  # round 1 still not final: the same bytes again
    assert site.sent[-1] == first
    assert not node.reveal_again(1, sent_at + 20.0)  # final: done with it
    assert node.last_reveal is None
