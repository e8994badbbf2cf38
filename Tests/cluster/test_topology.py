"""The network-namespace topology (deploy/netns/topology.sh) that fault-injection and
zone-isolation tests run the cluster in: two zones that share no route, the relay on both."""

import os
import subprocess

import pytest

from harness import ROOT, wait_until

TOPOLOGY = os.path.join(ROOT, "deploy", "netns", "topology.sh")
PREFIX = "pltest"


def run(*args, check=True, prefix=PREFIX):
    env = dict(os.environ, PARLEY_NETNS_PREFIX=prefix)
    return subprocess.run([TOPOLOGY, *args], env=env, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture(scope="module")
def topology():
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (CI runs as root)")
    run("up", "2", "1", "1")
    listeners = []
    try:
        for host in ("vg1", "pg", "ag1"):
            address = run("addr", host).stdout.strip()
            env = dict(os.environ, PARLEY_NETNS_PREFIX=PREFIX)
            listeners.append(subprocess.Popen(
                [TOPOLOGY, "exec", host, "python3", "-m", "http.server", "8000", "--bind", address],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield
    finally:
        for process in listeners:
            process.kill()
            process.wait()
        run("down", check=False)


def reaches(source, target, zone=None):
    address = run("addr", target, *( [zone] if zone else [])).stdout.strip()
    result = run("exec", source, "python3", "-c",
                 f"import socket; socket.create_connection(('{address}', 8000), timeout=1).close()", check=False)
    return result.returncode == 0


def test_zones_share_no_route_and_the_relay_sits_on_both(topology):
    wait_until(lambda: reaches("lb", "vg1"), what="listener in vg1")
    wait_until(lambda: reaches("relay1", "pg"), what="listener in pg")
    assert reaches("relay1", "vg1")      # the relay delivers to visitor gateways
    assert reaches("agents", "ag1")      # agents reach their gateway
    assert not reaches("vg1", "pg")      # a visitor gateway cannot reach the database
    assert not reaches("vg1", "ag1")     # ... nor an agent gateway
    assert not reaches("lb", "pg")
    assert not reaches("client", "ag1")
    assert not reaches("ag1", "vg1")     # and the internal zone cannot reach into the edge
    hosts = run("hosts").stdout.split("\n")
    assert sum(1 for line in hosts if line.startswith("relay1 ")) == 2


def test_down_leaves_no_namespace_behind():
    # A topology of its own (another prefix), so that the check runs after a complete teardown.
    run("up", "1", "1", "1", prefix="pltdown")
    assert "pltdown-vg1" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    run("down", prefix="pltdown")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "pltdown-" not in names
