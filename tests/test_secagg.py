"""Secure aggregation core: a graph everyone draws alike, keys both ends agree on, a PRG pinned
to AES, an unmasked sum equal to the plain sum bit for bit whoever drops out, reveals that
never expose an included update, and wire messages that refuse garbage.

Microbenchmark (``test_mask_and_unmask_are_fast``; best of 50, a shared 2-core x86-64 VM,
Python 3.11, numpy 2.4, cryptography 51): masking 2,410 coordinates takes 0.06 ms at degree 6
and 0.13 ms at degree 14. Unmasking 8 uploads (degree 6) takes 0.08 ms, 0.15 ms with 2 dropped;
100 uploads (degree 14) 1.1 ms, 2.1 ms with 10 dropped. Rebuilding one self seed from all 15
shares at degree 14 (pycryptodome's pure-Python GF(2^128), twice for the consistency check)
takes about 5 ms, so the committee spends about 0.5 s per round on seeds at 100 agents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_swarm.swarm import dp
from edge_swarm.swarm.secagg import (
    SEALED_LEN,
    SHARE_LEN,
    PairKeys,
    Reveal,
    SecAggError,
    ShareBundle,
    add_mod,
    combine_seed,
    decode_fixed,
    default_degree,
    default_threshold,
    encode_fixed,
    mask,
    max_scale,
    needed_reveals,
    neighbours,
    new_self_seed,
    open_share,
    pair_keys,
    prg,
    seal_share,
    share_aad,
    split_seed,
    unmask_sum,
)
from edge_swarm.trust.keyring import EncryptionKey

H1 = hashlib.sha256(b"round_open 1").hexdigest()
H2 = hashlib.sha256(b"round_open 2").hexdigest()
FLEET = [f"agent-{i:02d}" for i in range(8)]
SWARM = "clinic-a"

ids = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)


def edge(i: str, j: str) -> tuple[str, str]:
    return (i, j) if i < j else (j, i)


# --------------------------------------------------------------------------- graph


@given(
    h=hashes,
    agents=st.lists(ids, min_size=1, max_size=30, unique=True),
    degree=st.integers(0, 40),
    data=st.data(),
)
def test_graph_is_symmetric_regular_and_order_free(h, agents, degree, data) -> None:
    g = neighbours(h, agents, degree)
    assert sorted(g) == sorted(agents)
    n = len(agents)
    for a, nb in g.items():
        assert list(nb) == sorted(set(nb)) and a not in nb
        assert all(a in g[b] for b in nb)
        assert len(nb) == (n - 1 if degree >= n - 1 else 2 * (degree // 2))
    shuffled = data.draw(st.permutations(agents))
    assert neighbours(h, shuffled + shuffled[:3], degree) == g


def test_graph_is_a_connected_ring_that_the_hash_reshuffles() -> None:
    fleet = [f"n{i:03d}" for i in range(100)]
    g1, g2 = neighbours(H1, fleet, 14), neighbours(H2, fleet, 14)
    assert g1 != g2
    seen, todo = {fleet[0]}, [fleet[0]]
    while todo:
        for b in g1[todo.pop()]:
            if b not in seen:
                seen.add(b)
                todo.append(b)
    assert seen == set(fleet)


def test_graph_complete_when_degree_reaches_n_minus_1() -> None:
    g = neighbours(H1, FLEET, 7)
    assert all(len(v) == 7 for v in g.values())
    assert neighbours(H1, ["solo"], 6) == {"solo": ()}
    assert neighbours(H1, [], 6) == {}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("ABC", FLEET, 2), "round hash"),
        ((H1.upper(), FLEET, 2), "round hash"),
        ((H1, FLEET, -1), "degree"),
        ((H1, FLEET, True), "degree"),
        ((H1, ["bad id"], 2), "agent"),
        ((H1, "agent-1", 2), "single string"),
    ],
)
def test_graph_refuses_bad_input(args, match) -> None:
    with pytest.raises(SecAggError, match=match):
        neighbours(*args)


def test_default_degree_and_threshold() -> None:
    assert [default_degree(n) for n in (1, 2, 3, 5, 8, 100, 1000)] == [0, 1, 2, 4, 6, 14, 20]
    assert [default_threshold(d) for d in (0, 1, 2, 6, 14)] == [1, 2, 2, 4, 8]
    for n in range(2, 300):
        d = default_degree(n)
        holders = len(neighbours(H1, [f"a{i}" for i in range(n)], d)["a0"]) + 1
        assert holders // 2 < default_threshold(d) <= holders  # a strict majority, reachable


# --------------------------------------------------------------------------- keys, prg


def test_pair_keys_agree_at_both_ends_and_differ_per_round() -> None:
    ka, kb = EncryptionKey.generate(), EncryptionKey.generate()
    kw = {"swarm": SWARM, "round_no": 3, "round_hash": H1}
    ab = pair_keys(ka.private_bytes, kb.public_bytes, a="alice", b="bob", **kw)
    ba = pair_keys(kb.private_bytes, ka.public_bytes, a="bob", b="alice", **kw)
    assert ab == ba and ab.mask_seed != ab.share_key
    assert "secret" in repr(ab) and ab.mask_seed.hex() not in repr(ab)
    others = [
        pair_keys(ka.private_bytes, kb.public_bytes, a="alice", b="bob", **{**kw, "round_no": 4}),
        pair_keys(
            ka.private_bytes, kb.public_bytes, a="alice", b="bob", **{**kw, "round_hash": H2}
        ),
        pair_keys(
            ka.private_bytes, kb.public_bytes, a="alice", b="bob", **{**kw, "swarm": "clinic-b"}
        ),
        pair_keys(ka.private_bytes, kb.public_bytes, a="alice", b="carol", **kw),
    ]
    seeds = {k.mask_seed for k in [ab, *others]} | {k.share_key for k in [ab, *others]}
    assert len(seeds) == 10


def test_pair_keys_refuse_a_low_order_peer_key_and_bad_ids() -> None:
    ka = EncryptionKey.generate()
    zero = bytes(32)
    kw = {"swarm": SWARM, "round_no": 3, "round_hash": H1}
    with pytest.raises(SecAggError, match="not usable"):
        pair_keys(ka.private_bytes, zero, a="alice", b="bob", **kw)
    with pytest.raises(SecAggError, match="itself"):
        pair_keys(ka.private_bytes, ka.public_bytes, a="alice", b="alice", **kw)
    with pytest.raises(SecAggError, match="round hash"):
        pair_keys(
            ka.private_bytes, ka.public_bytes, a="alice", b="bob", **{**kw, "round_hash": "00"}
        )
    with pytest.raises(SecAggError):
        PairKeys(b"short", bytes(32))


def test_prg_known_answers() -> None:
    """AES-256 and AES-128 with the all-zero key on the all-zero block (FIPS-197 style known
    answers), read as little-endian uint32: the masks are the same on every CPU."""
    aes256 = bytes.fromhex("dc95c078a2408989ad48a21492842087")
    aes128 = bytes.fromhex("66e94bd4ef8a2c3b884cfa59ca342b2e")
    assert prg(bytes(32), 4, 32).tolist() == list(np.frombuffer(aes256, "<u4"))
    assert prg(bytes(16), 4, 32).tolist() == list(np.frombuffer(aes128, "<u4"))
    assert prg(bytes(32), 4, 8).tolist() == [0xDC, 0xA2, 0xAD, 0x92]
    v = prg(b"\x01" * 32, 2410, 32)
    assert v.dtype == np.uint32 and v.shape == (2410,)
    assert np.array_equal(v, prg(b"\x01" * 32, 2410, 32))
    assert np.array_equal(prg(b"\x01" * 32, 100, 32), v[:100])
    with pytest.raises(SecAggError):
        prg(b"x" * 20, 4, 32)
    with pytest.raises(SecAggError):
        prg(bytes(32), 4, 33)


def chi_square_uniform(values: np.ndarray, bins: int, top: int) -> float:
    counts = np.bincount((values.astype(np.uint64) * bins // top).astype(np.int64), minlength=bins)
    expected = values.size / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_a_masked_upload_looks_uniform() -> None:
    """The committee's view of one agent's upload, even of an all-zero update, is uniform:
    chi-square over 64 bins of 2^16 coordinates (99.9% quantile of chi2(63) is about 103)."""
    n = 2**16
    x = np.zeros(n, dtype=np.uint32)
    y = mask(
        x,
        node="b",
        neighbours=["a", "c"],
        pair_seeds={"a": b"\x02" * 32, "c": b"\x03" * 32},
        self_seed=b"\x04" * 16,
        bits=32,
    )
    assert chi_square_uniform(y, 64, 2**32) < 103
    assert chi_square_uniform(y & np.uint32(0xFF), 64, 256) < 103  # low bits too


# --------------------------------------------------------------------------- fixed point


@given(
    st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=50),
    st.sampled_from([8, 16, 24, 32]),
)
def test_encode_decode_round_trip(xs, bits) -> None:
    scale = max_scale(1.0, 1, bits)
    x = np.array(xs)
    enc = encode_fixed(x, scale=scale, bits=bits)
    assert enc.dtype == np.uint32 and int(enc.max()) < 2**bits
    assert np.all(np.abs(decode_fixed(enc, scale=scale, bits=bits) - x) <= 0.5 / scale + 1e-15)


@pytest.mark.parametrize(
    ("n", "bits", "z"), [(8, 32, 0.0), (100, 32, 0.0), (3, 16, 0.0), (8, 32, 2.0)]
)
def test_max_scale_is_the_bound_where_the_sum_stops_wrapping(n, bits, z) -> None:
    clip = 0.7
    s = max_scale(clip, n, bits, noise_multiplier=z)
    for sign in (1.0, -1.0):
        x = np.full(5, sign * clip)
        total = np.zeros(5, dtype=np.uint32)
        for _ in range(n):
            total = add_mod(total, encode_fixed(x, scale=s, bits=bits).astype(np.int64), bits=bits)
        assert np.allclose(decode_fixed(total, scale=s, bits=bits), n * sign * clip, rtol=1e-3)
    if z == 0:  # 2% more scale and the extreme sum wraps: the bound is tight
        big = 1.02 * s
        enc = encode_fixed(np.full(1, clip), scale=big, bits=bits).astype(np.int64)
        assert n * int(enc[0]) > 2 ** (bits - 1) - 1


def test_encode_refuses_what_cannot_fit() -> None:
    with pytest.raises(SecAggError, match="outside"):
        encode_fixed(np.array([1.0]), scale=2.0**31, bits=32)
    with pytest.raises(SecAggError, match="NaN"):
        encode_fixed(np.array([np.nan]), scale=1.0, bits=32)
    with pytest.raises(SecAggError, match="cannot hold"):
        max_scale(1.0, 10, 2)
    assert encode_fixed(np.array([-1.0]), scale=1.0, bits=32)[0] == 2**32 - 1


# --------------------------------------------------------------------------- mask, unmask


def simulate(
    agents: list[str], degree: int, included: set[str], xs: dict[str, np.ndarray], bits: int
) -> tuple[dict, dict, dict, dict]:
    """Masked uploads of ``included``, with every pair seed drawn at random, and the reveals
    the honest agents make (``needed_reveals``): only cross-cut pair seeds are handed over."""
    rng = np.random.default_rng(len(agents) * 1000 + degree)
    g = neighbours(H1, agents, degree)
    seeds = {edge(i, j): rng.bytes(32) for i in g for j in g[i]}
    selfs = {i: rng.bytes(16) for i in agents}
    masked = {
        i: mask(
            xs[i],
            node=i,
            neighbours=g[i],
            pair_seeds={j: seeds[edge(i, j)] for j in g[i]},
            self_seed=selfs[i],
            bits=bits,
        )
        for i in included
    }
    revealed = {}
    for node in agents:
        _, pair_with = needed_reveals(node, g, included)
        revealed.update({edge(node, j): seeds[edge(node, j)] for j in pair_with})
    return g, masked, {i: selfs[i] for i in included}, revealed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 12),
    degree=st.integers(0, 12),
    bits=st.sampled_from([1, 8, 20, 32]),
    size=st.integers(0, 40),
    data=st.data(),
)
def test_unmasked_sum_equals_plain_sum_whoever_drops(n, degree, bits, size, data) -> None:
    agents = [f"a{i}" for i in range(n)]
    included = set(data.draw(st.lists(st.sampled_from(agents), min_size=1, unique=True)))
    vals = st.integers(0, 2**bits - 1)
    xs = {
        i: np.array(data.draw(st.lists(vals, min_size=size, max_size=size)), dtype=np.uint32)
        for i in agents
    }
    g, masked, selfs, revealed = simulate(agents, degree, included, xs, bits)
    assert all(not (a in included and b in included) for a, b in revealed)  # never needed
    total = unmask_sum(masked, graph=g, self_seeds=selfs, revealed_pairs=revealed, bits=bits)
    expect = np.zeros(size, dtype=np.uint64)
    for i in included:
        expect = (expect + xs[i]) % (1 << bits)
    assert total.dtype == np.uint32 and total.tolist() == expect.tolist()


def test_unmask_names_every_missing_seed() -> None:
    agents = FLEET
    xs = {i: np.arange(4, dtype=np.uint32) for i in agents}
    included = set(agents) - {"agent-00", "agent-01"}
    g, masked, selfs, revealed = simulate(agents, 6, included, xs, 32)
    del selfs["agent-02"], selfs["agent-05"]
    cut = sorted(revealed)
    for e in cut[:2]:
        del revealed[e]
    with pytest.raises(SecAggError) as err:
        unmask_sum(masked, graph=g, self_seeds=selfs, revealed_pairs=revealed, bits=32)
    msg = str(err.value)
    assert "self seeds of agent-02, agent-05" in msg
    assert all(f"{a}-{b}" in msg for a, b in cut[:2])
    with pytest.raises(SecAggError, match="no masked"):
        unmask_sum({}, graph=g, self_seeds={}, revealed_pairs={}, bits=32)


def test_unmask_refuses_inconsistent_input() -> None:
    xs = {i: np.arange(4, dtype=np.uint32) for i in FLEET}
    g, masked, selfs, revealed = simulate(FLEET, 6, set(FLEET), xs, 32)
    kw = {"self_seeds": selfs, "revealed_pairs": revealed, "bits": 32}
    bad = {**masked, "agent-00": np.arange(5, dtype=np.uint32)}
    with pytest.raises(SecAggError, match="length"):
        unmask_sum(bad, graph=g, **kw)
    with pytest.raises(SecAggError, match="uint32"):
        unmask_sum({**masked, "agent-00": np.arange(4)}, graph=g, **kw)
    lopsided = {**g, "agent-00": (*g["agent-00"], "agent-04")}
    lopsided["agent-04"] = tuple(j for j in g["agent-04"] if j != "agent-00")
    with pytest.raises(SecAggError, match="not"):
        unmask_sum(masked, graph=lopsided, **kw)
    with pytest.raises(SecAggError, match="own neighbours"):
        mask(
            xs["agent-00"], node="a", neighbours=["a"], pair_seeds={}, self_seed=bytes(16), bits=32
        )
    with pytest.raises(SecAggError, match="no pair seed for b, c"):
        mask(
            xs["agent-00"],
            node="a",
            neighbours=["c", "b"],
            pair_seeds={},
            self_seed=bytes(16),
            bits=32,
        )


@given(n=st.integers(1, 15), degree=st.integers(0, 14), data=st.data())
def test_honest_reveals_never_expose_an_included_update(n, degree, data) -> None:
    agents = [f"a{i:02d}" for i in range(n)]
    g = neighbours(H1, agents, degree)
    included = set(data.draw(st.lists(st.sampled_from(agents), unique=True)))
    shares_of: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for node in agents:
        share_of, pair_with = needed_reveals(node, g, included)
        assert share_of == sorted(share_of) and pair_with == sorted(pair_with)
        assert set(share_of) <= included and set(share_of) <= set(g[node]) | {node}
        assert all((node in included) != (j in included) for j in pair_with)
        if node in included:  # the brief's per-agent rule holds for every included agent
            assert not set(share_of) & set(pair_with)
        shares_of |= set(share_of)
        pairs |= {edge(node, j) for j in pair_with}
    # Across all honest agents: no share of an excluded seed, no pair seed inside U...
    assert shares_of <= included
    assert not any(a in included and b in included for a, b in pairs)
    # ...and exactly the cut edges, so unmasking never lacks one while an end is online.
    cut = {edge(i, j) for i in included for j in g[i] if j not in included}
    assert pairs == cut


def test_mask_and_unmask_are_fast() -> None:
    """See the module docstring for the numbers; the bounds here only catch a 20x regression."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, 2410, dtype=np.uint32)
    for degree, bound in ((6, 0.004), (14, 0.008)):
        nbrs = [f"n{i:02d}" for i in range(degree)]
        seeds = {j: rng.bytes(32) for j in nbrs}
        kw = {"node": "m", "neighbours": nbrs, "pair_seeds": seeds, "self_seed": bytes(16)}
        best = min(_timed(mask, x, bits=32, **kw) for _ in range(20))
        assert best < bound, f"mask at degree {degree}: {best * 1e3:.2f} ms"
    agents = [f"a{i:03d}" for i in range(100)]
    xs = {i: x for i in agents}
    g, masked, selfs, revealed = simulate(agents, 14, set(agents[10:]), xs, 32)
    kw = {"graph": g, "self_seeds": selfs, "revealed_pairs": revealed, "bits": 32}
    best = min(_timed(unmask_sum, masked, **kw) for _ in range(5))
    assert best < 0.1, f"unmask of 90 uploads: {best * 1e3:.1f} ms"


def _timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- shares, sealing


@given(
    holders=st.lists(ids, min_size=1, max_size=20, unique=True),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_any_threshold_of_shares_rebuild_the_seed(holders, data) -> None:
    t = data.draw(st.integers(1, len(holders)))
    seed = new_self_seed()
    shares = split_seed(seed, holders, t)
    ordered = sorted(holders)
    assert list(shares) == ordered and [s[0] for s in shares.values()] == list(
        range(1, len(holders) + 1)
    )
    assert all(len(s) == SHARE_LEN for s in shares.values())
    pick = data.draw(st.lists(st.sampled_from(ordered), min_size=t, unique=True))
    assert combine_seed([shares[h] for h in pick] * 2, t) == seed  # duplicates are harmless
    if t > 1:
        with pytest.raises(SecAggError, match="needed"):
            combine_seed([shares[h] for h in pick[: t - 1]], t)


def test_combine_catches_a_lying_holder_and_garbage() -> None:
    seed = new_self_seed()
    shares = list(split_seed(seed, FLEET[:7], 4).values())
    liar = shares[6][:1] + bytes(16)
    with pytest.raises(SecAggError, match="polynomial"):
        combine_seed([*shares[:6], liar], 4)
    with pytest.raises(SecAggError, match="different shares"):
        combine_seed([shares[0], shares[0][:1] + bytes(16)], 1)
    with pytest.raises(SecAggError, match="index 0"):
        combine_seed([bytes(17)], 1)
    with pytest.raises(SecAggError, match="17 bytes"):
        combine_seed([b"short"], 1)
    with pytest.raises(SecAggError, match="threshold"):
        split_seed(seed, FLEET[:3], 4)
    with pytest.raises(SecAggError, match="unique"):
        split_seed(seed, ["a", "a"], 1)
    with pytest.raises(SecAggError, match="16 bytes"):
        split_seed(bytes(32), ["a"], 1)


def test_sealed_share_opens_only_where_it_was_sent() -> None:
    key, other = bytes(range(32)), bytes(32)
    share = split_seed(new_self_seed(), ["a", "b"], 2)["b"]
    aad = share_aad(SWARM, 5, "a", "b")
    blob = seal_share(share, key, aad=aad)
    assert len(blob) == SEALED_LEN and open_share(blob, key, aad=aad) == share
    assert seal_share(share, key, aad=aad) != blob  # fresh nonce
    wrong = [
        (blob, other, aad),
        (blob, key, share_aad(SWARM, 5, "b", "a")),
        (blob, key, share_aad(SWARM, 6, "a", "b")),
        (blob[:-1] + bytes([blob[-1] ^ 1]), key, aad),
    ]
    for b, k, a in wrong:
        with pytest.raises(SecAggError, match="does not open"):
            open_share(b, k, aad=a)
    with pytest.raises(SecAggError, match="45 bytes"):
        open_share(blob[:-1], key, aad=aad)


# --------------------------------------------------------------------------- messages

sealed = st.binary(min_size=SEALED_LEN, max_size=SEALED_LEN)
share_bytes = st.binary(min_size=SHARE_LEN, max_size=SHARE_LEN).filter(lambda b: b[0] != 0)
rounds = st.integers(0, 2**32 - 1)


@st.composite
def bundles(draw) -> ShareBundle:
    a, b = draw(st.lists(ids, min_size=2, max_size=2, unique=True))
    return ShareBundle(draw(ids), draw(rounds), a, b, draw(sealed))


@st.composite
def reveals(draw) -> Reveal:
    node = draw(ids)
    others = ids.filter(lambda j: j != node)
    return Reveal(
        draw(ids),
        draw(rounds),
        node,
        draw(st.dictionaries(ids, share_bytes, max_size=15)),
        draw(st.dictionaries(others, st.binary(min_size=32, max_size=32), max_size=14)),
    )


@given(st.one_of(bundles(), reveals()))
def test_messages_round_trip(msg) -> None:
    data = msg.to_bytes()
    back = type(msg).from_bytes(data)
    assert back == msg and back.to_bytes() == data


def test_a_full_degree_14_reveal_fits_the_bounds() -> None:
    r = Reveal(
        SWARM,
        1,
        "n" * 64,
        {f"{i:064d}": b"\x01" * 17 for i in range(15)},
        {f"{i:064d}": bytes(32) for i in range(14)},
    )
    assert len(r.to_bytes()) < 4096 and Reveal.from_bytes(r.to_bytes()) == r
    with pytest.raises(TypeError):
        r.shares["x"] = b"\x01" * 17  # read-only after construction


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    cut = st.integers(0, len(data))
    return st.one_of(
        st.builds(lambda i: data[:i], cut),
        st.builds(lambda i, b: data[:i] + bytes([b]) + data[i + 1 :], cut, st.integers(0, 255)),
        st.builds(lambda i, s: data[:i] + s + data[i:], cut, st.binary(max_size=8)),
    )


GOOD = [
    ShareBundle(SWARM, 1, "a", "b", bytes(SEALED_LEN)).to_bytes(),
    Reveal(SWARM, 1, "a", {"a": b"\x01" * 17}, {"b": bytes(32)}).to_bytes(),
]


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=300), *(mutations(g) for g in GOOD)))
def test_garbage_raises_only_secagg_error(data) -> None:
    for cls in (ShareBundle, Reveal):
        try:
            msg = cls.from_bytes(data)
        except SecAggError:
            continue
        assert msg.to_bytes() == data  # whatever parses is canonical


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.sampled_from([0, 1]),
    st.sampled_from(
        [
            "swarm",
            "round",
            "sender",
            "recipient",
            "blob",
            "node",
            "shares",
            "pairs",
            "type",
            "extra",
        ]
    ),
    json_values,
)
def test_wrong_field_values_raise_only_secagg_error(which, key, value) -> None:
    obj = json.loads(GOOD[which])
    obj[key] = value
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    cls = (ShareBundle, Reveal)[which]
    with contextlib.suppress(SecAggError):  # anything else fails the test
        cls.from_bytes(data)


def test_messages_refuse_non_canonical_and_oversized_input() -> None:
    obj = json.loads(GOOD[1])
    spaced = json.dumps(obj, sort_keys=True).encode()
    with pytest.raises(SecAggError, match="canonical"):
        Reveal.from_bytes(spaced)
    upper = GOOD[0].replace(b'"blob":"00', b'"blob":"0A')
    with pytest.raises(SecAggError, match="lowercase"):
        ShareBundle.from_bytes(upper)
    with pytest.raises(SecAggError, match="exceeds"):
        Reveal.from_bytes(GOOD[1], max_bytes=10)
    with pytest.raises(SecAggError, match="not a"):
        ShareBundle.from_bytes(GOOD[1])
    with pytest.raises(SecAggError, match="itself"):
        Reveal(SWARM, 1, "a", {}, {"a": bytes(32)})
    with pytest.raises(SecAggError, match="keeps its own"):
        ShareBundle(SWARM, 1, "a", "a", bytes(SEALED_LEN))


# --------------------------------------------------------------------------- the whole round


def test_a_round_of_eight_with_two_dropouts_end_to_end() -> None:
    """Keys, sealed shares through the committee, DP noise in the integers, masking, two agents
    gone after uploading, reveals over the wire: the committee's result is the exact integer
    sum of the six included (noisy) contributions, and no single upload is readable."""
    agents = FLEET
    bits, clip, z = 32, 1.0, 1.0
    scale = max_scale(clip, len(agents), bits, noise_multiplier=z)
    degree = default_degree(len(agents))
    t = default_threshold(degree)
    g = neighbours(H1, agents, degree)
    keys = {a: EncryptionKey.generate() for a in agents}
    rng = np.random.default_rng(7)

    def pk(a: str, b: str) -> PairKeys:
        return pair_keys(
            keys[a].private_bytes,
            keys[b].public_bytes,
            swarm=SWARM,
            round_no=9,
            round_hash=H1,
            a=a,
            b=b,
        )

    selfs = {a: new_self_seed() for a in agents}
    relay: list[bytes] = []  # what the committee sees: bundles in transit
    held: dict[str, dict[str, bytes]] = {a: {} for a in agents}  # holder -> owner -> share
    for a in agents:
        for h, s in split_seed(selfs[a], [*g[a], a], t).items():
            if h == a:
                held[a][a] = s
            else:
                relay.append(
                    ShareBundle(
                        SWARM,
                        9,
                        a,
                        h,
                        seal_share(s, pk(a, h).share_key, aad=share_aad(SWARM, 9, a, h)),
                    ).to_bytes()
                )
    for data in relay:
        b = ShareBundle.from_bytes(data)
        held[b.recipient][b.sender] = open_share(
            b.blob, pk(b.recipient, b.sender).share_key, aad=b.aad()
        )

    encoded = {}
    for a in agents:
        x, _ = dp.clip(rng.normal(size=2410), clip)
        noise = dp.discrete_share(
            2410, noise_multiplier=z, clip=clip, scale=scale, n_agents=8, rng=rng
        )
        encoded[a] = add_mod(encode_fixed(x, scale=scale, bits=bits), noise, bits=bits)
    uploads = {
        a: mask(
            encoded[a],
            node=a,
            neighbours=g[a],
            pair_seeds={j: pk(a, j).mask_seed for j in g[a]},
            self_seed=selfs[a],
            bits=bits,
        )
        for a in agents
    }
    assert chi_square_uniform(uploads["agent-03"], 32, 2**32) < 62  # 99.9% of chi2(31)

    dropped = {"agent-02", "agent-06"}  # uploaded, then gone
    included = set(agents) - dropped
    wire = []
    for a in sorted(included):
        share_of, pair_with = needed_reveals(a, g, included)
        wire.append(
            Reveal(
                SWARM,
                9,
                a,
                {j: held[a][j] for j in share_of},
                {j: pk(a, j).mask_seed for j in pair_with},
            ).to_bytes()
        )
    got_shares: dict[str, list[bytes]] = {}
    got_pairs: dict[tuple[str, str], bytes] = {}
    for data in wire:
        r = Reveal.from_bytes(data)
        for j, s in r.shares.items():
            got_shares.setdefault(j, []).append(s)
        got_pairs.update({edge(r.node, j): s for j, s in r.pairs.items()})
    seeds = {j: combine_seed(s, t) for j, s in got_shares.items()}
    assert set(seeds) == included and all(seeds[j] == selfs[j] for j in included)
    total = unmask_sum(
        {a: uploads[a] for a in included},
        graph=g,
        self_seeds=seeds,
        revealed_pairs=got_pairs,
        bits=bits,
    )
    plain = np.zeros(2410, dtype=np.uint32)
    for a in sorted(included):
        plain = add_mod(plain, encoded[a].astype(np.int64), bits=bits)
    assert np.array_equal(total, plain)
    assert np.all(np.abs(decode_fixed(total, scale=scale, bits=bits)) < 6 * clip + 12 * z * clip)


def test_importing_the_core_pulls_in_neither_accountant_nor_shamir() -> None:
    code = (
        "import sys, edge_swarm.swarm.secagg, edge_swarm.swarm.dp;"
        "bad = [m for m in sys.modules if m.startswith(('dp_accounting', 'Crypto.Protocol'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
