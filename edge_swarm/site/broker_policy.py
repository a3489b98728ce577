"""The policy a locked-down Mosquitto 2.0 broker of one swarm enforces, as Mosquitto's text:
the per-device ACL (``acl_text``) and ``mosquitto.conf`` (``conf_text``: one TLS listener,
``allow_anonymous false``, a password file, the ACL file, packet and queue limits).

The ACL (topic root ``es/v1/{swarm}/``)
---------------------------------------
==========  =====================================================  =========================
role        may publish                                            may read
==========  =====================================================  =========================
agent       round/+/delta/{id}, round/+/model/{id},                round/+/delta/+,
            round/+/resend/+, ledger/submit, ledger/query,         round/+/resend/{id},
            fleet/status/{id}, fleet/telemetry/{id},               round/+/share/{id},
            round/+/share/+, round/+/reveal/{id}                   round/+/reveal/+,
                                                                   model/#, ledger/events,
                                                                   ledger/bodies,
                                                                   ledger/reply/{id},
                                                                   fleet/cmd/{id}, fleet/cmd/all
gateway     ledger/events, ledger/bodies, ledger/reply/+,          as an agent, minus other
            model/#, round/+/model/{id}, round/+/resend/+,         nodes' resend requests, plus
            fleet/status/{id}, fleet/telemetry/{id}                round/+/model/+,
                                                                   ledger/submit, ledger/query,
                                                                   fleet/status/+,
                                                                   fleet/telemetry/+
operator    fleet/cmd/+, ledger/submit, ledger/query               everything under the root,
                                                                   and $SYS/#
==========  =====================================================  =========================

``round/+/model/{id}`` carries a node's copy of a final model that a gateway asked for (a
gateway that lost it while down gets it back from the swarm); only gateways read it.

Every rule is written out in the user's own block: Mosquitto's ``pattern`` lines (``%u``,
``%c``) apply to *every* user, so they cannot tell an agent from a gateway.

Mosquitto facts this relies on (2.0.11; see tests/test_broker_lockdown.py)
-------------------------------------------------------------------------
- A PUBLISH the ACL denies is dropped silently: an MQTT 3.1.1 client is still acknowledged
  (PUBACK) and stays connected; no subscriber receives the message.
- A SUBSCRIBE the ACL denies gets the failure code 0x80 in its SUBACK.
- A refused password gets CONNACK "not authorized" (code 5) on MQTT 3.1.1.
- Run as root, Mosquitto 2.0 drops to ``user`` as soon as the configuration is read, *before*
  it loads certificates, the password file and the ACL: they must be readable by that user.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edge_swarm.swarm.topics import ALL, Topics

ROLES = ("agent", "gateway", "operator")
"""The roles a broker user can have."""

DEFAULT_MAX_PACKET = 16 * 1024 * 1024 + 64 * 1024
"""The broker's largest packet, in bytes: one 16 MiB delta envelope plus headers."""

_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class BrokerConfigError(ValueError):
    """The arguments cannot make a valid broker configuration (the message says why)."""


# --------------------------------------------------------------------------- text


def _rules(t: Topics, user: str, role: str) -> tuple[list[str], list[str]]:
    """(write, read) topic filters of ``user`` with ``role``."""
    own_status = [t.fleet_status(user), t.fleet_telemetry(user), t.fleet_ack(user)]
    own_in = [t.ledger_reply(user), t.fleet_cmd(user), t.fleet_cmd(ALL)]
    model = f"{t.root}model/#"
    if role == "agent":
        write = [
            f"{t.root}round/+/delta/{user}",
            f"{t.root}round/+/model/{user}",
            t.resend_filter(),
            f"{t.root}round/+/share/+",  # secure aggregation (swarm/secagg.py)
            f"{t.root}round/+/reveal/{user}",
            t.ledger_submit(),
            t.ledger_query(),
            *own_status,
        ]
        read = [
            t.delta_filter(),
            t.resend_filter(user),
            t.share_filter(user),
            t.reveal_filter(),  # drawn onto a committee, it unmasks too
            model,
            t.ledger_events(),
            t.ledger_bodies(),
            *own_in,
        ]
    elif role == "gateway":
        write = [
            t.ledger_events(),
            t.ledger_bodies(),
            f"{t.root}ledger/reply/+",
            model,
            f"{t.root}round/+/model/{user}",
            t.resend_filter(),
            *own_status,
        ]
        read = [
            t.delta_filter(),
            t.resend_filter(user),
            t.model_offer_filter(),
            t.reveal_filter(),
            model,
            t.ledger_submit(),
            t.ledger_query(),
            t.ledger_events(),
            t.fleet_status_filter(),
            t.fleet_telemetry_filter(),
            *own_in,
        ]
    elif role == "operator":
        write = [f"{t.root}fleet/cmd/+", t.ledger_submit(), t.ledger_query()]
        read = [f"{t.root}#", "$SYS/#"]
    else:
        raise BrokerConfigError(f"unknown role {role!r} for {user!r}; known: {ROLES}")
    return write, read


def acl_text(swarm: str, roles: Mapping[str, str]) -> str:
    """The ACL file for ``roles`` (user -> role), one ``user`` block each, sorted by user."""
    t = Topics(swarm)
    lines = [
        f"# edge-swarm ACL for swarm {swarm!r} (generated; edit the enrolment, not this file).",
        "# No topic lines before the first 'user': anonymous clients get nothing.",
        "",
    ]
    for user in sorted(roles):
        write, read = _rules(t, user, roles[user])
        lines.append(f"# {roles[user]}")
        lines.append(f"user {user}")
        lines += [f"topic write {w}" for w in write]
        lines += [f"topic read {r}" for r in read]
        lines.append("")
    return "\n".join(lines)


def conf_text(
    *,
    conf_dir: Path,
    host: str,
    port: int,
    tls_version: str = "tlsv1.2",
    require_certificate: bool = False,
    run_as: str | None = "mosquitto",
    max_packet_size: int = DEFAULT_MAX_PACKET,
    persistence_dir: str | None = None,
) -> str:
    """The ``mosquitto.conf`` text; file paths are ``conf_dir``/name (as on the broker host)."""

    def p(name: str) -> str:
        return str(conf_dir / name)

    listener = f"listener {port}" if host in _WILDCARD_HOSTS else f"listener {port} {host}"
    persistence = (
        ["persistence true", f"persistence_location {persistence_dir.rstrip('/')}/"]
        if persistence_dir
        else ["persistence false"]
    )
    user = (
        ["# Run as root, Mosquitto drops to this user before reading the files above.",
         f"user {run_as}", ""]
        if run_as
        else []
    )  # fmt: skip
    lines = [
        "# edge-swarm broker configuration (generated by write_broker_config). See",
        "# broker/README.md and docs/SECURITY.md for what each part defends against.",
        "",
        "# One set of security settings for every listener.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {p('passwd')}",
        f"acl_file {p('acl')}",
        "",
        *user,
        "retain_available true",
        f"max_packet_size {max_packet_size}",
        "max_inflight_messages 20",
        "max_queued_messages 1000",
        "max_queued_bytes 268435456",
        "set_tcp_nodelay true",
        *persistence,
        "",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "",
        "# The only listener: MQTT over TLS, with the swarm CA's certificate.",
        listener,
        "protocol mqtt",
        f"cafile {p('ca.crt')}",
        f"certfile {p('server.crt')}",
        f"keyfile {p('server.key')}",
        f"tls_version {tls_version}",
        f"require_certificate {'true' if require_certificate else 'false'}",
        # Passwords stay required even when a client certificate is: a stolen certificate
        # alone does not make a device.
        "use_identity_as_username false",
        "",
    ]
    return "\n".join(lines)
