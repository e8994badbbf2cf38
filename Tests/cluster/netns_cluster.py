"""A Parley cluster in the network-namespace topology (deploy/netns/topology.sh): every node a
host of its own, the edge and internal zones on separate bridges, the relays on both.

    client ─┐                        ┌─ ag1, ag2 ── agents
    lb ─────┼── edge 198.18.1.0/24 ──┤ relay1, relay2 (both zones)
    vg1..3 ─┘                        └─ internal 198.18.2.0/24 ── pg

Processes are the real executables started with `ip netns exec`, so signals reach them
directly; test clients enter a host with netns.inside(). Faults between hosts are nftables
rules inside the hosts' namespaces (`block`), removed by `heal`."""

import base64
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid

import requests

from harness import ROOT, Node, node_tls, service_env, wait_until
import netns

TOPOLOGY = os.path.join(ROOT, "deploy", "netns", "topology.sh")
POSTGRES = os.path.join(ROOT, "deploy", "local", "postgres.sh")
PG_PORT = 5432
RELAY_PORT, RELAY_OPS = 7100, 7101
VG_HTTP, VG_INTERNAL, VG_OPS = 8081, 7201, 7202
AG_HTTP, AG_OPS = 8090, 7302
LB_PORT = 8080


class Topology:
    """The namespaces, for as long as the object lives (`close` tears them down)."""

    def __init__(self, prefix, visitor_gateways=3, agent_gateways=2, relays=2):
        self.prefix = prefix
        self.env = dict(os.environ, PARLEY_NETNS_PREFIX=prefix)
        self.counts = (visitor_gateways, agent_gateways, relays)
        self.run("up", str(visitor_gateways), str(agent_gateways), str(relays))
        self.addresses = {}
        for line in self.run("hosts").stdout.splitlines():
            host, zone, address = line.split()
            self.addresses.setdefault(host, {})[zone] = address

    def run(self, *args, check=True):
        return subprocess.run([TOPOLOGY, *args], env=self.env, capture_output=True, text=True, check=check, timeout=120)

    def ns(self, host):
        return f"{self.prefix}-{host}"

    def addr(self, host, zone=None):
        zones = self.addresses[host]
        return zones[zone] if zone else next(iter(zones.values()))

    def exec_args(self, host, *args):
        return ["ip", "netns", "exec", self.ns(host), *args]

    def block(self, host, inbound=(), outbound=()):
        """Drops, inside `host`, packets matching the nftables expressions given."""
        rules = "table inet parley_fault {\n"
        rules += "  chain input { type filter hook input priority 0; policy accept;\n"
        rules += "".join(f"    {expression} drop\n" for expression in inbound) + "  }\n"
        rules += "  chain output { type filter hook output priority 0; policy accept;\n"
        rules += "".join(f"    {expression} drop\n" for expression in outbound) + "  }\n}\n"
        subprocess.run(self.exec_args(host, "nft", "-f", "-"), input=rules, text=True, check=True, capture_output=True)

    def heal(self):
        for host in self.addresses:
            subprocess.run(self.exec_args(host, "nft", "delete", "table", "inet", "parley_fault"), capture_output=True)

    def close(self):
        self.run("down", check=False)


class Postgres:
    """PostgreSQL on the `pg` host, which the suite may crash and restart."""

    def __init__(self, topology):
        self.topology = topology
        self.data = tempfile.mkdtemp(prefix="parley-netns-pg-")
        self.address = topology.addr("pg")
        self.url = self.start()

    def start(self):
        return subprocess.run(self.topology.exec_args("pg", POSTGRES, "start", self.data, str(PG_PORT), self.address),
                              check=True, capture_output=True, text=True).stdout.strip()

    def crash(self):
        bindir = next(d for d in sorted(os.listdir("/usr/lib/postgresql"))[::-1])
        subprocess.run(["runuser", "-u", "postgres", "--", f"/usr/lib/postgresql/{bindir}/bin/pg_ctl",
                        "-D", self.data, "-m", "immediate", "stop"], capture_output=True)

    def psql(self, database, sql):
        # Through the Unix socket in the data folder: files are not bound to a network namespace.
        out = subprocess.run(["psql", "-h", self.data, "-p", str(PG_PORT), "-U", "postgres", "-d", database, "-qtAc", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def close(self):
        subprocess.run([POSTGRES, "stop", self.data], capture_output=True)
        shutil.rmtree(self.data, ignore_errors=True)


class NetnsNode(Node):
    """A node on a host of the topology; its ops endpoint is reached from inside that host."""

    def __init__(self, name, host, address, args, env, log_dir, topology, http=None, ops=None):
        super().__init__(name, topology.exec_args(host, *args), env, log_dir, http=http, ops=ops)
        self.host, self.address, self.topology = host, address, topology

    def health(self):
        with netns.inside(self.topology.ns(self.host)):
            return requests.get(f"http://{self.address}:{self.ops}/health", timeout=2)

    def metrics(self):
        with netns.inside(self.topology.ns(self.host)):
            return requests.get(f"http://{self.address}:{self.ops}/metrics", timeout=2).text


class NetnsCluster:
    """relays + visitor gateways + agent gateways + HAProxy, each on its own host, on a fresh
    database of the topology's PostgreSQL. Same surface as harness.Cluster."""

    def __init__(self, bin_dir, topology, postgres):
        self.bin, self.topology, self.postgres = bin_dir, topology, postgres
        self.log_dir = tempfile.mkdtemp(prefix="parley-netns-cluster-")
        self.db_name = "parley_" + uuid.uuid4().hex[:10]
        postgres.psql("postgres", f"CREATE DATABASE {self.db_name}")
        self.database_url = postgres.url.rsplit("/", 1)[0] + "/" + self.db_name
        self.env = dict(os.environ)
        self.env["PARLEY_DATABASE_URL"] = self.database_url
        self.env["PARLEY_VISITOR_TOKEN_KEYS"] = "k1:" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.env["PARLEY_LOG_LEVEL"] = "info"
        self.ctl("db", "migrate")
        relay_env, agent_gateway_env = self.service_env("relay"), self.service_env("agent-gateway")
        vgs, ags, relays = topology.counts
        self.relays, self.visitor_gateways, self.agent_gateways, self.haproxy = {}, {}, {}, None
        for n in range(1, relays + 1):
            host = f"relay{n}"
            self.relays[f"relay-{n}"] = NetnsNode(
                f"relay-{n}", host, topology.addr(host, "internal"),
                [f"{bin_dir}/parley-relay", "--node-id", f"relay-{n}", "--grpc-listen", f"0.0.0.0:{RELAY_PORT}",
                 "--grpc-advertise", f"{topology.addr(host, 'internal')}:{RELAY_PORT}",
                 "--ops-listen", f"0.0.0.0:{RELAY_OPS}", *node_tls(bin_dir, "relay", f"relay-{n}")], relay_env, self.log_dir, topology, ops=RELAY_OPS)
        edge_relays = ",".join(f"{topology.addr(f'relay{n}', 'edge')}:{RELAY_PORT}" for n in range(1, relays + 1))
        internal_relays = ",".join(f"{topology.addr(f'relay{n}', 'internal')}:{RELAY_PORT}" for n in range(1, relays + 1))
        for n in range(1, vgs + 1):
            host, address = f"vg{n}", topology.addr(f"vg{n}")
            self.visitor_gateways[f"vg-{n}"] = NetnsNode(
                f"vg-{n}", host, address,
                [f"{bin_dir}/parley-visitor-gateway", "--node-id", f"vg-{n}", "--http-listen", f"{address}:{VG_HTTP}",
                 "--trusted-proxies", topology.addr("lb"),
                 "--internal-listen", f"{address}:{VG_INTERNAL}", "--ops-listen", f"{address}:{VG_OPS}",
                 "--relay-address", edge_relays, *node_tls(bin_dir, "visitor-gateway", f"vg-{n}")], self.env, self.log_dir, topology, http=VG_HTTP, ops=VG_OPS)
        for n in range(1, ags + 1):
            host, address = f"ag{n}", topology.addr(f"ag{n}")
            self.agent_gateways[f"ag-{n}"] = NetnsNode(
                f"ag-{n}", host, address,
                [f"{bin_dir}/parley-agent-gateway", "--node-id", f"ag-{n}", "--http-listen", f"{address}:{AG_HTTP}",
                 "--ops-listen", f"{address}:{AG_OPS}", "--relay-address", internal_relays,
                 *node_tls(bin_dir, "agent-gateway", f"ag-{n}")],
                agent_gateway_env, self.log_dir, topology, http=AG_HTTP, ops=AG_OPS)
        for node in self.relays.values():
            node.start()
        for node in self.relays.values():
            wait_until(lambda: node.health().status_code == 200, timeout=30, what=f"{node.name} health")
        for node in [*self.visitor_gateways.values(), *self.agent_gateways.values()]:
            node.start()
        for node in [*self.visitor_gateways.values(), *self.agent_gateways.values()]:
            wait_until(lambda: node.health().status_code == 200, timeout=30, what=f"{node.name} health")
        self.start_haproxy()

    @property
    def relay(self):
        return self.relays["relay-1"]

    def start_haproxy(self):
        config = os.path.join(self.log_dir, "haproxy.cfg")
        self.ctl("lb", "haproxy", "--bind", f"{self.topology.addr('lb')}:{LB_PORT}", "--output", config)
        self.haproxy = NetnsNode("haproxy", "lb", self.topology.addr("lb"), ["haproxy", "-db", "-f", config],
                                 self.env, self.log_dir, self.topology)
        self.haproxy.start()

        def up():
            with netns.inside(self.topology.ns("client")):
                return requests.get(self.lb_url + "/", timeout=2).status_code == 200
        wait_until(up, timeout=30, what="haproxy")

    def service_env(self, role):
        return service_env(self, role)

    def ctl(self, *args, check=True, stdin=None):
        # An administrator's shell in the internal zone.
        result = subprocess.run(self.topology.exec_args("agents", f"{self.bin}/parleyctl", *args), env=self.env,
                                capture_output=True, text=True, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"parleyctl {' '.join(args)} failed: {result.stderr}")
        return result

    def psql(self, sql):
        return self.postgres.psql(self.db_name, sql)

    def new_agent(self, name="Agent"):
        email = f"{uuid.uuid4().hex[:8]}@agents.test"
        password = secrets.token_urlsafe(12)
        self.ctl("agents", "add", "--email", email, "--name", name, "--password-stdin", stdin=password + "\n")
        return email, password

    @property
    def lb_url(self):
        return f"http://{self.topology.addr('lb')}:{LB_PORT}"

    def agent_url(self, name="ag-1"):
        node = self.agent_gateways[name]
        return f"http://{node.address}:{AG_HTTP}"

    def stop(self):
        self.topology.heal()
        nodes = [n for n in [self.haproxy, *self.visitor_gateways.values(), *self.agent_gateways.values(), *self.relays.values()]
                 if n and n.alive()]
        for node in nodes:  # all at once: each drains on its own
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    node.signal(sig)
                except ProcessLookupError:
                    pass
        for node in nodes:
            node.stop()
        try:
            self.postgres.psql("postgres", f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")
        except subprocess.CalledProcessError:
            pass

    def logs(self):
        out = []
        for node in [*self.relays.values(), *self.visitor_gateways.values(), *self.agent_gateways.values(), self.haproxy]:
            if node:
                out.append(f"==== {node.name}\n{node.log()[-4000:]}")
        return "\n".join(out)
