"""The broker's password file: Mosquitto 2.0's ``$7$`` hashes, and ``mosquitto_passwd``.

Hashes are Mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512, 12-byte salt): made by the
``mosquitto_passwd`` binary when present (``-U`` over a 0600 temporary file, so no password
ever appears on a command line) and otherwise by ``mosquitto_hash`` here, which produces the
same format. Generated passwords are ``secrets.token_urlsafe(PASSWORD_BYTES)`` (192 random
bits).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from edge_swarm.site.broker_policy import BrokerConfigError
from edge_swarm.trust.pki import write_private

PBKDF2_ITERATIONS = 101
"""PBKDF2 rounds of a ``$7$`` hash: ``mosquitto_passwd`` 2.0's own default. Passwords here
are 192 random bits, so the rounds add nothing to their strength; more would only slow every
CONNECT on a Pi-class broker."""

PASSWORD_BYTES = 24
"""Random bytes in a generated password (``secrets.token_urlsafe``: 32 characters)."""

_PASSWD_TIMEOUT_S = 30.0  # mosquitto_passwd -U over a few hundred users takes well under 1 s

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
