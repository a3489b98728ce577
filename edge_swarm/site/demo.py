"""One swarm on one machine, end to end: the demo, the benchmarks and the e2e tests run this.

``run_swarm`` writes the workload's per-agent partitions, provisions keys, genesis and
configs, starts a broker (embedded amqtt by default, or a Mosquitto process), a gateway
process and one process per agent (or per group of ``agents_per_process`` agents), watches
the rounds through an observer, and stops everything when the round budget is spent,
whatever happens in between.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_swarm.io.broker import free_port, free_ports
from edge_swarm.learn.backbone import read_ref
from edge_swarm.learn.data import (
    PUBLIC_FRACTION,
    WORKLOADS,
    Workload,
    public_private,
    write_partitions,
)
from edge_swarm.learn.model import ModelSpec
from edge_swarm.learn.train import STANDARD_TRAINING, LocalTraining, evaluate
from edge_swarm.node.config import BrokerConfig, RuntimeConfig, Timing
from edge_swarm.node.observer import RoundRecord, SwarmObserver
from edge_swarm.site.data_arrivals import Arrivals, stage
from edge_swarm.site.launch import SwarmProcesses, Wrapper
from edge_swarm.site.provision import OBSERVER_ID, SwarmLayout, SwarmParams, provision_swarm
from edge_swarm.swarm.merge import STANDARD_MERGE, MergeRule
from edge_swarm.swarm.privacy import PrivacyPolicy
from edge_swarm.swarm.quantize import CodecSpec
from edge_swarm.trust.keyring import EncryptionKey
from ledger_lite import Entry

log = logging.getLogger(__name__)

# The settings that meet the standard workload's targets, chosen by a search in
# benchmarks/sim_standard.py (robust across partition seeds and alpha=0.1).
DEFAULT_LOCAL = STANDARD_TRAINING
DEFAULT_MERGE = STANDARD_MERGE
DEFAULT_CODEC = CodecSpec("float32")


@dataclass(frozen=True)
class RunConfig:
    """One swarm run; defaults are the standard workload (shared/WORKLOAD.md)."""

    workdir: Path
    workload: str = "digits"
    n_agents: int = 8
    # K > 1: the agents run K to a process, a thread each (site/launch.py); 1: one process each
    agents_per_process: int = 1
    alpha: float = 0.5
    # Fewer samples than this on an agent are topped up from the largest (a fleet of 200
    # leaves some agents nothing under α = 0.5; the 8-agent splits are untouched).
    min_samples: int = 5
    # Who merges each round (swarm/committee_round.py): every agent ("all"), or the gateways
    # plus committee_k agents drawn per round ("committee"; the others adopt the result).
    merge_by: str = "all"
    committee_k: int = 2
    # Committee mode: the codec of the committee's one merged update per round, which light
    # agents apply instead of downloading the model (swarm/downlink.py; nearest rounding).
    downlink: CodecSpec = CodecSpec("int8")
    # Validation on every site (docs/VALIDATION.md): the share of each agent's data held out
    # to score every final model on; how much worse a served model may get before it is held.
    # 0 here, unlike a site's genesis (0.2): the standard workload trains every agent on its
    # whole partition, so that its figures compare across versions and frameworks.
    val_fraction: float = 0.0
    serve_margin: float = 0.02
    serve: bool = False  # the agents serve every final model the gate lets through
    privacy: PrivacyPolicy | None = None  # secure aggregation and/or DP (swarm/privacy.py)
    seed: int = 0
    rounds: int = 20
    hidden: tuple[int, ...] = (32,)
    local: LocalTraining = DEFAULT_LOCAL
    merge: MergeRule = DEFAULT_MERGE
    broker: str = "embedded"  # or "mosquitto"
    swarm: str = "demo"
    keepalive_s: int = 5
    round_deadline_s: float = 60.0
    attest_timeout_s: float = 20.0
    start_grace_s: float = 60.0
    min_peers: int = 2
    start_agents: tuple[str, ...] | None = None  # None: all of them
    codec: CodecSpec = DEFAULT_CODEC
    error_feedback: bool = True
    security: str = "sealed"  # signed + encrypted deltas; "signed" / "none" for comparison
    # A backbone directory (edge-swarm model pretrain): the swarm then fine-tunes a head on
    # the backbone's features of the private part of the train split (learn/backbone.py).
    backbone: Path | None = None
    engine: str = "numpy"  # the agents' runtime for the backbone (their device profile)
    # Partition only the private part of the train split, as with a backbone, so that a
    # whole-model swarm can be compared with a head-over-backbone one on the same data.
    private_only: bool = False
    dashboard_port: int | None = None  # serve gateway-1's dashboard on 127.0.0.1:port
    # (node, {"name": attack, "strength": s}): poisoning agents, for the robust-merge tests
    attacks: tuple[tuple[str, dict[str, Any]], ...] = ()
    codec_overrides: tuple[tuple[str, CodecSpec], ...] = ()  # (node, codec) per device
    max_packet: int = 256 * 1024
    n_gateways: int = 1  # more than one: they replicate the ledger by Raft on loopback
    # New records arriving during the run (site/data_arrivals.py): each agent starts with
    # data_first of its partition and gets the rest in data_steps parts, one as each
    # data_every-th round ends. 0 steps: all of it from the start (the standard workload).
    data_steps: int = 0
    data_first: float = 0.25
    data_every: int = 3
    # The genesis's stop rule (swarm/convergence.py), e.g. {"patience": 5, "min_delta": 0.002}:
    # the campaign may end before `rounds`, which is then its most.
    stop: dict[str, Any] | None = None
    # (node, how to start it): a command in front of it and extra environment, e.g. faketime
    wrappers: tuple[tuple[str, Wrapper], ...] = ()
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.agents_per_process < 1:
            raise ValueError(
                f"agents_per_process must be at least 1, got {self.agents_per_process}"
            )


@dataclass
class RunResult:
    config: RunConfig
    layout: SwarmLayout
    workload: Workload
    parts: list[Path]
    rounds: list[RoundRecord]
    peak_rss_kb: dict[str, int]
    bytes_per_agent_round: dict[str, list[tuple[int, int, int]]]
    cold_start_s: float
    wall_s: float
    events: list[Entry] = field(default_factory=list)  # entries seen on ledger/events
    telemetry: dict[str, dict[str, float]] = field(default_factory=dict)  # latest per node
    arrivals: Arrivals | None = None  # with cfg.data_steps: the parts and when they came

    def telemetry_of(self, node: str) -> dict[str, float]:
        return self.telemetry.get(node, {})

    @property
    def final_accuracy(self) -> float:
        accs = [r.accuracy for r in self.rounds if r.accuracy is not None]
        return accs[-1] if accs else float("nan")


def model_spec(n_features: int, n_classes: int, hidden: tuple[int, ...]) -> ModelSpec:
    return ModelSpec(sizes=(n_features, *hidden, n_classes), activation="relu")


@dataclass(frozen=True)
class SiteBroker:
    """The broker a run uses: where it is, and per-user password files when locked down."""

    config: BrokerConfig
    passwords: dict[str, Path] = field(default_factory=dict)
    # The running broker (EmbeddedBroker or MosquittoBroker): fault tests kill and restart it.
    server: Any = field(default=None, compare=False, repr=False)

    def client_options(self, user: str) -> dict[str, Any]:
        """MqttClient keyword arguments for ``user`` (TLS and login when locked down)."""
        if self.config.tls_ca is None:
            return {}
        from edge_swarm.io.mqtt import TlsSettings

        return {
            "tls": TlsSettings(self.config.tls_ca),
            "username": user,
            "password": self.passwords[user].read_text().strip(),
        }


def _locked_down(cfg: RunConfig, workdir: Path) -> tuple[Any, SiteBroker]:
    """A Mosquitto with the site's generated TLS, password and per-device ACL configuration."""
    import getpass

    from edge_swarm.io.broker import MosquittoBroker
    from edge_swarm.site.broker_config import write_broker_config
    from edge_swarm.site.provision import agent_id
    from edge_swarm.trust.pki import write_private

    nodes = {agent_id(i): "agent" for i in range(1, cfg.n_agents + 1)}
    nodes |= {f"gateway-{i}": "gateway" for i in range(1, cfg.n_gateways + 1)}
    files = write_broker_config(
        workdir / "broker",
        cfg.swarm,
        nodes,
        "127.0.0.1",
        free_port(),
        run_as=getpass.getuser(),  # as root, Mosquitto would drop to a user who cannot read these
        max_packet_size=cfg.max_packet,
    )
    passwords = {}
    (workdir / "secrets").mkdir(parents=True, exist_ok=True)
    for user, password in files.credentials.items():
        passwords[user] = workdir / "secrets" / f"{user}.password"
        write_private(passwords[user], password.encode())
    broker = MosquittoBroker(files.port, workdir / "mosquitto", conf=files.conf.read_text())
    return broker, SiteBroker(
        BrokerConfig("127.0.0.1", files.port, tls_ca=files.ca_cert), passwords
    )


@contextlib.contextmanager
def start_broker(cfg: RunConfig, workdir: Path) -> Iterator[SiteBroker]:
    """Start the run's broker on a free loopback port for the run's lifetime.

    Mosquitto is given ``max_packet`` as its packet limit, as a site's broker would have;
    amqtt has no such limit. ``mosquitto-tls`` is a locked-down site broker: TLS from the
    swarm's own CA, a password per device, and an ACL confining each device to its topics.
    """
    from edge_swarm.io.broker import EmbeddedBroker, MosquittoBroker

    kind, max_packet = cfg.broker, cfg.max_packet
    broker: Any
    site: SiteBroker | None = None
    if kind == "mosquitto-tls":
        broker, site = _locked_down(cfg, workdir)
    elif kind == "embedded":
        broker = EmbeddedBroker(host="127.0.0.1", port=0)
    elif kind == "mosquitto":
        limit = f"max_packet_size {max_packet}\n"
        broker = MosquittoBroker(port=0, workdir=workdir / "mosquitto", extra_conf=limit)
    else:
        raise ValueError(f"unknown broker {kind!r}: embedded, mosquitto or mosquitto-tls")
    broker.start()
    try:
        site = site or SiteBroker(BrokerConfig(host="127.0.0.1", port=broker.port))
        yield replace(site, server=broker)
    finally:
        broker.stop()


def prepare(
    cfg: RunConfig, site: SiteBroker
) -> tuple[Workload, list[Path], SwarmLayout, Arrivals | None]:
    """Write partitions (staged when data arrives during the run) and provision the swarm
    in ``cfg.workdir``."""
    workload = WORKLOADS[cfg.workload]()
    backbone = None
    n_inputs = workload.X_train.shape[1]
    if cfg.backbone is not None or cfg.private_only:
        # The agents' partitions come from the private rest; a backbone saw the public part.
        workload = public_private(workload, PUBLIC_FRACTION, cfg.seed)[1]
    if cfg.backbone is not None:
        backbone = read_ref(cfg.backbone)
        n_inputs = backbone.n_features
    parts = write_partitions(
        workload, cfg.n_agents, cfg.alpha, cfg.seed, cfg.workdir / "data", cfg.min_samples
    )
    agent_parts = [p for p in parts if p.name.startswith("agent-")]
    arrivals = None
    if cfg.data_steps:
        arrivals = stage(agent_parts, cfg.data_steps, cfg.data_first, cfg.seed)
    spec = model_spec(n_inputs, int(workload.y_train.max()) + 1, cfg.hidden)
    params = SwarmParams(
        model=spec,
        local=cfg.local,
        merge=cfg.merge,
        rounds=cfg.rounds,
        stop=cfg.stop,
        min_peers=cfg.min_peers,
        round_deadline_s=cfg.round_deadline_s,
        attest_timeout_s=cfg.attest_timeout_s,
        start_grace_s=cfg.start_grace_s,
        init_seed=cfg.seed,
        codec=cfg.codec,
        error_feedback=cfg.error_feedback,
        security=cfg.security,
        backbone=backbone.to_dict() if backbone is not None else None,
        merge_by=cfg.merge_by,
        committee_k=cfg.committee_k,
        downlink=cfg.downlink,
        val_fraction=cfg.val_fraction,
        serve_margin=cfg.serve_margin,
        privacy=cfg.privacy,
        extra={"workload": cfg.workload},
    )
    broker = replace(site.config, keepalive_s=cfg.keepalive_s, max_packet=cfg.max_packet)
    layout = provision_swarm(
        cfg.workdir,
        cfg.swarm,
        params,
        arrivals.dirs if arrivals is not None else agent_parts,
        broker,
        Timing(),
        codec_overrides=dict(cfg.codec_overrides),
        passwords=site.passwords,
        raft_addrs=[f"127.0.0.1:{p}" for p in free_ports(cfg.n_gateways)]
        if cfg.n_gateways > 1
        else None,
        backbone_dir=cfg.backbone,
        runtime=RuntimeConfig(engine=cfg.engine, serve=cfg.serve),
        dashboard=None if cfg.dashboard_port is None else f"127.0.0.1:{cfg.dashboard_port}",
        attacks=dict(cfg.attacks),
    )
    return workload, agent_parts, layout, arrivals


def _arriving(
    arrivals: Arrivals | None, every: int, on_round: Callable[[RoundRecord], None] | None
) -> Callable[[RoundRecord], None] | None:
    """``on_round``, releasing the next step of data as every ``every``-th round ends."""
    if arrivals is None:
        return on_round

    def hook(rec: RoundRecord) -> None:
        step = rec.round // every
        if rec.round % every == 0 and 1 <= step <= arrivals.steps:
            arrivals.release(step)
            log.info("round %d ended: data step %d of %d arrived", rec.round, step, arrivals.steps)
        if on_round is not None:
            on_round(rec)

    return hook


def run_swarm(
    cfg: RunConfig,
    on_round: Callable[[RoundRecord], None] | None = None,
    during: Callable[[SwarmProcesses, SwarmObserver], None] | None = None,
) -> RunResult:
    """Run a whole swarm and return what was observed; raises ``RuntimeError`` on failure.

    ``during(processes, observer)`` runs after the start, for tests that kill or add nodes;
    it must return once its scenario is set up (the run then waits for the last round).
    """
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    with start_broker(cfg, cfg.workdir) as site:
        broker = site.config
        workload, parts, layout, arrivals = prepare(cfg, site)

        X_test = workload.X_test if cfg.backbone is None else _test_features(cfg, workload)

        def accuracy(spec: ModelSpec, params: np.ndarray) -> float:
            return evaluate(spec, params, X_test, workload.y_test)["accuracy"]

        observer = SwarmObserver(
            cfg.swarm,
            broker.host,
            broker.port,
            accuracy,
            _arriving(arrivals, cfg.data_every, on_round),
            mqtt_options=site.client_options("operator"),
            reader=_observer_reader(layout),
        )
        observer.start()
        procs = SwarmProcesses.from_layout(
            layout.gateway_configs,
            layout.agent_configs,
            cfg.workdir / "logs",
            dict(cfg.wrappers),
            agents_per_process=cfg.agents_per_process,
            first=cfg.start_agents,
        )
        procs.broker = site.server
        t0 = time.monotonic()
        try:
            procs.start(list(cfg.start_agents) if cfg.start_agents is not None else None)
            if not observer.wait_for(lambda: 1 in observer.rounds, timeout=120):
                raise RuntimeError(_failure("no round opened within 120 s", procs))
            cold_start = time.monotonic() - t0
            if during is not None:
                during(procs, observer)
            if not observer.wait_for(
                lambda: (
                    _finished(observer, last_round(observer, cfg.rounds)) or bool(procs.failed())
                ),
                cfg.timeout_s,
            ) or not _finished(observer, last := last_round(observer, cfg.rounds)):
                raise RuntimeError(_failure(f"the swarm did not finish {cfg.rounds} rounds", procs))
            wall = time.monotonic() - t0
            # The last telemetry reports follow the last checkpoint by a moment.
            observer.wait_for(lambda: _telemetry_done(observer, procs, last), timeout=10)
        finally:
            procs.stop()
            observer.stop()
    rounds = [observer.rounds[r] for r in sorted(observer.rounds)]
    return RunResult(
        config=cfg,
        layout=layout,
        workload=workload,
        parts=parts,
        rounds=rounds,
        peak_rss_kb=observer.peak_rss_kb(),
        bytes_per_agent_round={n: observer.bytes_per_round(n) for n in observer.telemetry},
        cold_start_s=cold_start,
        wall_s=wall,
        events=list(observer.entries),
        telemetry={n: dict(r[-1].values) for n, r in observer.telemetry.items() if r},
        arrivals=arrivals,
    )


def _test_features(cfg: RunConfig, workload: Workload) -> np.ndarray:
    """The test set through the swarm's backbone (numpy), for the observer's accuracy."""
    from edge_swarm.learn.backbone import features, load_backbone

    assert cfg.backbone is not None
    model = load_backbone(cfg.backbone, read_ref(cfg.backbone), "numpy")
    return features(model, workload.X_test)


def _observer_reader(layout: SwarmLayout) -> tuple[str, EncryptionKey] | None:
    """The enrolled observer's identity: it reads the sealed global model to report accuracy."""
    if layout.observer_enc_key is None:
        return None
    return OBSERVER_ID, EncryptionKey.load(layout.observer_enc_key)


def campaign_end(entries: list[Entry]) -> str | None:
    """Why the campaign ended early (a ``campaign`` end entry's reason), or None."""
    ends = [e for e in entries if e.kind == "campaign" and e.payload.get("op") == "end"]
    return str(ends[-1].payload.get("reason") or "ended") if ends else None


def last_round(observer: SwarmObserver, budget: int) -> int:
    """The run's last round: the budget's, or the last opened once the campaign has ended
    (a stop rule, an admin): the round open when it ended still finishes."""
    if campaign_end(observer.entries) is None:
        return budget
    return max((r for r, rec in observer.rounds.items() if rec.opened_ms), default=budget)


def _finished(observer: SwarmObserver, rounds: int) -> bool:
    rec = observer.rounds.get(rounds)
    return rec is not None and rec.final_ms > 0 and (rec.accuracy is not None or not rec.included)


def _telemetry_done(observer: SwarmObserver, procs: SwarmProcesses, rounds: int) -> bool:
    alive = [n for n, p in procs.agents.items() if p.alive]
    return all(any(t.round >= rounds for t in observer.telemetry.get(n, [])) for n in alive)


def _failure(what: str, procs: SwarmProcesses) -> str:
    lines = [what]
    # Each node's own log, then what each process running a group of agents said itself.
    for p in [*procs.gateways.values(), *procs.agents.values(), *procs.groups]:
        state = "running" if p.alive else f"exited {p.proc.returncode if p.proc else '-'}"
        lines.append(f"--- {p.node} ({state}), last lines of {p.log_path}:\n{p.tail(8)}")
    return "\n".join(lines)
