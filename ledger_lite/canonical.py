"""Canonical bytes: the one encoding that every hash and signature in the ledger covers.

Contract (docs/INTERNALS.md): UTF-8 JSON, keys sorted, separators ``(",", ":")``, no
whitespace, non-ASCII characters written as themselves (``ensure_ascii=False``), ``bytes``
values written as lowercase hex strings. NaN and the infinities have no JSON form and are
refused, as are non-string keys (``json`` would silently turn ``1`` into ``"1"`` and two
different dicts would share one encoding) and any type JSON does not know. Tuples encode
as lists. Nesting deeper than `MAX_DEPTH` is refused so a hostile value cannot exhaust the
stack.

Floats use Python's shortest round-trip repr; every implementation of this ledger is the
Python one, so that is canonical enough (integers are used for everything that counts:
heights, times in milliseconds, sample counts).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from typing import Any

from .errors import DecodeError, EncodeError

MAX_DEPTH = 64

_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    sort_keys=True,
    separators=(",", ":"),
    check_circular=False,  # _normalize already bounds depth, so no cycle survives it
)


def _normalize(obj: Any, depth: int) -> Any:
    """Return a JSON-pure copy of `obj` (bytes → hex, tuple → list) or raise EncodeError."""
    if depth > MAX_DEPTH:
        raise EncodeError(f"value nested deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise EncodeError(f"{obj!r} has no canonical encoding (NaN/Inf refused)")
        return obj
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).hex()
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise EncodeError(f"dict key {key!r} is not a str")
            out[key] = _normalize(value, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [_normalize(item, depth + 1) for item in obj]
    raise EncodeError(f"type {type(obj).__name__} has no canonical JSON encoding")


def canonical_bytes(obj: Any) -> bytes:
    """Encode `obj` as canonical UTF-8 JSON bytes.

    Takes None, bool, int, finite float, str, bytes/bytearray (→ lowercase hex), and
    lists/tuples/dicts (str keys only) of those. Raises `EncodeError` (a ValueError) for
    anything else, for NaN/Inf, for strings that are not valid Unicode (lone surrogates),
    and for nesting deeper than `MAX_DEPTH`.
    """
    text = _ENCODER.encode(_normalize(obj, 0))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string is not valid Unicode: {exc.reason}") from None


def to_json_value(obj: Any) -> Any:
    """Return a fresh JSON-pure deep copy of `obj`: what `json.loads(canonical_bytes(obj))`
    would give. Raises `EncodeError` as `canonical_bytes` does."""
    value = _normalize(obj, 0)
    canonical_bytes(value)  # rejects lone surrogates, exactly as encoding would
    return value


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


# JSON from the network is parsed only after its nesting depth is checked: json.loads
# recurses once per level, and while the stack is that deep any finaliser that happens to
# run (a socket's, a thread's) fails too and is reported as an unraisable error.
JSON_MAX_DEPTH = 64  # our documents nest a handful of levels; nothing honest comes near this
# A string, its closing quote optional: an unclosed string runs to the end of the data (where
# json.loads stops too). Never failing to match keeps the scan linear: a pattern that needs
# the closing quote is retried from every quote of ``"\\"\\"...`` (minutes for 100 kB).
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def json_too_deep(data: bytes, max_depth: int = JSON_MAX_DEPTH) -> bool:
    """Whether the brackets outside strings in ``data`` nest deeper than ``max_depth``.

    Linear in ``len(data)`` whatever the bytes (the scan runs in C: regular expressions, a
    translation table and ``itertools.accumulate``)."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", bytes(data)))
    if len(brackets) <= max_depth:
        return False
    steps = memoryview(brackets.translate(_STEPS)).cast("b")
    return max(itertools.accumulate(steps)) > max_depth


def parse_json(data: bytes | bytearray | memoryview | str, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """Parse untrusted JSON: the one decoder for JSON that comes from the network.

    Takes UTF-8 bytes (or a str). Returns the value; raises only `DecodeError` (a ValueError)
    whatever the input: not bytes or str, not UTF-8, not JSON, nested deeper than
    ``max_depth`` (checked before parsing, so a ``[[[[...`` of any depth never recurses),
    ``NaN``/``Infinity`` or a number too large for a float, an integer of more digits than
    Python converts. Duplicate keys are kept as json.loads keeps them (the last wins); the
    ledger's entry decoder, which must refuse them, is stricter.
    """
    try:
        if isinstance(data, str):
            raw = data.encode("utf-8", "surrogatepass")
            text = data
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
            text = raw.decode("utf-8")  # strict: no other encoding, no lone surrogates
        else:
            raise DecodeError(f"JSON must come as bytes or str, not {type(data).__name__}")
        if json_too_deep(raw, max_depth):
            raise DecodeError(f"JSON nested deeper than {max_depth} levels")
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except DecodeError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError, UnicodeError
        raise DecodeError(f"not JSON: {exc!r:.200}") from None


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise DecodeError(f"number {text:.40} is out of range")
    return value
