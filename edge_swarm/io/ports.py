"""Free TCP ports for brokers, Raft replicas and dashboards started on this machine.

Ports are drawn at random from below the kernel's ephemeral range: a port picked there and
bound later (a Raft replica restarted after a kill binds the same port again) cannot be
taken meanwhile by an outgoing connection, which the kernel gives an ephemeral port. Seen
before this: a restarted replica's port held by some client's connection ("Address already
in use"), and the replica could not start.
"""

from __future__ import annotations

import random
import socket

LOWEST = 10_000
_DEFAULT_EPHEMERAL_LOW = 32_768


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` a moment ago, outside the ephemeral range
    where it leaves room (else any free ports the OS picks).

    All sockets stay bound until every port is picked: closed one at a time, the same port
    could be handed out twice (it was, and two Raft replicas then fought for it).
    """
    high = _ephemeral_low()
    rng = random.SystemRandom()
    socks: list[socket.socket] = []
    try:
        for _ in range(200 * n):  # bounded: a busy low range falls back to the OS's pick
            if len(socks) == n or high - LOWEST < 1000:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, rng.randrange(LOWEST, high)))
            except OSError:
                s.close()
                continue
            socks.append(s)
        while len(socks) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (see ``free_ports``)."""
    return free_ports(1, host)[0]
