"""The JSON deflate framing: lossless, smaller on our messages, and safe on hostile frames."""

from __future__ import annotations

import hashlib
import json
import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_swarm.io import json_deflate
from edge_swarm.io.json_deflate import DeflateError, pack, unpack

LIMIT = 1 << 20
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: (
        st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=12), kids, max_size=6)
    ),
    max_leaves=40,
)


def _entry(height: int) -> bytes:
    """A compact model_attest entry as a gateway publishes it (random hashes and signature)."""
    h = lambda n: os.urandom(n).hex()  # noqa: E731
    body = {"author": "agent-04", "height": height, "kind": "model_attest",
            "payload": {"model_hash": h(32), "round": 5, "state_hash": h(32),
                        "update_sha256": h(32)},
            "prev_hash": h(32), "sig": h(64), "swarm": "demo", "ts": 1796654541600}  # fmt: skip
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@given(obj=st.dictionaries(st.text(max_size=12), _json, max_size=8))
def test_any_json_object_round_trips(obj: dict) -> None:
    data = json.dumps(obj).encode()
    wire = pack(data)
    assert unpack(wire, LIMIT) == data
    assert len(wire) <= len(data)  # never made longer


_hexes = st.binary(min_size=0, max_size=300).map(bytes.hex)


@given(values=st.lists(_hexes | _hexes.map(str.upper) | st.text(alphabet="0123456789abcdef")))
def test_hex_strings_of_any_length_and_case_round_trip(values: list[str]) -> None:
    data = json.dumps({"sig": values, "pad": "x" * 40}).encode()
    assert unpack(pack(data), LIMIT) == data


def test_a_control_byte_in_the_text_keeps_it_plain() -> None:
    data = b'{"a":"' + b"ab" * 40 + b'","b":"\x01"}' + b"\x01"
    assert pack(data) == data


@given(data=st.binary(max_size=300))
def test_binary_frames_and_plain_json_pass_through(data: bytes) -> None:
    frame = b"ESWD" + data  # every binary frame of ours opens with its own b"ES.." magic
    assert pack(frame) == frame and unpack(frame, LIMIT) == frame
    plain = json.dumps({"x": data.hex()}).encode()
    assert unpack(plain, LIMIT) == plain  # a sender that does not deflate is still understood


def test_a_ledger_entry_shrinks_by_more_than_half() -> None:
    raw = _entry(39)
    wire = pack(raw)
    assert json_deflate.is_packed(wire)
    assert len(wire) < 0.5 * len(raw), (len(wire), len(raw))
    assert unpack(wire, LIMIT) == raw


def test_short_json_is_sent_as_is() -> None:
    assert pack(b'{"a":1}') == b'{"a":1}'


def test_a_bomb_is_refused_before_it_inflates() -> None:
    z = zlib.compressobj(9, wbits=-15, zdict=json_deflate.dictionary())
    bomb = b"ESZJ\x01" + z.compress(b"{" + b" " * 50_000_000) + z.flush()
    assert len(bomb) < 100_000
    with pytest.raises(DeflateError, match="inflates past"):
        unpack(bomb, LIMIT)


def _deflated(text: bytes) -> bytes:
    """``text`` framed as a deflated payload as is (a hostile sender's own packing)."""
    z = zlib.compressobj(9, wbits=-15, zdict=json_deflate.dictionary())
    return b"ESZJ\x01" + z.compress(text) + z.flush()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"ESZJ", "unknown version"),
        (b"ESZJ\x07" + b"x" * 20, "unknown version"),
        (b"ESZJ\x01" + b"\xff" * 40, "corrupt"),
        (_deflated(b'{"a":\x01\x20' + b"x" * 10 + b"}"), "corrupt hex packing"),
        (_deflated(b'{"a":\x01\x05' + b"x" * 10 + b"}"), "corrupt hex packing"),
        (_deflated(b'{"a":' + (b"\x01\xff" + b"x" * 255) * 5 + b"}"), "inflates past"),
    ],
)
def test_malformed_frames_are_refused(frame: bytes, reason: str) -> None:
    with pytest.raises(DeflateError, match=reason):
        unpack(frame, 2000)


def test_truncated_and_trailing_bytes_are_refused() -> None:
    wire = pack(_entry(1))
    with pytest.raises(DeflateError, match="truncated"):
        unpack(wire[:-8], LIMIT)
    with pytest.raises(DeflateError, match="after the end"):
        unpack(wire + b"junk", LIMIT)


def test_the_dictionary_of_version_1_never_changes() -> None:
    # It is part of the wire format: a different dictionary must be a new version.
    digest = hashlib.sha256(json_deflate.dictionary(1)).hexdigest()
    assert digest == PINNED_V1, "edit a new version into _DICTIONARIES instead of changing v1"


PINNED_V1 = "6e3a2bb162826d1bd6c8afd260858e424875f243a8b129501383362614b60011"
