"""The ``edge-swarm`` command.

Each subcommand imports what it needs when it runs, so that ``edge-swarm agent`` on a Pi
loads numpy, paho and the ledger code, and nothing of scikit-learn, matplotlib or amqtt.
Only this module configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from edge_swarm.cli.privacy_options import add_privacy_options

log = logging.getLogger("edge_swarm")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_DATEFMT = "%H:%M:%S"
# Measured (issue 16): the embedded amqtt broker carries 32 agents; at 64 rounds lose their
# majority to timed-out acknowledgements; Mosquitto carries 100.
EMBEDDED_BROKER_MAX_AGENTS = 32


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=LOG_FORMAT,
        datefmt=LOG_DATEFMT,
    )
    # The broker and client libraries are chatty at INFO; their warnings still show.
    for name in ("amqtt", "transitions", "paho"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_node(args: argparse.Namespace, role: str) -> int:
    from edge_swarm.node.config import ConfigError, load_config
    from ledger_lite.errors import LedgerError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"edge-swarm {role}: {exc}", file=sys.stderr)
        return 2
    if cfg.role != role:
        print(
            f"edge-swarm {role}: {args.config} configures a {cfg.role}, not a {role}",
            file=sys.stderr,
        )
        return 2
    node: Any
    try:
        if role == "agent":
            from edge_swarm.node.agent import Agent

            node = Agent(cfg)
        else:
            from edge_swarm.node.gateway import Gateway

            node = Gateway(cfg)
    except (OSError, ValueError, LedgerError) as exc:
        print(f"edge-swarm {role}: cannot start: {why_not(exc, cfg)}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        node.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.run()
    except RuntimeError as exc:
        print(f"edge-swarm {role}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_agents(args: argparse.Namespace) -> int:
    from edge_swarm.cli.agents import run_agents

    return run_agents(args.config, args.log_dir)


def why_not(exc: Exception, cfg: Any) -> str:
    """One line on why a node cannot start. A damaged ledger file gets its path and the way
    back (a ledger that lost acknowledged entries says both already: LostEntries)."""
    from ledger_lite.errors import CorruptStore

    if isinstance(exc, CorruptStore) and cfg.ledger_path is not None:
        path = cfg.ledger_path
        return (
            f"{path}: {exc}; recover it with `ledger-lite recover --from COPY --to {path}` "
            f"(COPY: a healthy replica's ledger file)"
        )
    return " ".join(str(exc).split())


def _broker(args: argparse.Namespace) -> int:
    from edge_swarm.io.broker import run_embedded_broker

    if bool(args.swarm) != bool(args.genesis):
        print("edge-swarm broker: --swarm and --genesis go together", file=sys.stderr)
        return 2
    print(f"embedded MQTT broker (amqtt) on {args.host}:{args.port}; Ctrl-C stops it")
    discovery = None

    def advertise() -> None:
        # Devices with no broker address in their config find this one by its advert.
        nonlocal discovery
        from edge_swarm.io.discovery import Discovery, advertised_host
        from edge_swarm.swarm.adverts import SERVICE_MQTT, broker_txt

        interfaces = list(args.interface) or None
        discovery = Discovery(interfaces)
        discovery.advertise(
            SERVICE_MQTT,
            f"{args.swarm}-broker",
            args.port,
            advertised_host(args.host, interfaces),
            broker_txt(args.swarm, args.genesis),
        )

    try:
        run_embedded_broker(args.host, args.port, on_ready=advertise if args.swarm else None)
    finally:
        if discovery is not None:
            discovery.close()  # a goodbye: devices look for the broker's new home at once
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    from edge_swarm.site.broker_config import BrokerConfigError, write_broker_config

    try:
        nodes = dict(n.split("=", 1) for n in args.node)
    except ValueError:
        print("edge-swarm broker config: --node takes ID=ROLE, e.g. pi-1=agent", file=sys.stderr)
        return 2
    try:
        files = write_broker_config(
            args.out,
            args.swarm,
            nodes,
            args.bind_host,
            args.bind_port,
            hostnames=tuple(args.hostname),
        )
    except (BrokerConfigError, ValueError, OSError) as exc:
        print(f"edge-swarm broker config: {exc}", file=sys.stderr)
        return 2
    print(f"Mosquitto configuration: {files.conf}\nCA certificate for devices: {files.ca_cert}")
    for user, password in sorted(files.credentials.items()):
        print(f"  {user}: {password}   (give it to that device only; it is not stored in clear)")
    print(f"run: mosquitto -c {files.conf}")
    return 0


def _lazy(name: str) -> Any:
    """``cli/{name}.py``'s ``run_{name}``, imported only when the subcommand runs."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(f"edge_swarm.cli.{name}"), f"run_{name}")(args))

    return run


_demo, _audit, _operator = _lazy("demo"), _lazy("audit"), _lazy("operator")


MERGE_HELP = (
    "the merge rule, comma-separated over the standard one (FedAvgM, momentum 0.5, plain "
    "mean): a server rule (fedavg, fedavgm, fedadam, fedyogi), an aggregator (mean, median, "
    "trimmed_mean, geomed, krum, multikrum, bulyan), nnm (mix each delta with its nearest "
    "first) and field=value, e.g. nnm+median,f=2 or multikrum,f=2,clip=2; "
    "see docs/ROBUST.md"
)
CONTINUOUS_MAX_ROUNDS = 40  # `demo --continuous`: a cap, should the stop rule never fire

# The poisoning harness's attack names, listed here so that --help does not import numpy.
ATTACK_NAMES = ("sign_flip", "scale", "noise", "huge", "label_flip")


def add_committee_options(p: argparse.ArgumentParser) -> None:
    """Who merges each round (merge_by, committee_k, the downlink codec), and privacy."""
    add_privacy_options(p)
    p.add_argument(
        "--merge-by",
        choices=["committee", "all"],
        default="committee",
        help="who merges each round: the gateways plus --committee-k agents drawn per round "
        "from the ledger, the other agents applying their one merged update (committee, the "
        "default: an agent off it receives no peer's delta; docs/COMMITTEE.md), or every "
        "agent (all: each receives every peer's delta; for small sites and comparison)",
    )
    p.add_argument(
        "--committee-k",
        type=int,
        default=None,
        metavar="K",
        help="agents drawn onto each round's committee beside the gateways (default: 2 with "
        "fewer than 3 gateways, so that no one machine decides the model; 0 with 3 or more, "
        "whose majority already ensures it, and every agent stays light)",
    )
    p.add_argument(
        "--downlink",
        default="int8",
        metavar="CODEC",
        help="committee mode: the codec of the one merged update per round the others apply "
        "instead of the model, as --codec (default int8)",
    )


def _rounds(text: str) -> int | None:
    """``--rounds``: a budget, or ``open``."""
    if text == "open":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor open") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _stop(text: str) -> dict[str, Any]:
    """``--stop PATIENCE[,MIN_DELTA[,METRIC]]`` as the genesis's ``stop`` object."""
    parts = text.split(",")
    try:
        rule: dict[str, Any] = {"patience": int(parts[0])}
        if len(parts) > 1:
            rule["min_delta"] = float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(
            "takes PATIENCE[,MIN_DELTA[,METRIC]], e.g. 3,0.005"
        ) from None
    if len(parts) > 2:
        rule["metric"] = parts[2]
    return rule


def build_parser(node_only: bool = False) -> argparse.ArgumentParser:
    """The command line; ``node_only``: without the operator's commands that load much."""
    p = argparse.ArgumentParser(
        prog="edge-swarm",
        description="Swarm Learning on edge devices: agents train one model together over MQTT; "
        "every round is recorded on a permissioned hash-chain ledger.",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="run a whole swarm on this machine and compare it with training alone and pooled",
    )
    d.add_argument("--workload", default="digits", choices=["digits", "breast_cancer"])
    d.add_argument("--agents", type=int, default=8, help="number of agents (default 8)")
    d.add_argument(
        "--agents-per-process",
        type=int,
        default=1,
        metavar="K",
        help="run K agents in each agent process, a thread each, to fit big swarms on one "
        "machine (default 1: a process per agent, as on a real site)",
    )
    d.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds to train (default 20); with --continuous the most it may train "
        f"(default {CONTINUOUS_MAX_ROUNDS})",
    )
    d.add_argument(
        "--continuous",
        action="store_true",
        help="learn as data arrives: agents start with a quarter of their data, get the rest "
        "in 3 steps, and the campaign ends when the sites' validation stops improving",
    )
    add_committee_options(d)
    d.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway processes; several replicate the ledger by Raft (default 1)",
    )
    d.add_argument(
        "--broker",
        choices=["embedded", "mosquitto", "mosquitto-tls"],
        help="embedded amqtt, a Mosquitto process, or a locked-down Mosquitto (TLS from the "
        "swarm's CA, a password per device, per-device ACL); default: embedded up to "
        f"{EMBEDDED_BROKER_MAX_AGENTS} agents, Mosquitto above where it is installed",
    )
    d.add_argument(
        "--codec",
        default="int8",
        help="delta codec: float32, float16, int8, int4, sign1, optionally with top-k, "
        "e.g. int4+top10 (10%% of the entries); default int8",
    )
    d.add_argument(
        "--no-error-feedback", action="store_true", help="send deltas without error feedback"
    )
    d.add_argument(
        "--backbone",
        help="fine-tune a head over a frozen backbone: a directory from `edge-swarm model "
        "pretrain`, or `auto` to pretrain one on the public part of the data first",
    )
    d.add_argument(
        "--engine",
        default="numpy",
        choices=["numpy", "onnxruntime", "tflite"],
        help="the runtime the agents run the backbone with (default numpy)",
    )
    d.add_argument(
        "--security",
        default="sealed",
        choices=["sealed", "signed", "none"],
        help="deltas signed and encrypted (default), only signed, or neither (a baseline "
        "for comparison only; see docs/SECURITY.md)",
    )
    d.add_argument("--merge", default="", help=MERGE_HELP)
    d.add_argument(
        "--attack",
        choices=ATTACK_NAMES,
        help="make the last --attackers agents poison every round with this attack "
        "(to watch a robust --merge hold; never on a real site)",
    )
    d.add_argument("--attackers", type=int, default=2, help="agents --attack turns (default 2)")
    d.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-run"),
        help="where keys, ledger, logs and the plot go (default ./demo-run)",
    )
    d.add_argument("--keep", action="store_true", help="keep an existing workdir, not a clean one")
    d.set_defaults(func=_demo)

    if not node_only:  # their modules import the operator's side: not on a device
        from edge_swarm.cli import bundle, campaign, discover, fleet, model

        for add in (discover.add_parser, model.add_parsers, fleet.add_parser):
            add(sub)
        campaign.add_parser(sub)
        bundle.add_parser(sub)

    for role in ("agent", "gateway"):
        r = sub.add_parser(
            role, help=f"run a{'n' if role == 'agent' else ''} {role} from its TOML config"
        )
        r.add_argument("--config", required=True, type=Path, help="the node's TOML file")
        r.set_defaults(func=lambda a, role=role: _run_node(a, role))

    ag = sub.add_parser(
        "agents",
        help="run several agents in one process, a thread each (tests and benchmarks)",
        description="Run the agents of several TOML configs in this one process, one thread "
        "each: each keeps its own MQTT connection, keys, state and data; they share the "
        "interpreter and its imports (about 80 MB and a second of start-up per process "
        "saved). SIGTERM or Ctrl-C stops them all; if one ends with an error, the others "
        "are stopped and the exit code is 1. Each log line names its agent.",
    )
    ag.add_argument(
        "--config", required=True, action="append", type=Path, help="an agent's TOML; repeat"
    )
    ag.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="write each agent's lines to DIR/NODE.log (standard error keeps the rest); "
        "default: all on standard error",
    )
    ag.set_defaults(func=_run_agents)

    b = sub.add_parser("broker", help="run the embedded broker, or write a site's Mosquitto config")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=1883)
    b.add_argument("--swarm", help="advertise the broker for this swarm on the LAN (zeroconf)")
    b.add_argument("--genesis", help="the swarm's genesis hash, put in the advert")
    b.add_argument("--interface", action="append", default=[], help="IPv4 address to advertise on")
    b.set_defaults(func=_broker)
    bsub = b.add_subparsers(dest="broker_command", metavar="ACTION")
    bc = bsub.add_parser(
        "config", help="write a TLS + password + per-device ACL Mosquitto configuration"
    )
    bc.add_argument("--swarm", required=True)
    bc.add_argument("--out", type=Path, required=True, help="directory for the broker's files")
    bc.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="ID=ROLE",
        help="a device and its role (agent or gateway); repeat for each",
    )
    bc.add_argument("--host", dest="bind_host", default="0.0.0.0", help="listener address")
    bc.add_argument("--port", dest="bind_port", type=int, default=8883)
    bc.add_argument("--hostname", action="append", default=[], help="names in the certificate")
    bc.set_defaults(func=_broker_config)

    k = sub.add_parser(
        "keygen",
        help="make this device's key pair and print its enrolment request",
        description="Make this device's signing key (KEY) and encryption key (KEY.enc), both "
        "owner-only. Standard output is the enrolment request alone, as JSON, so that "
        "`edge-swarm keygen ... > request.json` saves what `edge-swarm enroll --request "
        "request.json` takes; what it tells you goes to standard error.",
    )
    k.add_argument("--node-id", required=True, help="the device's id, e.g. pi-ward3-01")
    k.add_argument(
        "--key",
        type=Path,
        required=True,
        help="where to keep the signing key (0600); the encryption key goes to KEY.enc",
    )
    k.add_argument("--role", default="agent", choices=["agent", "gateway", "observer"])
    k.set_defaults(func=_operator, op="keygen")

    ad = sub.add_parser("admin", help="swarm administration: admin init")
    adsub = ad.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    ai = adsub.add_parser("init", help="make the admin key and the genesis of a new swarm")
    ai.add_argument("--swarm", required=True, help="the swarm's id")
    ai.add_argument(
        "--out", type=Path, required=True, help="directory for admin.key and bootstrap.jsonl"
    )
    ai.add_argument("--model", default="64,32,10", help="MLP layer sizes (default 64,32,10)")
    ai.add_argument(
        "--rounds",
        type=_rounds,
        default=20,
        metavar="N|open",
        help="the first campaign's round budget (default 20), or open: no budget, until "
        "`edge-swarm campaign end` or the stop rule (docs/CAMPAIGNS.md)",
    )
    ai.add_argument(
        "--cadence-s",
        type=float,
        metavar="S",
        help="open rounds at least S seconds apart (on the coordinator's monotonic clock)",
    )
    ai.add_argument(
        "--stop",
        type=_stop,
        metavar="PATIENCE[,MIN_DELTA[,METRIC]]",
        help="end a campaign once the sites' mean validation metric (val_acc) has not "
        "improved by MIN_DELTA (default 0) for PATIENCE rounds, e.g. 3,0.005",
    )
    ai.add_argument(
        "--security",
        default="sealed",
        choices=["sealed", "signed"],
        help="deltas signed and encrypted (default), or only signed",
    )
    ai.add_argument("--codec", default="int8", help="delta codec (see demo --codec)")
    ai.add_argument("--merge", default="", help=MERGE_HELP)
    add_committee_options(ai)
    ai.set_defaults(func=_operator, op="admin-init")

    for name, what in (("enroll", "enrol a device"), ("revoke", "revoke a device")):
        e = sub.add_parser(name, help=f"{what}: an admin-signed ledger entry")
        e.add_argument("--admin-key", type=Path, required=True)
        e.add_argument("--swarm", required=True)
        where = e.add_mutually_exclusive_group(required=True)
        where.add_argument("--bootstrap", type=Path, help="append to a site's bootstrap file")
        where.add_argument("--broker", help="submit to a running site: HOST:PORT")
        if name == "enroll":
            e.add_argument("--request", required=True, help="the device's request JSON file, or -")
            e.add_argument("--expires-days", type=float, help="enrolment ends after this long")
        else:
            e.add_argument("--node", required=True)
            e.add_argument("--reason", default="revoked by the operator")
        e.set_defaults(func=_operator, op=name)

    a = sub.add_parser("audit", help="who contributed what to each round, from a ledger file")
    a.add_argument("ledger", type=Path, help="the gateway's ledger.sqlite")
    a.add_argument("--round", type=int, help="only this round")
    a.add_argument("--json", action="store_true", help="one JSON object per round")
    a.set_defaults(func=_audit)
    return p


NODE_COMMANDS = frozenset({"agent", "gateway", "agents"})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next(
        (a for i, a in enumerate(argv) if a[:1] != "-" and argv[i - 1 : i] != ["--log-level"]), None
    )
    args = build_parser(command in NODE_COMMANDS).parse_args(argv)
    _setup_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
