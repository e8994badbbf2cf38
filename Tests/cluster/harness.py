"""A real Parley cluster for tests: the built executables as separate processes on loopback,
HAProxy in front of the visitor gateways, and a fresh database on the PostgreSQL that the
test script started. Nothing is mocked."""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Polls `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # the thing waited for may not be up yet
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def metric(text, name, labels=None):
    """Sum of a Prometheus metric's samples in an exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if match and match.group(1) == name:
            if labels and not all(f'{k}="{v}"' in (match.group(2) or "") for k, v in labels.items()):
                continue
            total += float(match.group(3))
    return total


_CA_DIR = None


def node_tls(bin_dir, role, node):
    """The --tls-* flags of a node, issuing its certificate from this process's test CA on first
    use (`parleyctl certs init` / `certs issue`, as an administrator would)."""
    global _CA_DIR
    if _CA_DIR is None:
        folder = os.path.join(tempfile.mkdtemp(prefix="parley-test-ca-"), "certs")
        subprocess.run([f"{bin_dir}/parleyctl", "certs", "init", "--dir", folder], check=True, capture_output=True)
        _CA_DIR = folder
    cert, key = os.path.join(_CA_DIR, f"{node}.pem"), os.path.join(_CA_DIR, f"{node}.key")
    if not os.path.exists(cert):
        subprocess.run([f"{bin_dir}/parleyctl", "certs", "issue", "--dir", _CA_DIR, "--role", role, "--node", node],
                       check=True, capture_output=True)
    return ["--tls-ca", os.path.join(_CA_DIR, "ca.pem"), "--tls-cert", cert, "--tls-key", key]


def service_env(cluster, role):
    """The environment of a service of `cluster`: its own database login (`parleyctl db user`)."""
    login = f"{cluster.db_name}_{role.replace('-', '_')}"
    cluster.ctl("db", "user", "--role", role, "--name", login)
    env = dict(cluster.env)
    scheme, rest = cluster.database_url.split("://", 1)
    env["PARLEY_DATABASE_URL"] = f"{scheme}://{login}@{rest.split('@', 1)[1]}"
    return env


class Node:
    def __init__(self, name, args, env, log_dir, http=None, ops=None):
        self.name, self.args, self.env, self.http, self.ops = name, args, env, http, ops
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.process = None

    def start(self):
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def signal(self, sig):
        self.process.send_signal(sig)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def health(self):
        return requests.get(f"http://127.0.0.1:{self.ops}/health", timeout=2)

    def metrics(self):
        return requests.get(f"http://127.0.0.1:{self.ops}/metrics", timeout=2).text

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


class Cluster:
    """relay + visitor gateways + agent gateways + HAProxy on one fresh database."""

    def __init__(self, bin_dir, admin_url, visitor_gateways=2, agent_gateways=2, visitor_gateway_args=(), log_level="info"):
        self.bin = bin_dir
        self.log_dir = tempfile.mkdtemp(prefix="parley-cluster-")
        self.db_name = "parley_" + uuid.uuid4().hex[:10]
        subprocess.run(["psql", admin_url, "-qc", f"CREATE DATABASE {self.db_name}"], check=True, capture_output=True)
        self.database_url = admin_url.rsplit("/", 1)[0] + "/" + self.db_name
        self.env = dict(os.environ)
        self.env["PARLEY_DATABASE_URL"] = self.database_url
        self.env["PARLEY_VISITOR_TOKEN_KEYS"] = "k1:" + __import__("base64").b64encode(secrets.token_bytes(32)).decode()
        self.env["PARLEY_LOG_LEVEL"] = log_level
        self.visitor_gateway_args = list(visitor_gateway_args)
        self.ctl("db", "migrate")
        # The services connect with logins of their own, holding only their role's grants.
        self.relay_env = self.service_env("relay")
        self.agent_gateway_env = self.service_env("agent-gateway")
        self.relay_port = free_port()
        self.relay = Node("relay-1", [f"{bin_dir}/parley-relay", "--node-id", "relay-1",
                                      "--grpc-listen", f"127.0.0.1:{self.relay_port}",
                                      "--ops-listen", f"127.0.0.1:{free_port()}",
                                      *node_tls(bin_dir, "relay", "relay-1")], self.relay_env, self.log_dir)
        self.relay.ops = int(self.relay.args[self.relay.args.index("--ops-listen") + 1].split(":")[1])
        self.visitor_gateways = {}
        self.agent_gateways = {}
        self.haproxy = None
        try:
            self.relay.start()
            wait_until(lambda: self.relay.health().status_code == 200, what="relay health")
            for n in range(1, visitor_gateways + 1):
                self.add_visitor_gateway(f"vg-{n}")
            for n in range(1, agent_gateways + 1):
                self.add_agent_gateway(f"ag-{n}")
            for node in list(self.visitor_gateways.values()) + list(self.agent_gateways.values()):
                wait_until(lambda: node.health().status_code == 200, what=f"{node.name} health")
            self.lb_port = free_port()
            self.start_haproxy()
        except BaseException:
            # A node that could not start (a port taken between free_port and its bind) must not
            # leave the ones that did running.
            self.stop()
            raise

    # --- processes -----------------------------------------------------------------------
    def add_visitor_gateway(self, name, start=True, extra_args=()):
        http, internal, ops = free_port(), free_port(), free_port()
        node = Node(name, [f"{self.bin}/parley-visitor-gateway", "--node-id", name, "--trusted-proxies", "127.0.0.1",
                           *self.visitor_gateway_args, *extra_args,
                           "--http-listen", f"127.0.0.1:{http}", "--internal-listen", f"127.0.0.1:{internal}",
                           "--ops-listen", f"127.0.0.1:{ops}", "--relay-address", f"127.0.0.1:{self.relay_port}",
                           *node_tls(self.bin, "visitor-gateway", name)],
                    self.env, self.log_dir, http=http, ops=ops)
        self.visitor_gateways[name] = node
        return node.start() if start else node

    def add_agent_gateway(self, name):
        http, ops = free_port(), free_port()
        node = Node(name, [f"{self.bin}/parley-agent-gateway", "--node-id", name,
                           "--http-listen", f"127.0.0.1:{http}", "--ops-listen", f"127.0.0.1:{ops}",
                           "--relay-address", f"127.0.0.1:{self.relay_port}", *node_tls(self.bin, "agent-gateway", name)],
                    self.agent_gateway_env, self.log_dir, http=http, ops=ops)
        self.agent_gateways[name] = node
        return node.start()

    def start_haproxy(self):
        config = os.path.join(self.log_dir, "haproxy.cfg")
        self.ctl("lb", "haproxy", "--bind", f"127.0.0.1:{self.lb_port}", "--output", config)
        self.haproxy = Node("haproxy", ["haproxy", "-db", "-f", config], self.env, self.log_dir)
        self.haproxy.start()
        wait_until(lambda: requests.get(self.lb_url + "/", timeout=2).status_code == 200, what="haproxy")

    def restart(self, node):
        node.stop()
        node.start()
        wait_until(lambda: node.health().status_code == 200, what=f"{node.name} health after restart")

    def service_env(self, role):
        return service_env(self, role)

    def ctl(self, *args, check=True, stdin=None):
        result = subprocess.run([f"{self.bin}/parleyctl", *args], env=self.env, capture_output=True, text=True, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"parleyctl {' '.join(args)} failed: {result.stderr}")
        return result

    def psql(self, sql):
        out = subprocess.run(["psql", self.database_url, "-qtAc", sql], check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        for node in [self.haproxy, *self.visitor_gateways.values(), *self.agent_gateways.values(), self.relay]:
            if node:
                node.stop()

    def logs(self):
        out = []
        for node in [self.relay, *self.visitor_gateways.values(), *self.agent_gateways.values(), self.haproxy]:
            if node:
                out.append(f"==== {node.name}\n{node.log()[-4000:]}")
        return "\n".join(out)

    @property
    def lb_url(self):
        return f"http://127.0.0.1:{self.lb_port}"

    def agent_url(self, name="ag-1"):
        return f"http://127.0.0.1:{self.agent_gateways[name].http}"

    # --- actors --------------------------------------------------------------------------
    def new_agent(self, name="Agent", role="agent"):
        email = f"{uuid.uuid4().hex[:8]}@agents.test"
        password = secrets.token_urlsafe(12)
        self.ctl("agents", "add", "--email", email, "--name", name, "--role", role, "--password-stdin", stdin=password + "\n")
        return email, password


class Visitor:
    """A visitor's HTTP client through the load balancer, with its cookies, like a browser's."""

    def __init__(self, base_url):
        self.base = base_url
        self.session = requests.Session()
        self.conversation = None
        self.token = None
        self.cursor = 0
        self.seen = []

    def start(self, **fields):
        response = self.session.post(f"{self.base}/v1/conversations", json=fields, timeout=10)
        assert response.status_code == 201, response.text
        body = response.json()
        self.conversation, self.token = body["conversation_id"], body["visitor_token"]
        return body

    @property
    def headers(self):
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def node(self):
        return self.session.cookies.get("parley_node")

    def send(self, text, client_msg_id=None, timeout=10):
        client_msg_id = client_msg_id or str(uuid.uuid4())
        response = self.session.post(f"{self.base}/v1/conversations/{self.conversation}/messages",
                                     json={"client_msg_id": client_msg_id, "text": text}, headers=self.headers, timeout=timeout)
        return response

    def send_until_acked(self, text, client_msg_id=None, deadline=30):
        """Retries with the same client_msg_id, as a real client does, until acknowledged."""
        client_msg_id = client_msg_id or str(uuid.uuid4())
        return wait_until(lambda: (lambda r: r if r.status_code in (200, 201) else None)(self.send(text, client_msg_id)),
                          timeout=deadline, interval=0.2, what="message acknowledged")

    def poll(self, wait=0):
        response = self.session.get(f"{self.base}/v1/conversations/{self.conversation}/events",
                                    params={"after": self.cursor, "wait": wait}, headers=self.headers, timeout=wait + 10)
        assert response.status_code == 200, response.text
        body = response.json()
        for event in body["events"]:
            self.seen.append(event)
            self.cursor = event["seq"]
        return body

    def poll_until(self, predicate, timeout=20):
        def step():
            self.poll(wait=1)
            return predicate(self.seen)
        return wait_until(step, timeout=timeout, interval=0.01, what="visitor events")


class AgentClient:
    def __init__(self, base_url, email, password):
        self.base = base_url
        response = requests.post(f"{base_url}/v1/agent/session", json={"email": email, "password": password}, timeout=10)
        assert response.status_code == 200, response.text
        self.token = response.json()["token"]
        self.agent = response.json()["agent"]
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def get(self, path, **params):
        return requests.get(f"{self.base}{path}", params=params, headers=self.headers, timeout=10)

    def post(self, path, body=None):
        return requests.post(f"{self.base}{path}", json=body or {}, headers=self.headers, timeout=10)

    def claim(self, conversation):
        return self.post(f"/v1/agent/conversations/{conversation}/claim")

    def reply(self, conversation, text, client_msg_id=None):
        return self.post(f"/v1/agent/conversations/{conversation}/messages",
                         {"client_msg_id": client_msg_id or str(uuid.uuid4()), "text": text})

    def history(self, conversation, after=0):
        return self.get(f"/v1/agent/conversations/{conversation}/events", after=after).json()


def assert_exactly_once_in_order(events):
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), f"seqs not 1..n exactly once: {seqs}"
