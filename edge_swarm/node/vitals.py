"""A device's vitals for telemetry (CPU temperature, free disk, peak memory), and the
rate-limited log of dropped input and failed handling that every process keeps."""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import time
from collections import Counter
from collections.abc import Callable
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
    """The log of bad input and failed handling a process keeps (zeroconf's habit): each
    kind of trouble is told in full a few times, then only counted, so that a flood of one
    bad message costs a few lines of log, not one per message.

    - ``drop(reason, detail)``: input refused for a known reason (one line each): the first
      `FIRST_DROPS` of each reason, then every `EVERY_DROP`-th. ``counts`` (by reason) go
      into the node's telemetry.
    - ``error(where, exc, detail)``: an exception nobody expected while handling ``where``
      (a topic kind, a callback): the first `FIRST_ERRORS` of each (where, exception type)
      with their traceback, then a one-line count at most every `SUMMARY_S` seconds.
      ``errors`` counts them by (where, exception type).
    """

    FIRST_DROPS = 3
    EVERY_DROP = 100
    FIRST_ERRORS = 3
    SUMMARY_S = 30.0

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.counts: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self._clock = clock
        self._told: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (when, count) told

    def drop(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= self.FIRST_DROPS or n % self.EVERY_DROP == 0:
            self.logger.warning("dropped (%s, #%d): %.300s", reason, n, detail)

    def error(self, where: str, exc: BaseException, detail: str = "") -> None:
        """Log (rate-limited) that handling ``where`` raised ``exc``; ``detail`` says on
        what (a topic). Never raises."""
        key = (str(where), type(exc).__name__)
        self.errors[key] += 1
        n, now = self.errors[key], self._clock()
        if n <= self.FIRST_ERRORS:
            more = " (more of these are only counted)" if n == self.FIRST_ERRORS else ""
            self.logger.error(
                "error while handling %s (%s #%d): %.300s%s",
                key[0],
                key[1],
                n,
                detail,
                more,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            self._told[key] = (now, n)
            return
        told_at, told_n = self._told[key]
        if now - told_at >= self.SUMMARY_S:
            self.logger.error(
                "error while handling %s: %s %d more times in %.0f s (%d in all), last: %.200r",
                key[0],
                key[1],
                n - told_n,
                now - told_at,
                n,
                exc,
            )
            self._told[key] = (now, n)
