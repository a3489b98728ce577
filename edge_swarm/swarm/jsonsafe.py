"""JSON from the network, parsed only after its nesting depth is checked (see
``ledger_lite.canonical.json_too_deep`` for why)."""

from __future__ import annotations

import json
from typing import Any

from ledger_lite.canonical import JSON_MAX_DEPTH, json_too_deep


def loads(data: bytes, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """``json.loads`` of UTF-8 ``data``; ValueError if it is not JSON or nests too deep."""
    if json_too_deep(data, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(data.decode("utf-8"))
