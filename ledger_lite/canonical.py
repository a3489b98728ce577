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
import json
import math
import re
from typing import Any

from .errors import EncodeError

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
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]")


def json_too_deep(data: bytes, max_depth: int = JSON_MAX_DEPTH) -> bool:
    """Whether the brackets outside strings in ``data`` nest deeper than ``max_depth``."""
    depth = 0
    for b in _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", data)):
        depth += 1 if b in b"[{" else -1
        if depth > max_depth:
            return True
    return False
