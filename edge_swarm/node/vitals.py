"""A device's vitals for telemetry (CPU temperature, free disk, peak memory), and the
rate-limited log of dropped input that every node keeps."""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
from collections import Counter
from pathlib import Path


def device_vitals(state_dir: Path) -> dict[str, float]:
    """CPU temperature (where the kernel exposes it, as on a Pi or a Jetson) and free disk."""
    vitals: dict[str, float] = {}
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp"))[:4]:
        try:
            vitals["cpu_temp_c"] = int(zone.read_text().strip()) / 1000.0
            break
        except (OSError, ValueError):
            continue
    with contextlib.suppress(OSError):
        vitals["disk_free_mib"] = round(
            shutil.disk_usage(state_dir if state_dir.exists() else "/").free / 2**20, 1
        )
    return vitals


def peak_rss_kb() -> int:
    """Peak resident set size of this process in KiB.

    Read from /proc's VmHWM where there is one: getrusage's ru_maxrss survives exec on
    Linux, so a process started by a big parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class RateLimitedLog:
    """Logs the first few drops of each reason at warning, then every 100th (zeroconf's habit)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.counts: Counter[str] = Counter()

    def drop(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= 3 or n % 100 == 0:
            self.logger.warning("dropped (%s, #%d): %s", reason, n, detail)
