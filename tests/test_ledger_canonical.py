"""Canonical encoding: golden vectors, round trips, refusals."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger_lite import DEFAULT_POLICY, canonical_bytes, sha256_hex
from ledger_lite.errors import EncodeError

from .test_ledger_support import ADMIN_KEY, genesis

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)


def test_golden_vector() -> None:
    value = {"b": 1, "a": [True, None, 1.5, "é", -0], "c": b"\x00\xff", "A": {"z": {}, "y": []}}
    expected = '{"A":{"y":[],"z":{}},"a":[true,null,1.5,"é",0],"b":1,"c":"00ff"}'
    assert canonical_bytes(value) == expected.encode("utf-8")
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_golden_genesis_hash() -> None:
    """Pins the whole entry encoding (field names, order, signature, hash) across versions.
    The public key of seed 01*32 is the well-known RFC 8032/libsodium value."""
    assert ADMIN_KEY.public_hex == (
        "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
    )
    # The policy before campaigns existed: the same bytes, so the same hash, as ever.
    before_campaigns = {k: v for k, v in DEFAULT_POLICY.items() if k != "campaign"}
    g = genesis(policy=before_campaigns)
    assert g.canonical().startswith(b'{"author":"admin","height":0,"kind":"genesis","payload":')
    assert g.hash == GOLDEN_GENESIS_HASH
    assert genesis().hash == GOLDEN_GENESIS_HASH_CAMPAIGNS  # today's default policy


GOLDEN_GENESIS_HASH = "7c44b2020e2639abf95758c7961a80307494168915d32d4dc8b9b30b87832cd7"
GOLDEN_GENESIS_HASH_CAMPAIGNS = "6a3bac0c23b2175b7186e614184ba2052c28eb3e7ad1f3d27088fd63e5e5f073"


@given(json_values)
def test_round_trip(value: object) -> None:
    encoded = canonical_bytes(value)
    decoded = json.loads(encoded)
    assert decoded == value
    assert canonical_bytes(decoded) == encoded  # idempotent


@given(st.dictionaries(st.text(), json_scalars, min_size=2))
def test_key_order_does_not_matter(value: dict[str, object]) -> None:
    reversed_value = dict(reversed(list(value.items())))
    assert canonical_bytes(reversed_value) == canonical_bytes(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, [1, {"x": math.nan}]])
def test_nan_and_inf_refused(bad: object) -> None:
    with pytest.raises(EncodeError, match="NaN/Inf"):
        canonical_bytes(bad)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({1: "x"}, "not a str"),
        ({None: "x"}, "not a str"),
        ({1, 2}, "set"),
        (object(), "object"),
        ("\ud800", "not valid Unicode"),
    ],
)
def test_non_json_refused(bad: object, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        canonical_bytes(bad)


def test_deep_nesting_refused() -> None:
    deep: list[object] = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(EncodeError, match="deeper"):
        canonical_bytes(deep)


def test_encode_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        canonical_bytes(math.nan)
