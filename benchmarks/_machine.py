"""What the micro-benchmarks share: pinning to one core, and describing the machine."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np


def pin_one_core() -> int | None:
    """Pin this process to one CPU where the OS allows it; return that CPU."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def machine(cpu: int | None) -> dict[str, Any]:
    """The facts a timing depends on, for the JSON next to it."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pinned_cpu": cpu,
    }
