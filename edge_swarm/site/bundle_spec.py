"""What one device's bundle is made of: `BundleSpec`, checked when built, and the readers of
its command-line inputs (``read_bootstrap``, ``parse_broker``). Every error is a
`BundleError` that names the argument, field or file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edge_swarm.site.profiles import DeviceProfile
from ledger_lite import Entry
from ledger_lite.errors import LedgerError

BROKER_PORT = 1883  # the embedded broker a gateway hosts
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class BundleError(ValueError):
    """The inputs cannot make a bundle; the message names the argument, field or file."""


@dataclass(frozen=True)
class BundleSpec:
    """What one device's bundle is made of (checked when built)."""

    profile: DeviceProfile
    swarm: str
    device_id: str
    genesis: Entry
    bootstrap_lines: tuple[str, ...]  # the bootstrap file, genesis first
    broker: tuple[str, int] | None = None  # None: the agent finds its broker on the LAN
    ca: Path | None = None
    backbone: Path | None = None
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    )

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.device_id):
            raise BundleError(f"--device-id: {self.device_id!r} must match [A-Za-z0-9_.-]{{1,64}}")
        if self.genesis.swarm != self.swarm:
            raise BundleError(
                f"--swarm {self.swarm!r} is not the genesis's swarm {self.genesis.swarm!r}"
            )
        if self.ca is not None and not self.ca.is_file():
            raise BundleError(f"--ca {self.ca}: no such file")
        self._check_backbone()

    def _check_backbone(self) -> None:
        from edge_swarm.learn.backbone import FILES

        wants = self.genesis.payload.get("params", {}).get("backbone") is not None
        if self.backbone is None:
            if wants and self.profile.role == "agent":
                raise BundleError("the genesis names a backbone: give its directory, --backbone")
            return
        if not self.backbone.is_dir():
            raise BundleError(f"--backbone {self.backbone}: not a directory")
        need = FILES[self.profile.runtime.engine]
        if not (self.backbone / need).is_file():
            raise BundleError(
                f"--backbone {self.backbone} has no {need}, which profile "
                f"{self.profile.name} runs (engine {self.profile.runtime.engine})"
            )

    @property
    def role(self) -> str:
        return self.profile.role

    @property
    def hosts_broker(self) -> bool:
        """A gateway with the ``broker`` extra and no --broker runs the site's broker."""
        return self.role == "gateway" and self.broker is None and "broker" in self.profile.extras


def read_bootstrap(path: Path) -> tuple[Entry, tuple[str, ...]]:
    """The genesis entry of a bootstrap file (its first line) and all its lines.

    Raises BundleError naming the file if it is missing, empty, or does not start with a
    genesis entry (height 0, kind ``genesis``).
    """
    try:
        lines = tuple(ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())
    except FileNotFoundError:
        raise BundleError(f"--bootstrap {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"--bootstrap {path}: cannot read: {exc}") from None
    if not lines:
        raise BundleError(f"{path}: empty, no genesis entry (make one: edge-swarm admin init)")
    try:
        entry = Entry.from_dict(json.loads(lines[0]))
    except (ValueError, LedgerError) as exc:
        raise BundleError(f"{path}: line 1 is not a ledger entry: {exc}") from None
    if entry.height != 0 or entry.kind != "genesis":
        raise BundleError(
            f"{path}: line 1 is a {entry.kind!r} entry at height {entry.height}, not the genesis"
        )
    return entry, lines


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); BundleError naming --broker otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BundleError(f"--broker takes HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
