"""Validation on every site (docs/VALIDATION.md), the pure parts and the agent's own path:
the held-out slice (learn/data.py), the signed rows that carry each site's score
(ledger_lite/commits.py), the scores a device keeps (node/validation.py), the serving gate
(node/serving.py), and that the slice never reaches training in the real agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_swarm.learn.data import holdout, holdout_mask, standard_workload, write_partitions
from edge_swarm.learn.model import init_params
from edge_swarm.node.serving import gate
from edge_swarm.node.validation import SiteValidation, split_site_data
from ledger_lite.commits import (
    VAL_KEYS,
    commit_payload,
    commit_row,
    commits_problem,
    folded_problem,
    row_metrics,
    row_tx,
    val_metrics,
    val_metrics_problem,
)
from ledger_lite.keys import SigningKey
from ledger_lite.keys import verify as verify_sig

# --------------------------------------------------------------------------- the slice


def _rows(n: int, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 4, n).astype(np.int64)


def _keys(X: np.ndarray, y: np.ndarray) -> list[bytes]:
    return [
        X[i].astype("<f4").tobytes() + y[i : i + 1].astype("<i8").tobytes() for i in range(len(y))
    ]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 80), fraction=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_the_slice_is_fixed_by_each_sample_not_by_its_place(
    n: int, fraction: float, seed: int
) -> None:
    X, y = _rows(n, seed=seed)
    mask = holdout_mask(X, y, fraction, "agent-01|0")
    assert (~mask).sum() >= 1  # a small site still trains on something
    assert np.array_equal(mask, holdout_mask(X, y, fraction, "agent-01|0"))  # a restart
    perm = np.random.default_rng(seed).permutation(n)  # a reordered data directory
    assert np.array_equal(holdout_mask(X[perm], y[perm], fraction, "agent-01|0"), mask[perm])
    X2, y2 = _rows(7, seed=seed + 1)  # new files: no old sample changes side
    grown = holdout_mask(np.concatenate([X, X2]), np.concatenate([y, y2]), fraction, "agent-01|0")
    if mask.sum() < n - 1:  # unless one sample was kept back from a slice of all of them
        assert np.array_equal(grown[:n], mask)
    h = holdout(X, y, fraction, "agent-01|0")
    assert len(h.y_train) + len(h.y_val) == n
    assert not set(_keys(h.X_train, h.y_train)) & set(_keys(h.X_val, h.y_val))


def test_duplicates_land_on_one_side_and_the_fraction_is_about_right() -> None:
    X, y = _rows(2000)
    X[1000:], y[1000:] = X[:1000], y[:1000]  # every sample twice
    mask = holdout_mask(X, y, 0.2, "agent-02|0")
    assert np.array_equal(mask[:1000], mask[1000:])
    assert 0.16 < mask.mean() < 0.24
    assert not holdout_mask(X, y, 0.0, "k").any()
    assert not np.array_equal(mask, holdout_mask(X, y, 0.2, "agent-03|0"))  # per device
    with pytest.raises(ValueError):
        holdout_mask(X, y, 1.0, "k")


def test_the_standard_workloads_sites_keep_a_slice_and_say_when_it_is_small(
    caplog: pytest.LogCaptureFixture,
) -> None:
    X, y = _rows(6)
    with caplog.at_level("WARNING"):
        Xt, yt, val = split_site_data({"val_fraction": 0.5, "init_seed": 0}, "tiny", X, y)
    assert len(yt) >= 1 and val.n == 6 - len(yt)
    assert "too coarse" in caplog.text
    Xt, yt, val = split_site_data({"init_seed": 0}, "old-swarm", X, y)  # no val_fraction
    assert len(yt) == 6 and val.n == 0 and val.telemetry() == {}
    with pytest.raises(SystemExit, match="val_fraction"):
        split_site_data({"val_fraction": "0.2"}, "a", X, y)
    with pytest.raises(SystemExit, match="serve_margin"):
        split_site_data({"val_fraction": 0.2, "serve_margin": -1}, "a", X, y)


def test_features_are_taken_of_both_parts_and_split_again() -> None:
    X, y = _rows(50)
    Xt, yt, val = split_site_data({"val_fraction": 0.3}, "a", X, y, lambda A: A * 2 + 1)
    h = holdout(X, y, 0.3, "a|0")
    assert np.array_equal(Xt, h.X_train * 2 + 1) and np.array_equal(val.X_val, h.X_val * 2 + 1)


# --------------------------------------------------------------------------- scores


def test_a_site_scores_each_final_model_and_reports_the_base_of_a_round() -> None:
    from edge_swarm.learn.model import ModelSpec

    spec = ModelSpec((3, 4))
    X, y = _rows(40)
    _, _, val = split_site_data({"val_fraction": 0.5, "serve_margin": 0.05}, "a", X, y)
    assert val.serve_margin == 0.05
    p0, p1 = init_params(spec, 0), init_params(spec, 1)
    acc = val.score(spec, p1, 3)
    assert acc is not None and 0 <= acc <= 1 and val.scores == {3: acc}
    rep = val.report(spec, p1, 3)
    assert rep == {"val_acc": acc, "val_n": val.n, "val_round": 3}
    assert val_metrics_problem(rep) is None
    val.report(spec, p0, 0)  # round 1's base: the initial model
    assert set(val.scores) == {0, 3} and val.telemetry()["val_round"] == 3
    assert SiteValidation.none().report(spec, p0, 0) == {}


# --------------------------------------------------------------------------- rows


finite = st.floats(0.0, 1.0, allow_nan=False)
metrics_st = st.fixed_dictionaries(
    {"val_acc": finite, "val_n": st.integers(1, 10**6), "val_round": st.integers(0, 3)}
)
KEY = SigningKey.generate()


@settings(max_examples=40, deadline=None)
@given(metrics=st.one_of(st.just({}), metrics_st), n=st.integers(0, 10**6))
def test_a_row_carries_what_its_agent_signed_and_old_rows_are_unchanged(
    metrics: dict[str, Any], n: int
) -> None:
    from ledger_lite import make_tx

    payload = commit_payload(4, "agent-01", "ab" * 32, n, metrics)
    assert folded_problem(payload, "agent-01") is None
    tx = make_tx(KEY, "s", "delta_commit", "agent-01", payload, 1_000)
    row = commit_row(tx)
    assert len(row) == (6 if metrics else 5)  # no metrics: the row of old
    assert commits_problem([row]) is None
    assert row_metrics(row) == metrics
    back = row_tx("s", 4, row)
    assert back.payload == payload
    assert verify_sig(KEY.public_hex, back.signing_bytes(), bytes.fromhex(back.sig))
    if metrics:  # the coordinator cannot strip or change a site's report
        stripped = row_tx("s", 4, row[:5])
        assert not verify_sig(KEY.public_hex, stripped.signing_bytes(), bytes.fromhex(tx.sig))
        changed = row_tx("s", 4, [*row[:5], {**metrics, "val_acc": 1 - metrics["val_acc"] / 2}])
        if changed.payload != payload:
            assert not verify_sig(KEY.public_hex, changed.signing_bytes(), bytes.fromhex(tx.sig))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(m=st.one_of(json_values, st.dictionaries(st.sampled_from(VAL_KEYS), json_values)))
def test_row_metrics_checks_never_raise_and_accept_only_numbers(m: Any) -> None:
    why = val_metrics_problem(m)
    assert why is None or isinstance(why, str)
    if why is None:
        assert set(m) == set(VAL_KEYS) and 0 <= m["val_acc"] <= 1 and m["val_n"] >= 1
    row = ["agent-01", "ab" * 32, 3, 5, "cd" * 64, m]
    assert (commits_problem([row]) is None) == (why is None)
    if isinstance(m, dict):
        assert val_metrics(m) in ({}, m)


def test_rows_of_other_shapes_are_refused() -> None:
    base = ["agent-01", "ab" * 32, 3, 5, "cd" * 64]
    good = {"val_acc": 0.5, "val_n": 3, "val_round": 1}
    assert commits_problem([base]) is None and commits_problem([[*base, good]]) is None
    for bad in (
        [*base, {}],  # a sixth element only with metrics
        [*base, {**good, "data": [1, 2]}],  # never data
        [*base, {**good, "val_acc": 1.5}],
        [*base, {**good, "val_n": 0}],
        [*base, good, good],
        base[:4],
    ):
        assert commits_problem([bad]) is not None, bad
    payload = commit_payload(1, "a", "ab" * 32, 3, good)
    assert folded_problem({**payload, "metrics": {"accuracy": 1.0}}, "a") is not None
    assert folded_problem({**payload, "extra": 1}, "a") is not None
    # A commit with training metrics besides: only the validation part is folded.
    assert val_metrics({**good, "loss": 0.3, "accuracy": 1.0}) == good
    assert val_metrics({"val_acc": 0.5}) == {}


# --------------------------------------------------------------------------- the gate


def test_the_gate_holds_back_only_a_model_worse_by_more_than_the_margin() -> None:
    scores = {1: 0.90, 2: 0.89, 3: 0.50, 4: 0.95}
    assert gate(1, scores, None, 0.02) is None  # nothing served yet
    assert gate(2, scores, 1, 0.02) is None  # within the margin
    held = gate(3, scores, 2, 0.02)
    assert held is not None and (held.round, held.served_round) == (3, 2)
    assert "fleet cmd rollout --round 3" in held.reason(40) and "0.5000" in held.reason(40)
    assert gate(4, scores, 2, 0.02) is None  # better again: it goes out
    assert gate(5, scores, 2, 0.02) is None  # no score (no slice): no evidence against it
    assert gate(3, scores, 2, 0.5) is None  # a wide margin lets it through


# --------------------------------------------------------------------------- the real agent


def test_the_agent_never_trains_on_its_held_out_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's own path from its data file to ``train_local``: what reaches training is
    exactly the data minus the slice (by content), for every round."""
    from edge_swarm.node import agent as agent_mod
    from edge_swarm.node.config import BrokerConfig, load_config
    from edge_swarm.site.demo import DEFAULT_LOCAL, DEFAULT_MERGE, model_spec
    from edge_swarm.site.provision import SwarmParams, provision_swarm
    from edge_swarm.swarm import protocol as P

    w = standard_workload()
    paths = write_partitions(w, 2, 0.5, 0, tmp_path / "data")
    params = SwarmParams(
        model=model_spec(w.n_features, w.n_classes, (8,)),
        local=DEFAULT_LOCAL,
        merge=DEFAULT_MERGE,
        security="signed",
        val_fraction=0.25,
    )
    layout = provision_swarm(
        tmp_path / "site", "val", params, paths[:2], BrokerConfig("127.0.0.1", 1)
    )
    cfg = load_config(layout.agent_configs["agent-01"])
    agent = agent_mod.Agent(cfg)
    agent._start_from_genesis(params.to_dict())
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Stop(Exception):
        pass

    def recorder(spec: Any, base: Any, X: np.ndarray, y: np.ndarray, *a: Any) -> Any:
        seen.append((X.copy(), y.copy()))
        raise Stop  # what happens after training is not this test's

    monkeypatch.setattr(agent_mod, "train_local", recorder)
    for rnd in (1, 2):
        with pytest.raises(Stop):
            agent._train(P.Train(rnd, agent.holder.hash))
    data = np.load(paths[0])
    everything = _keys(data["X"].astype(np.float32), data["y"])
    held = set(_keys(agent.val.X_val, agent.val.y_val))
    assert agent.val.n > 0 and len(seen) == 2
    for X, y in seen:
        trained = _keys(X, y)
        assert not held & set(trained)
        assert sorted(trained + _keys(agent.val.X_val, agent.val.y_val)) == sorted(everything)


# --------------------------------------------------------------------------- the ledger


def test_every_replica_verifies_each_sites_report_in_the_round_close(tmp_path: Path) -> None:
    from ledger_lite import errors as E

    from .test_ledger_state import assert_refused
    from .test_ledger_support import Swarm, round_open

    s = Swarm(tmp_path / "ledger.db")
    for node, role in (("gw1", "gateway"), ("a1", "agent"), ("a2", "agent")):
        s.enroll(node, role)
    s.submit("gw1", "round_open", round_open())
    rep = {"val_acc": 0.8125, "val_n": 16, "val_round": 0}

    def row(node: str, metrics: dict[str, Any]) -> list[Any]:
        return commit_row(s.tx(node, "delta_commit", commit_payload(1, node, "e" * 64, 9, metrics)))

    def close(rows: list[list[Any]]) -> dict[str, Any]:
        return {"round": 1, "included": [r[0] for r in rows], "reason": "all", "commits": rows}

    lying = row("a1", rep)
    lying[5] = {**rep, "val_acc": 0.99}  # the coordinator improves a site's score
    assert_refused(s, E.BAD_SIGNATURE, lambda: s.submit("gw1", "round_close", close([lying])))
    stripped = row("a1", rep)[:5]  # or drops it
    assert_refused(s, E.BAD_SIGNATURE, lambda: s.submit("gw1", "round_close", close([stripped])))
    rows = [row("a1", rep), row("a2", {})]  # a 6-row and an old 5-row side by side
    e = s.submit("gw1", "round_close", close(rows))
    assert [len(r) for r in e.payload["commits"]] == [6, 5]
    s.ledger.close()
    from ledger_lite.verify import verify_file

    assert verify_file(tmp_path / "ledger.db").ok


def test_an_attack_may_start_at_a_round() -> None:
    """The harness that makes a swarm worse midway (the serving gate's end-to-end test)."""
    from edge_swarm.learn.poison import Attack

    a = Attack.from_dict({"name": "sign_flip", "strength": 2.0, "from_round": 3})
    assert a.from_round == 3 and Attack.from_dict(a.to_dict()) == a
    assert Attack.from_dict({"name": "scale"}).to_dict() == {"name": "scale", "strength": 10.0}
    for bad in ({"name": "scale", "from_round": "3"}, {"name": "scale", "when": 3}):
        with pytest.raises(ValueError):
            Attack.from_dict(bad)


def test_new_data_joins_each_side_by_its_hash_and_no_old_sample_moves(tmp_path: Path) -> None:
    """With node/local_data.py: the slice is taken again from every new read of the data."""
    from edge_swarm.node.local_data import LocalData

    X, y = _rows(300)
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "a.npz", X=X[:200], y=y[:200])
    data = LocalData(tmp_path / "d")
    val = SiteValidation.at_genesis({"val_fraction": 0.25, "init_seed": 7}, "agent-01")
    data.prepare = val.holding_out(lambda A, b: (A, b))
    X_train, y_train = data.prepare(*data.raw)
    before_val, before_train = set(_keys(val.X_val, val.y_val)), set(_keys(X_train, y_train))
    np.savez(tmp_path / "d" / "b.npz", X=X[200:], y=y[200:])  # new records arrive
    grown = data.refresh()
    assert grown is not None
    after_val, after_train = set(_keys(val.X_val, val.y_val)), set(_keys(*grown))
    assert before_val <= after_val and before_train <= after_train  # nobody changed side
    assert not after_val & after_train and len(after_val) + len(after_train) == 300
    assert val.n > len(before_val)
