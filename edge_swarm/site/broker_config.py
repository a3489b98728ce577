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
``secrets.token_urlsafe(24)`` (192 random bits), stored as Mosquitto's ``$7$`` hashes.

Running it again (a device enrolled or revoked) keeps the CA and, by default, the password
hashes of nodes still listed, drops the users no longer listed and issues passwords only for
new nodes; ``kill -HUP`` makes a running Mosquitto reload the password and ACL files.

The ACL, ``mosquitto.conf`` and the Mosquitto facts they rely on are in ``broker_policy``,
the password hashes in ``broker_passwd``; their public names are importable from here.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_swarm.site.broker_passwd import (
    PASSWORD_BYTES,
    _hash_all,
    _parse_passwd,
    find_mosquitto_passwd,
    mosquitto_hash,
)
from edge_swarm.site.broker_passwd import PBKDF2_ITERATIONS as PBKDF2_ITERATIONS
from edge_swarm.site.broker_policy import (
    _WILDCARD_HOSTS,
    DEFAULT_MAX_PACKET,
    ROLES,
    BrokerConfigError,
    acl_text,
    conf_text,
)
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
