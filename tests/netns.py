"""A LAN of hosts built from Linux network namespaces, for tests that need real multicast.

    require_netns()                      # skip (or, with EDGE_SWARM_REQUIRE_NETNS=1, fail)
    with Lan(2) as lan:
        a, b = lan.hosts
        proc = a.run([sys.executable, "server.py"], stdout=subprocess.PIPE)
        LineReader(proc.stdout).expect("ready", timeout=10)
        print(b.check(["ip", "addr"]))

Layout: one *hub* namespace holds a Linux bridge ``br0``; each host namespace has one veth
(``es0``, the address ``Host.ip``) whose peer (``p<i>``) is a port of that bridge. Every link
is created directly inside a namespace, none ever appears in the root namespace, so deleting
the namespaces removes all of them, and parallel runs cannot clash on interface names or
addresses (each LAN has its own network stack; the third octet of the default subnet still
differs between runs so that captures and logs are told apart).

Choices that keep multicast (mDNS on 224.0.0.251:5353) deterministic:

- the bridge has multicast snooping off, so it floods every group to every port instead of
  depending on IGMP reports and querier state;
- each host has a ``224.0.0.0/4`` route on its veth. Sockets that set ``IP_MULTICAST_IF``
  (python-zeroconf does) would work without it, but a plain ``sendto(224.x)`` would get
  ENETUNREACH, as the namespace has no default route;
- IPv6 is off in every namespace (``ipv6=True`` keeps it): otherwise each veth gets a
  link-local address that stays *tentative* (unusable for bind) during ~1-2 s of duplicate
  address detection, and the kernel sends MLD/router solicitations over the bridge. With it
  off, anything that accidentally relies on IPv6 fails at once instead of racing DAD;
- ``lo`` is up in every namespace (a fresh namespace has it down, and 127.0.0.1 is
  unreachable until it is up).

Every namespace name starts with ``<prefix>-`` and the default prefix is
``esw-<pid>-<n>``; `cleanup_stale` (run by each `Lan` on entry) deletes namespaces whose
creating pid is gone, killing whatever still runs in them first.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

import pytest

REQUIRE_NETNS_ENV = "EDGE_SWARM_REQUIRE_NETNS"
PREFIX_ROOT = "esw-"
IP_TIMEOUT_S = 15.0  # one `ip` invocation; they take milliseconds
CHECK_TIMEOUT_S = 30.0  # default for Host.check
STOP_GRACE_S = 2.0  # SIGTERM -> SIGKILL, for processes started with Host.run
HOST_IFACE = "es0"
BRIDGE = "br0"

_lan_ids = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip`` command or a command run in a namespace failed (message has its stderr)."""


# --------------------------------------------------------------------------- plumbing


def _run(argv: Sequence[str], *, timeout: float = IP_TIMEOUT_S, input: str | None = None) -> str:
    """Run argv to completion in its own process group; return stdout or raise NetnsError.

    On timeout the whole process group is killed, so nothing outlives the call.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise NetnsError(
            f"timed out after {timeout} s: {' '.join(argv)}\nstdout: {out}\nstderr: {err}"
        ) from None
    except BaseException:
        _killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise NetnsError(
            f"exit {proc.returncode}: {' '.join(argv)}\nstdout: {out.strip()}\n"
            f"stderr: {err.strip()}"
        )
    return out


def _ip(*args: str, input: str | None = None) -> str:
    return _run(["ip", *args], input=input)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _list_netns() -> list[str]:
    # `ip netns list` prints "name" or "name (id: N)"
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _kill_netns_pids(ns: str) -> None:
    """SIGKILL every process still inside `ns` (e.g. grandchildren that left their group)."""
    try:
        pids = _ip("netns", "pids", ns).split()
    except NetnsError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _delete_netns(ns: str) -> None:
    _kill_netns_pids(ns)
    _ip("netns", "del", ns)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- availability


@functools.cache
def netns_available() -> str | None:
    """None if this process can build a `Lan` here, else a one-line reason (cached).

    Probes for real: creates a namespace holding a bridge and a veth pair, then deletes it.
    """
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "not root (ip netns add needs CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "ip not found (apt-get install iproute2)"
    ns = f"{PREFIX_ROOT}{os.getpid()}-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", ns)
    except (NetnsError, OSError) as e:
        return "ip netns add failed: " + " ".join(str(e).split())
    try:
        _ip(
            "-n",
            ns,
            "-batch",
            "-",
            input="link add name br0 type bridge\nlink add name va type veth peer name vb\n",
        )
    except (NetnsError, OSError) as e:
        return "cannot create bridge/veth in a namespace: " + " ".join(str(e).split())
    finally:
        with contextlib.suppress(NetnsError, OSError):
            _ip("netns", "del", ns)
    return None


def require_netns() -> None:
    """Skip the calling test if namespaces are unavailable; fail instead when
    ``EDGE_SWARM_REQUIRE_NETNS=1`` (CI)."""
    reason = netns_available()
    if reason is None:
        return
    if os.environ.get(REQUIRE_NETNS_ENV) == "1":
        pytest.fail(f"{REQUIRE_NETNS_ENV}=1 but network namespaces are unavailable: {reason}")
    pytest.skip(f"network namespaces unavailable: {reason}; set {REQUIRE_NETNS_ENV}=1 to fail")


def cleanup_stale(prefix_root: str = PREFIX_ROOT) -> list[str]:
    """Delete namespaces named ``<prefix_root><pid>-...`` whose pid no longer runs (left by a
    crashed or killed run), killing any process still inside. Namespaces of live runs, and
    names without a pid, are left alone. Returns the names removed."""
    pattern = re.compile(re.escape(prefix_root) + r"(\d+)-")
    removed = []
    for ns in _list_netns():
        m = pattern.match(ns)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            _delete_netns(ns)
        except NetnsError:
            continue  # raced with another run cleaning up the same leftover
        removed.append(ns)
    return removed


# --------------------------------------------------------------------------- reading output


class LineReader:
    """Reads lines from a child's stdout pipe with deadlines (select on the raw fd, no
    threads). Do not read the same stream any other way: this keeps its own buffer."""

    def __init__(self, stream: IO[Any]) -> None:
        self._fd = stream.fileno()
        self._buf = b""
        self._eof = False
        self.lines: list[str] = []  # every line returned so far, for error messages

    def readline(self, timeout: float) -> str:
        """The next line without its newline; "" at end of stream; TimeoutError after
        `timeout` s."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf and not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete line within {timeout} s (got {self.lines})")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if ready:
                chunk = os.read(self._fd, 65536)
                self._buf += chunk
                self._eof = not chunk
        if b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
        else:
            raw, self._buf = self._buf, b""
        line = raw.decode(errors="replace")
        if raw:
            self.lines.append(line)
        return line

    def expect(self, match: str | Callable[[str], bool], timeout: float) -> str:
        """Read lines until one equals `match` (or satisfies it, if callable); return it.
        TimeoutError after `timeout` s in all; EOFError if the stream ends first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line == "" and self._eof and not self._buf:
                raise EOFError(f"stream ended before {match!r} (got {self.lines})")
            if match(line) if callable(match) else line == match:
                return line


# --------------------------------------------------------------------------- the LAN


@dataclass
class Host:
    """One host of a `Lan`: namespace `ns`, interface `iface` carrying address `ip`."""

    ns: str
    ip: str
    iface: str
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``ip netns exec <ns> <argv>`` in a new process group and return it (the
        Popen's pid is argv's own: ``ip netns exec`` execs it). The `Lan` kills it on exit."""
        popen_kwargs["start_new_session"] = True
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def check(self, argv: Sequence[str], timeout: float = CHECK_TIMEOUT_S) -> str:
        """Run argv in this namespace to completion; return stdout. NetnsError (with stdout
        and stderr) on a non-zero exit or after `timeout` s (the process group is killed)."""
        return _run(["ip", "netns", "exec", self.ns, *argv], timeout=timeout)


class Lan:
    """`n_hosts` namespaces on one bridged Ethernet segment; a context manager that
    removes everything it made, also when set-up fails halfway.

    Host i gets the (i+1)-th address of `subnet` (default ``10.231.X.0/24``).
    """

    def __init__(
        self,
        n_hosts: int,
        prefix: str | None = None,
        subnet: str | None = None,
        *,
        ipv6: bool = False,
        stop_grace: float = STOP_GRACE_S,
    ) -> None:
        n = next(_lan_ids)
        pid = os.getpid()
        self.prefix = prefix or f"{PREFIX_ROOT}{pid}-{n}"
        if subnet is None:
            # Any value is safe (every LAN is its own network stack); varying it only keeps
            # captures and logs of parallel runs apart.
            subnet = f"10.231.{(pid * 7 + n) % 254 + 1}.0/24"
        self.subnet = ipaddress.ip_network(subnet)
        if self.subnet.version != 4:
            raise ValueError(f"subnet must be IPv4: {subnet}")
        if not 1 <= n_hosts <= min(self.subnet.num_addresses - 2, 250):
            raise ValueError(f"{n_hosts} hosts do not fit in {subnet}")
        self.ipv6 = ipv6
        self.stop_grace = stop_grace
        self.hub = f"{self.prefix}-hub"
        self.hosts = [
            Host(ns=f"{self.prefix}-h{i}", ip=str(self.subnet[i + 1]), iface=HOST_IFACE)
            for i in range(n_hosts)
        ]
        self.created: list[str] = []  # namespaces this Lan made (and so must delete)

    # ----------------------------------------------------------------- set-up

    def __enter__(self) -> Lan:
        try:
            cleanup_stale(PREFIX_ROOT)
            for ns in [self.hub, *(h.ns for h in self.hosts)]:
                self._add_netns(ns)
            self._setup_hub()
            for i, host in enumerate(self.hosts):
                self._setup_host(i, host)
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.created.append(ns)
        # Before any link exists, so new links inherit the "default" settings.
        script = "[ -d /proc/sys/net/ipv6 ] || exit 0\n" + "".join(
            f"echo {0 if self.ipv6 else 1} > /proc/sys/net/ipv6/conf/{c}/disable_ipv6\n"
            for c in ("all", "default")
        )
        _run(["ip", "netns", "exec", ns, "sh", "-ec", script])

    def _setup_hub(self) -> None:
        cmds = [f"link add name {BRIDGE} type bridge mcast_snooping 0 stp_state 0"]
        for i, host in enumerate(self.hosts):
            port = f"p{i}"
            cmds += [
                f"link add name {port} type veth peer name {host.iface} netns {host.ns}",
                f"link set {port} master {BRIDGE}",
                f"link set {port} multicast on up",
            ]
        cmds.append(f"link set {BRIDGE} multicast on up")
        _ip("-n", self.hub, "-batch", "-", input="\n".join(cmds) + "\n")

    def _setup_host(self, i: int, host: Host) -> None:
        cmds = [
            "link set lo up",
            f"addr add {host.ip}/{self.subnet.prefixlen} dev {host.iface}",
            f"link set {host.iface} multicast on up",
            f"route add 224.0.0.0/4 dev {host.iface}",
        ]
        _ip("-n", host.ns, "-batch", "-", input="\n".join(cmds) + "\n")

    # ----------------------------------------------------------------- addresses

    def _with_prefixlen(self, ip: str) -> str:
        return ip if "/" in ip else f"{ip}/{self.subnet.prefixlen}"

    def _forget_neighbour(self, ip: str) -> None:
        """Drop `ip` from every host's ARP cache. A real host taking over an address sends
        a gratuitous ARP; without this, peers keep sending to the old MAC until their entry
        goes stale (15-45 s) and is re-probed."""
        addr = ip.split("/")[0]
        for h in self.hosts:
            _ip("-n", h.ns, "neigh", "flush", "to", addr)

    def add_address(self, host: Host, ip: str) -> None:
        """Give `host` another address (``a.b.c.d`` uses the LAN's prefix length)."""
        _ip("-n", host.ns, "addr", "add", self._with_prefixlen(ip), "dev", host.iface)
        self._forget_neighbour(ip)

    def del_address(self, host: Host, ip: str) -> None:
        """Remove an address added with `add_address`."""
        _ip("-n", host.ns, "addr", "del", self._with_prefixlen(ip), "dev", host.iface)
        self._forget_neighbour(ip)

    # ----------------------------------------------------------------- tear-down

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc_type is None)

    def close(self, raise_errors: bool = False) -> None:
        """Kill processes started through the hosts, then delete the namespaces (and so
        every link: none lives outside them). Idempotent."""
        self._stop_processes()
        errors = []
        for ns in reversed(self.created):
            try:
                _delete_netns(ns)
            except (NetnsError, OSError) as e:
                errors.append(str(e))
        self.created = []
        if errors and raise_errors:
            raise NetnsError("cleanup failed:\n" + "\n".join(errors))

    def _stop_processes(self) -> None:
        procs = [p for h in self.hosts for p in h._procs]
        # Signal only groups whose leader we have not reaped: its pid (= pgid) is then
        # still held, so it cannot name an unrelated process group.
        live = [p for p in procs if p.returncode is None]
        for p in live:
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for p in live:
            if p.returncode is None:
                _killpg(p.pid, signal.SIGKILL)
                # after SIGKILL; bounded in case of an uninterruptible sleep
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        for p in procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for h in self.hosts:
            h._procs.clear()
