"""A locked-down Mosquitto 2.0 configuration for one swarm: TLS, passwords, per-device ACL.

How it works
------------
``write_broker_config(out_dir, swarm, nodes)`` writes into ``out_dir``::

    mosquitto.conf      one TLS listener, allow_anonymous false, password_file, acl_file
    ca.crt, ca.key      the swarm CA (reused when already there: devices keep trusting it);
                        ca.key stays with the operator, the broker does not need it
    server.crt/.key     the broker's certificate, issued by the CA for ``host`` + ``hostnames``
    passwd              one ``user:$7$...`` line per node and the operator (hashed, 0600)
    acl                 one ``user`` block per node, by role (below)
    clients/{id}.crt/.key   only with ``client_certs=True`` (then ``require_certificate true``)

and returns a ``BrokerFiles`` with those paths and the new plaintext passwords, which the
enrolment step hands to each device. Usernames are node ids; passwords are
``secrets.token_urlsafe(24)`` (192 random bits). Hashes are Mosquitto's ``$7$`` format
(PBKDF2-HMAC-SHA512, 12-byte salt): made by the ``mosquitto_passwd`` binary when present
(``-U`` over a 0600 temporary file, so no password ever appears on a command line) and
otherwise by ``mosquitto_hash`` here, which produces the same format.

Running it again (a device enrolled or revoked) keeps the CA and, by default, the password
hashes of nodes still listed, drops the users no longer listed and issues passwords only for
new nodes; ``kill -HUP`` makes a running Mosquitto reload the password and ACL files.

The ACL (topic root ``es/v1/{swarm}/``)
---------------------------------------
==========  =====================================================  =========================
role        may publish                                            may read
==========  =====================================================  =========================
agent       round/+/delta/{id}, round/+/resend/+, ledger/submit,   round/+/delta/+,
            ledger/query, fleet/status/{id},                       round/+/resend/{id},
            fleet/telemetry/{id}                                   model/#, ledger/events,
                                                                   ledger/reply/{id},
                                                                   fleet/cmd/{id}, fleet/cmd/all
gateway     ledger/events, ledger/reply/+, model/#,                as an agent, minus other
            round/+/resend/+, fleet/status/{id},                   nodes' resend requests, plus
            fleet/telemetry/{id}                                   ledger/submit, ledger/query,
                                                                   fleet/status/+,
                                                                   fleet/telemetry/+
operator    fleet/cmd/+, ledger/submit, ledger/query               everything under the root,
                                                                   and $SYS/#
==========  =====================================================  =========================

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

import base64
import hashlib
import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_swarm.swarm.topics import ALL, TopicError, Topics, validate_id
from edge_swarm.trust.pki import (
    CertPair,
    PkiError,
    issue_client_cert,
    issue_server_cert,
    make_ca,
    write_private,
    write_public,
)

__all__ = [
    "DEFAULT_MAX_PACKET",
    "ROLES",
    "BrokerConfigError",
    "BrokerFiles",
    "acl_text",
    "conf_text",
    "find_mosquitto_passwd",
    "mosquitto_hash",
    "write_broker_config",
]

log = logging.getLogger(__name__)

ROLES = ("agent", "gateway", "operator")
"""The roles a broker user can have."""

DEFAULT_MAX_PACKET = 16 * 1024 * 1024 + 64 * 1024
"""The broker's largest packet, in bytes: one 16 MiB delta envelope plus headers."""

PBKDF2_ITERATIONS = 101
"""PBKDF2 rounds of a ``$7$`` hash: ``mosquitto_passwd`` 2.0's own default. Passwords here
are 192 random bits, so the rounds add nothing to their strength; more would only slow every
CONNECT on a Pi-class broker."""

PASSWORD_BYTES = 24
"""Random bytes in a generated password (``secrets.token_urlsafe``: 32 characters)."""

_PASSWD_TIMEOUT_S = 30.0  # mosquitto_passwd -U over a few hundred users takes well under 1 s
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class BrokerConfigError(ValueError):
    """The arguments cannot make a valid broker configuration (the message says why)."""


@dataclass(frozen=True, eq=False)
class BrokerFiles:
    """What ``write_broker_config`` wrote, and the secrets it made.

    ``credentials`` maps each user that got a new password in this call to that password
    (plaintext: hand it to the device, then forget it; only its hash is on disk). Users whose
    existing hash was kept are in ``kept``. ``roles`` maps every user in the password file to
    its role. ``client_certs`` maps node ids to (certificate, key) paths when client
    certificates were issued.
    """

    out_dir: Path
    conf: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    password_file: Path
    acl_file: Path
    host: str
    port: int
    roles: dict[str, str]
    credentials: dict[str, str] = field(repr=False)
    kept: tuple[str, ...] = ()
    client_certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)


# --------------------------------------------------------------------------- passwords


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Mosquitto 2.0's ``$7$`` password hash: ``$7$iterations$b64(salt)$b64(PBKDF2-SHA512)``.

    ``salt`` defaults to 12 random bytes (as ``mosquitto_passwd``). The same password and salt
    give the same string as ``mosquitto_passwd`` does.
    """
    if not isinstance(password, str) or not password:
        raise BrokerConfigError("a password must be a non-empty string")
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def find_mosquitto_passwd() -> str | None:
    """The path of the ``mosquitto_passwd`` binary, or None."""
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for candidate in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _hash_with_binary(binary: str, users: Mapping[str, str], workdir: Path) -> dict[str, str]:
    """Hash ``users`` with ``mosquitto_passwd -U`` on a 0600 file that is removed after."""
    tmp = workdir / f".passwd-plain.{os.getpid()}"
    try:
        write_private(tmp, "".join(f"{u}:{p}\n" for u, p in users.items()).encode())
        done = subprocess.run(
            [binary, "-U", str(tmp)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PASSWD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()
            raise BrokerConfigError(f"{binary} -U failed ({done.returncode}): {err}")
        hashed = _parse_passwd(tmp.read_text(encoding="utf-8"))
    finally:
        tmp.unlink(missing_ok=True)
    if set(hashed) != set(users) or not all(h.startswith("$7$") for h in hashed.values()):
        raise BrokerConfigError(f"{binary} -U did not hash every user in the $7$ format")
    return hashed


def _parse_passwd(text: str) -> dict[str, str]:
    """``user:hash`` lines (comments and blank lines skipped) as a mapping."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if sep:
            out[user] = hashed
    return out


def _hash_all(users: Mapping[str, str], hasher: str, workdir: Path) -> dict[str, str]:
    if not users:
        return {}
    binary = find_mosquitto_passwd() if hasher in ("auto", "mosquitto_passwd") else None
    if hasher == "mosquitto_passwd" and binary is None:
        raise BrokerConfigError("mosquitto_passwd not found (apt-get install mosquitto)")
    if binary is not None:
        return _hash_with_binary(binary, users, workdir)
    return {u: mosquitto_hash(p) for u, p in users.items()}


# --------------------------------------------------------------------------- text


def _rules(t: Topics, user: str, role: str) -> tuple[list[str], list[str]]:
    """(write, read) topic filters of ``user`` with ``role``."""
    own_status = [t.fleet_status(user), t.fleet_telemetry(user), t.fleet_ack(user)]
    own_in = [t.ledger_reply(user), t.fleet_cmd(user), t.fleet_cmd(ALL)]
    model = f"{t.root}model/#"
    if role == "agent":
        write = [
            f"{t.root}round/+/delta/{user}",
            t.resend_filter(),
            t.ledger_submit(),
            t.ledger_query(),
            *own_status,
        ]
        read = [t.delta_filter(), t.resend_filter(user), model, t.ledger_events(), *own_in]
    elif role == "gateway":
        write = [
            t.ledger_events(),
            f"{t.root}ledger/reply/+",
            model,
            t.resend_filter(),
            *own_status,
        ]
        read = [
            t.delta_filter(),
            t.resend_filter(user),
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


# --------------------------------------------------------------------------- writing


def _check_roles(nodes: Mapping[str, str], operator: str | None) -> dict[str, str]:
    roles: dict[str, str] = {}
    for node, role in nodes.items():
        try:
            validate_id(node, "node id")
        except TopicError as exc:
            raise BrokerConfigError(str(exc)) from None
        if node == ALL:
            raise BrokerConfigError(f"{ALL!r} addresses every node; it cannot be a node id")
        if role not in ROLES:
            raise BrokerConfigError(f"node {node!r}: unknown role {role!r}; known: {ROLES}")
        roles[node] = role
    if operator is not None:
        if roles.get(operator, "operator") != "operator":
            raise BrokerConfigError(f"operator user {operator!r} is also a {roles[operator]}")
        return _check_roles({**roles, operator: "operator"}, None)
    return roles


def _load_or_make_ca(out: Path, swarm: str, ca: CertPair | None) -> CertPair:
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    if ca is None and cert_path.exists() and key_path.exists():
        ca = CertPair(cert_path.read_bytes(), key_path.read_bytes())
        log.info("reusing the swarm CA in %s", out)
    elif ca is None:
        ca = make_ca(swarm)
        log.info("made a new swarm CA in %s", out)
    write_public(cert_path, ca.cert_pem)
    write_private(key_path, ca.key_pem)
    return ca


def _server_hosts(host: str, hostnames: tuple[str, ...]) -> list[str]:
    hosts = [] if host in _WILDCARD_HOSTS else [host]
    hosts += [*hostnames, "localhost", "127.0.0.1"]
    return list(dict.fromkeys(hosts))


def write_broker_config(
    out_dir: str | os.PathLike[str],
    swarm: str,
    nodes: Mapping[str, str],
    host: str = "127.0.0.1",
    port: int = 8883,
    *,
    hostnames: tuple[str, ...] = (),
    operator: str | None = "operator",
    passwords: Mapping[str, str] | None = None,
    keep_existing: bool = True,
    ca: CertPair | None = None,
    conf_dir: str | os.PathLike[str] | None = None,
    tls_version: str = "tlsv1.2",
    client_certs: bool = False,
    run_as: str | None = "mosquitto",
    max_packet_size: int = DEFAULT_MAX_PACKET,
    persistence_dir: str | None = None,
    hasher: str = "auto",
) -> BrokerFiles:
    """Write a TLS + password + per-device-ACL Mosquitto configuration into ``out_dir``.

    ``nodes`` maps node ids (the MQTT usernames) to roles (``agent``, ``gateway``,
    ``operator``); ``operator`` (None: none) adds an operator user. ``host``/``port`` is the
    listener (``0.0.0.0`` for every interface); the server certificate names ``host`` (if not
    a wildcard), ``hostnames``, ``localhost`` and ``127.0.0.1``. ``passwords`` sets chosen
    passwords; other users keep their hash from an existing password file when
    ``keep_existing``, else get a new random password. ``ca`` overrides the CA (default: the
    one in ``out_dir``, else a new one). ``conf_dir`` is where the files will be on the broker
    host (default: ``out_dir``). ``run_as`` is the ``user`` line (None: none). ``hasher`` is
    ``auto``, ``mosquitto_passwd`` or ``python``.

    Returns BrokerFiles. Raises BrokerConfigError on bad arguments, PkiError on a bad CA.
    """
    try:
        Topics(swarm)
    except TopicError as exc:
        raise BrokerConfigError(str(exc)) from None
    roles = _check_roles(nodes, operator)
    if not any(r != "operator" for r in roles.values()):
        raise BrokerConfigError("no nodes: enroll at least one agent or gateway")
    if tls_version not in ("tlsv1.2", "tlsv1.3"):
        raise BrokerConfigError(f"tls_version must be tlsv1.2 or tlsv1.3, not {tls_version!r}")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise BrokerConfigError(f"port {port!r} is not a TCP port")
    if hasher not in ("auto", "mosquitto_passwd", "python"):
        raise BrokerConfigError(f"hasher must be auto, mosquitto_passwd or python: {hasher!r}")
    unknown = sorted(set(passwords or {}) - set(roles))
    if unknown:
        raise BrokerConfigError(f"passwords given for users not in nodes: {unknown}")
    if run_as is not None and not _is_word(run_as):
        raise BrokerConfigError(f"run_as {run_as!r} is not a user name")
    if not isinstance(host, str) or not (host == "" or _is_word(host)):
        raise BrokerConfigError(f"host {host!r} is not an address to listen on")
    if any("\n" in str(x) or "\r" in str(x) for x in (conf_dir or "", persistence_dir or "")):
        raise BrokerConfigError("conf_dir and persistence_dir must be one line each")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = Path(conf_dir) if conf_dir is not None else out.resolve()

    swarm_ca = _load_or_make_ca(out, swarm, ca)
    try:
        server = issue_server_cert(swarm_ca, _server_hosts(host, hostnames))
    except PkiError as exc:
        raise BrokerConfigError(f"server certificate: {exc}") from None
    server_cert = write_public(out / "server.crt", server.cert_pem)
    server_key = write_private(out / "server.key", server.key_pem)

    passwd_path = out / "passwd"
    existing = (
        _parse_passwd(passwd_path.read_text(encoding="utf-8"))
        if keep_existing and passwd_path.exists()
        else {}
    )
    chosen = dict(passwords or {})
    kept = sorted(u for u in roles if u not in chosen and u in existing)
    fresh = {
        u: chosen.get(u) or secrets.token_urlsafe(PASSWORD_BYTES) for u in roles if u not in kept
    }
    hashes = {u: existing[u] for u in kept} | _hash_all(fresh, hasher, out)
    write_private(passwd_path, "".join(f"{u}:{hashes[u]}\n" for u in sorted(roles)).encode())
    acl_path = write_public(out / "acl", acl_text(swarm, roles).encode())

    certs: dict[str, tuple[Path, Path]] = {}
    if client_certs:
        (out / "clients").mkdir(exist_ok=True)
        for user in sorted(roles):
            pair = issue_client_cert(swarm_ca, user)
            certs[user] = (
                write_public(out / "clients" / f"{user}.crt", pair.cert_pem),
                write_private(out / "clients" / f"{user}.key", pair.key_pem),
            )

    conf = write_public(
        out / "mosquitto.conf",
        conf_text(
            conf_dir=target,
            host=host,
            port=port,
            tls_version=tls_version,
            require_certificate=client_certs,
            run_as=run_as,
            max_packet_size=max_packet_size,
            persistence_dir=persistence_dir,
        ).encode(),
    )
    return BrokerFiles(
        out_dir=out,
        conf=conf,
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=server_cert,
        server_key=server_key,
        password_file=passwd_path,
        acl_file=acl_path,
        host=host,
        port=port,
        roles=roles,
        credentials=fresh,
        kept=tuple(kept),
        client_certs=certs,
    )


def _is_word(name: str) -> bool:
    """Whether ``name`` fits on one configuration line (no spaces, no control characters)."""
    return bool(name) and all(c.isprintable() and not c.isspace() for c in name)
