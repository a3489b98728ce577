"""Setting up a swarm on disk: keys, the genesis, enrolments, and each node's config file.

This is what an operator does once per site (``edge-swarm demo`` does it in a scratch
directory). The genesis fixes what every node must agree on: the model, how to train
locally, the merge rule and the round timing. Enrolment entries are signed by the admin key
and chained after the genesis in a bootstrap file from which the gateway creates its ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_swarm.learn.model import ModelSpec
from edge_swarm.learn.train import LocalTraining
from edge_swarm.node.config import (
    BrokerConfig,
    DiscoveryConfig,
    NodeConfig,
    RuntimeConfig,
    Timing,
    dump_config,
)
from edge_swarm.swarm.campaign import CampaignSettings
from edge_swarm.swarm.merge import MergeRule
from edge_swarm.swarm.privacy import PrivacyPolicy, check_merge
from edge_swarm.swarm.quantize import CodecSpec
from edge_swarm.trust.keyring import EncryptionKey
from ledger_lite import DEFAULT_POLICY, Entry, SigningKey, make_genesis, make_tx

ADMIN_ID = "admin"
OBSERVER_ID = "observer"


@dataclass(frozen=True)
class SwarmParams:
    """What the genesis fixes for every node of the swarm."""

    model: ModelSpec
    local: LocalTraining
    merge: MergeRule
    # The first campaign's round budget; None: open-ended (docs/CAMPAIGNS.md).
    rounds: int | None = 20
    min_peers: int = 2
    round_deadline_s: float = 60.0
    attest_timeout_s: float = 20.0
    start_grace_s: float = 30.0
    init_seed: int = 0
    codec: CodecSpec = field(default_factory=lambda: CodecSpec("float32"))
    error_feedback: bool = True
    # How deltas travel: "sealed" (signed + AES-256-GCM), "signed", or "none" (a benchmark
    # baseline only). See trust/epochs.py.
    security: str = "sealed"
    # A frozen feature extractor under the model (then a head): learn/backbone.py.
    backbone: dict[str, Any] | None = None
    # Who merges each round (docs/COMMITTEE.md): "committee" (the gateways plus committee_k
    # drawn agents; the others apply their quantized update, the downlink codec) or "all".
    merge_by: str = "all"
    committee_k: int = 2
    downlink: CodecSpec = field(default_factory=lambda: CodecSpec("int8"))
    # Rounds open this many seconds apart at the earliest (the coordinator's monotonic clock).
    cadence_s: float | None = None
    # End the campaign on convergence: {patience, min_delta, metric} (swarm/convergence.py).
    stop: dict[str, Any] | None = None
    # Validation on every site (docs/VALIDATION.md): the share of each agent's data held out
    # of training to score every final model on, and how much worse on it a new model may
    # be before a device that serves models holds it back.
    val_fraction: float = 0.2
    serve_margin: float = 0.02
    # Privacy against fellow members (swarm/privacy.py): secure aggregation, DP, or both.
    privacy: PrivacyPolicy | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Refused here, before a genesis every gateway would refuse is written.
        CampaignSettings.from_params({"rounds": self.rounds, **self._campaign()})
        if not 0 <= self.val_fraction < 1 or not 0 <= self.serve_margin <= 1:
            raise ValueError("val_fraction must be in [0, 1) and serve_margin in [0, 1]")
        if self.privacy is not None:  # PrivacyError: a rule secure aggregation would hide
            check_merge(self.privacy, self.merge.aggregation, self.merge.clip, self.merge_by)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "local": self.local.to_dict(),
            "merge": self.merge.to_dict(),
            "rounds": self.rounds,
            "min_peers": self.min_peers,
            "round_deadline_s": self.round_deadline_s,
            "attest_timeout_s": self.attest_timeout_s,
            "start_grace_s": self.start_grace_s,
            "init_seed": self.init_seed,
            "codec": self.codec.to_dict(),
            "error_feedback": self.error_feedback,
            "security": self.security,
            **({"backbone": self.backbone} if self.backbone is not None else {}),
            **(self._committee() if self.merge_by == "committee" else {}),
            **self._campaign(),
            "val_fraction": self.val_fraction,
            "serve_margin": self.serve_margin,
            # None or "none" adds nothing: such a genesis is exactly what it was before.
            **({"privacy": self.privacy.to_dict()} if self.privacy and self.privacy.active else {}),
            **self.extra,
        }

    def _campaign(self) -> dict[str, Any]:
        # Unset fields add nothing: such a genesis is exactly what it was before campaigns.
        out: dict[str, Any] = {}
        if self.cadence_s is not None:
            out["cadence_s"] = self.cadence_s
        if self.stop is not None:
            out["stop"] = dict(self.stop)
        return out

    def _committee(self) -> dict[str, Any]:
        # "all" adds nothing: such a genesis is exactly what it was before committees.
        return {
            "merge_by": self.merge_by,
            "committee_k": self.committee_k,
            "downlink": self.downlink.to_dict(),
        }


@dataclass(frozen=True)
class SwarmLayout:
    """Where a provisioned swarm's files are."""

    root: Path
    swarm: str
    genesis_hash: str
    gateway_configs: dict[str, Path]
    agent_configs: dict[str, Path]
    ledger_paths: dict[str, Path]
    observer_enc_key: Path | None = None  # the operator's laptop, when it may read models

    @property
    def gateway_config(self) -> Path:
        return self.gateway_configs["gateway-1"]

    @property
    def ledger_path(self) -> Path:
        """The first gateway's ledger (every replica holds the same chain)."""
        return self.ledger_paths["gateway-1"]


def agent_id(i: int) -> str:
    return f"agent-{i:02d}"


def provision_swarm(
    root: Path,
    swarm: str,
    params: SwarmParams,
    data_paths: list[Path],
    broker: BrokerConfig,
    timing: Timing | None = None,
    codec_overrides: dict[str, CodecSpec] | None = None,
    raft_addrs: list[str] | None = None,
    passwords: dict[str, Path] | None = None,
    discovery: DiscoveryConfig | None = None,
    gateway_discovery: DiscoveryConfig | None = None,
    backbone_dir: Path | None = None,
    runtime: RuntimeConfig | None = None,
    dashboard: str | None = None,
    attacks: dict[str, dict[str, Any]] | None = None,
) -> SwarmLayout:
    """Write keys, bootstrap ledger entries and configs for the gateways and one agent a path.

    ``codec_overrides`` gives some agents (by node id) a codec other than the swarm's, as a
    device profile would. ``raft_addrs`` ("host:port", one a gateway) makes a site of
    several gateways replicating the ledger by Raft; without it there is one gateway.
    ``discovery`` / ``gateway_discovery`` set the agents' / gateways' zeroconf (an agent
    config with ``find_broker`` has no broker host: it finds the broker on the LAN).
    """
    overrides = codec_overrides or {}

    def broker_for(node: str) -> BrokerConfig:
        """A locked-down broker knows each device by its own name and password."""
        if not passwords or node not in passwords:
            return broker
        return replace(broker, username=node, password_file=passwords[node])

    root.mkdir(parents=True, exist_ok=True)
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    admin = _key(keys / "admin.key")
    genesis = make_genesis(admin, ADMIN_ID, swarm, DEFAULT_POLICY, params.to_dict())
    entries: list[Entry] = [genesis]

    def enroll(node: str, role: str, key: SigningKey) -> Path:
        """Enrol ``node`` with its signing key and a new encryption key (returns its path)."""
        enc_path = keys / f"{node}.enc.key"
        enc = EncryptionKey.generate()
        enc.save(enc_path)
        payload = {
            "node": node,
            "role": role,
            "pubkey": key.public_hex,
            "expires_ms": None,
            "enc_pubkey": enc.public_hex,
        }
        tx = make_tx(admin, swarm, "enroll", ADMIN_ID, payload)
        entries.append(tx.chain(len(entries), entries[-1].hash))
        return enc_path

    timing = timing or Timing()
    gateways = [f"gateway-{i}" for i in range(1, len(raft_addrs or [None]) + 1)]
    gw_enc = {gw: enroll(gw, "gateway", _key(keys / f"{gw}.key")) for gw in gateways}
    observer_enc = enroll(OBSERVER_ID, "observer", _key(keys / f"{OBSERVER_ID}.key"))
    agent_configs: dict[str, Path] = {}
    for i, data in enumerate(data_paths, start=1):
        node = agent_id(i)
        key_path = keys / f"{node}.key"
        enc_path = enroll(node, "agent", _key(key_path))
        cfg = NodeConfig(
            node_id=node,
            role="agent",
            swarm=swarm,
            key_path=key_path,
            enc_key_path=enc_path,
            state_dir=root / "state" / node,
            broker=broker_for(node),
            genesis_hash=genesis.hash,
            data_path=data,
            timing=timing,
            codec_override=overrides[node].to_dict() if node in overrides else None,
            discovery=discovery or DiscoveryConfig(),
            backbone_dir=backbone_dir,
            runtime=runtime or RuntimeConfig(),
            attack=(attacks or {}).get(node),  # tests and benchmarks only
        )
        agent_configs[node] = _write(root / "config" / f"{node}.toml", dump_config(cfg))

    bootstrap = root / "bootstrap.jsonl"
    bootstrap.write_text("".join(json.dumps(e.to_dict(), sort_keys=True) + "\n" for e in entries))
    gw_configs, ledgers = {}, {}
    for i, gw in enumerate(gateways):
        ledgers[gw] = root / "state" / gw / "ledger.sqlite"
        raft = raft_addrs[i] if raft_addrs else None
        cfg = NodeConfig(
            node_id=gw,
            role="gateway",
            swarm=swarm,
            key_path=keys / f"{gw}.key",
            enc_key_path=gw_enc[gw],
            state_dir=ledgers[gw].parent,
            broker=broker_for(gw),
            genesis_hash=genesis.hash,
            ledger_path=ledgers[gw],
            bootstrap_path=bootstrap,
            timing=timing,
            raft_self=raft,
            raft_peers=tuple(a for a in raft_addrs or [] if a != raft),
            discovery=gateway_discovery or DiscoveryConfig(),
            backbone_dir=backbone_dir,
            dashboard=dashboard if i == 0 else None,  # the first gateway serves the page
            attack=(attacks or {}).get(gw),  # tests only: a gateway whose own merge lies
        )
        gw_configs[gw] = _write(root / "config" / f"{gw}.toml", dump_config(cfg))
    return SwarmLayout(root, swarm, genesis.hash, gw_configs, agent_configs, ledgers, observer_enc)


def _key(path: Path) -> SigningKey:
    key = SigningKey.generate()
    key.save(path)
    return key


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
