"""The network-namespace LAN harness (tests/netns.py): reachability, real mDNS across
hosts with python-zeroconf, moving an address between hosts, and clean-up.

Needs root and iproute2; skipped otherwise, unless EDGE_SWARM_REQUIRE_NETNS=1 (CI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .netns import PREFIX_ROOT, Lan, LineReader, NetnsError, cleanup_stale, require_netns

pytestmark = [pytest.mark.netns, pytest.mark.network]

PY = sys.executable
STARTUP_S = 20.0  # a child Python reaching "ready" (imports included)
MDNS_TIMEOUT_S = 10.0

UDP_ECHO_SERVER = """
import socket, sys
bind, label = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, 7007))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data + b" from " + label.encode(), peer)
"""

UDP_ECHO_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"ping", (sys.argv[1], 7007))
print(s.recvfrom(2048)[0].decode())
"""

ADVERTISE = """
import socket, sys
from zeroconf import ServiceInfo, Zeroconf

ip = sys.argv[1]
zc = Zeroconf(interfaces=[ip])
info = ServiceInfo(
    "_edgeswarm._tcp.local.",
    "node-a._edgeswarm._tcp.local.",
    addresses=[socket.inet_aton(ip)],
    port=1883,
    properties={"swarm": "t"},
    server="node-a.local.",
)
zc.register_service(info)
print("ready", flush=True)
sys.stdin.read()  # until the test closes stdin
zc.unregister_service(info)
zc.close()
"""

BROWSE = """
import json, queue, socket, sys, time
from zeroconf import ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

TYPE = "_edgeswarm._tcp.local."
ip, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
names = queue.Queue()

class Listener(ServiceListener):
    def add_service(self, zc, type_, name):
        names.put(name)
    def update_service(self, zc, type_, name):
        names.put(name)
    def remove_service(self, zc, type_, name):
        pass

zc = Zeroconf(interfaces=[ip])
browser = ServiceBrowser(zc, TYPE, Listener())
result = None
try:
    while result is None and time.monotonic() < deadline:
        try:
            name = names.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        info = ServiceInfo(TYPE, name)
        wait_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        if info.request(zc, wait_ms) and info.addresses:
            result = {
                "name": name,
                "addresses": [socket.inet_ntoa(a) for a in info.addresses],
                "port": info.port,
                "txt": {k.decode(): v.decode() for k, v in info.properties.items()},
            }
finally:
    browser.cancel()
    zc.close()
if result is None:
    print(f"no {TYPE} service found within {timeout} s", file=sys.stderr)
    sys.exit(1)
print(json.dumps(result))
"""


@pytest.fixture(autouse=True)
def _needs_netns() -> None:
    require_netns()


def _netns_names() -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=15, check=True
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _udp_echo(lan: Lan, server, client, bind: str, target: str, label: str) -> str:
    """Start a UDP echo server on `server` (bound to `bind`), query `target` from
    `client`; return the reply."""
    proc = server.run([PY, "-c", UDP_ECHO_SERVER, bind, label], stdout=subprocess.PIPE)
    LineReader(proc.stdout).expect("ready", STARTUP_S)
    return client.check([PY, "-c", UDP_ECHO_CLIENT, target]).strip()


def test_two_hosts_reach_each_other() -> None:
    with Lan(2) as lan:
        a, b = lan.hosts
        assert a.ip != b.ip and a.ns != b.ns
        if shutil.which("ping"):
            a.check(["ping", "-c", "1", "-W", "2", b.ip])
            b.check(["ping", "-c", "1", "-W", "2", a.ip])
        else:  # no iputils here: a UDP round trip proves the same both ways
            assert _udp_echo(lan, b, a, b.ip, b.ip, "b") == "ping from b"
        # and the LAN is isolated: the hosts have no route anywhere else
        with pytest.raises(NetnsError):
            a.check([PY, "-c", UDP_ECHO_CLIENT, "192.0.2.1"], timeout=15)


def test_mdns_service_found_across_namespaces(tmp_path: Path) -> None:
    (tmp_path / "advertise.py").write_text(ADVERTISE)
    (tmp_path / "browse.py").write_text(BROWSE)
    with Lan(2) as lan, open(tmp_path / "advertise.err", "w") as err:
        a, b = lan.hosts
        adv = a.run(
            [PY, str(tmp_path / "advertise.py"), a.ip],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        LineReader(adv.stdout).expect("ready", STARTUP_S)

        out = b.check(
            [PY, str(tmp_path / "browse.py"), b.ip, str(MDNS_TIMEOUT_S)],
            timeout=MDNS_TIMEOUT_S + STARTUP_S,
        )
        found = json.loads(out)
        assert found["name"] == "node-a._edgeswarm._tcp.local."
        assert found["addresses"] == [a.ip]
        assert found["port"] == 1883
        assert found["txt"] == {"swarm": "t"}

        adv.stdin.close()  # the advertiser unregisters (goodbye packets) and exits
        assert adv.wait(STARTUP_S) == 0, (tmp_path / "advertise.err").read_text()


def test_address_moves_between_hosts() -> None:
    with Lan(3) as lan:
        old, new, client = lan.hosts
        vip = str(lan.subnet[200])
        for h, label in ((old, "old"), (new, "new")):
            proc = h.run([PY, "-c", UDP_ECHO_SERVER, "0.0.0.0", label], stdout=subprocess.PIPE)
            LineReader(proc.stdout).expect("ready", STARTUP_S)
        lan.add_address(old, vip)
        assert client.check([PY, "-c", UDP_ECHO_CLIENT, vip]).strip() == "ping from old"
        lan.del_address(old, vip)
        lan.add_address(new, vip)
        # client's ARP entry for vip (old's MAC) was flushed, so this reaches `new` at once
        assert client.check([PY, "-c", UDP_ECHO_CLIENT, vip]).strip() == "ping from new"


def test_everything_is_removed_on_exit() -> None:
    with Lan(2, stop_grace=0.5) as lan:
        names = [lan.hub, *(h.ns for h in lan.hosts)]
        assert set(names) <= set(_netns_names())
        # a process that ignores SIGTERM is still killed (SIGKILL after the grace period)
        stubborn = lan.hosts[0].run(
            [
                PY,
                "-c",
                "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "print('ready', flush=True); sys.stdin.read()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        LineReader(stubborn.stdout).expect("ready", STARTUP_S)
    assert stubborn.returncode == -signal.SIGKILL
    assert not [n for n in _netns_names() if n.startswith(lan.prefix + "-")]


def test_half_built_lan_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_setup_host(self: Lan, i: int, host) -> None:
        raise NetnsError("injected failure")

    monkeypatch.setattr(Lan, "_setup_host", broken_setup_host)
    lan = Lan(2)
    with pytest.raises(NetnsError, match="injected"), lan:
        pytest.fail("the body must not run")
    assert len(lan.created) == 0
    assert not [n for n in _netns_names() if n.startswith(lan.prefix + "-")]


def test_cleanup_stale_removes_only_dead_runs() -> None:
    # A root of our own: parallel runs' Lans call cleanup_stale(PREFIX_ROOT), which matches
    # only "esw-<digits>-", so they cannot remove these first.
    root = f"{PREFIX_ROOT}t{uuid.uuid4().hex[:6]}-"
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait(STARTUP_S)  # reaped: its pid names no running process
    stale, live = f"{root}{dead.pid}-0-hub", f"{root}{os.getpid()}-0-hub"
    for ns in (stale, live):
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=15)
    try:
        assert cleanup_stale(root) == [stale]
        names = _netns_names()
        assert stale not in names and live in names
    finally:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=15)
