"""The fault-injection suite: runs fault classes x seeds against a real cluster, checks each
run, writes a JSON report per run and a JSON summary, prints the summary table, and last the
summary's path. Exits non-zero if any run lost, duplicated, reordered or invented anything."""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cluster"))
from harness import ROOT, Cluster, wait_until  # noqa: E402

from checker import check  # noqa: E402
from workload import AgentClient, History, VisitorClient  # noqa: E402

POSTGRES = os.path.join(ROOT, "deploy", "local", "postgres.sh")


class Postgres:
    """A private PostgreSQL the suite may stop and start."""

    def __init__(self, port):
        self.data = tempfile.mkdtemp(prefix="parley-chaos-pg-")
        self.port = port
        self.admin = self.start()

    def start(self):
        return subprocess.run([POSTGRES, "start", self.data, str(self.port)], check=True, capture_output=True, text=True).stdout.strip()

    def crash(self):
        bindir = next(d for d in sorted(os.listdir("/usr/lib/postgresql"))[::-1])
        cmd = [f"/usr/lib/postgresql/{bindir}/bin/pg_ctl", "-D", self.data, "-m", "immediate", "stop"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, capture_output=True)

    def stop(self):
        subprocess.run([POSTGRES, "stop", self.data], capture_output=True)


# --- faults: each takes (cluster, postgres, rng, pause) and returns a heal function --------------

def kill(role):
    def fault(cluster, postgres, rng, pause):
        node = pick(cluster, role, rng)
        node.kill()
        time.sleep(pause)
        node.start()
        return lambda: None
    return fault


def stop_cont(role):
    def fault(cluster, postgres, rng, pause):
        node = pick(cluster, role, rng)
        node.signal(signal.SIGSTOP)
        time.sleep(pause)
        node.signal(signal.SIGCONT)
        return lambda: None
    return fault


def postgres_crash(cluster, postgres, rng, pause):
    postgres.crash()
    time.sleep(pause)
    postgres.start()
    return lambda: None


def mass_disconnect(cluster, postgres, rng, pause):
    # Restarting the load balancer drops every visitor connection at once.
    cluster.haproxy.kill()
    time.sleep(min(pause, 1.0))
    cluster.haproxy.start()
    return lambda: None


def rolling_restart(cluster, postgres, rng, pause):
    for node in [*cluster.visitor_gateways.values(), *cluster.agent_gateways.values(), cluster.relay]:
        node.stop()  # SIGTERM: drains and stops cleanly
        node.start()
        wait_until(lambda: node.health().status_code == 200, timeout=30, what=f"{node.name} back")
    return lambda: None


def drain_gateway(cluster, postgres, rng, pause):
    name = rng.choice(sorted(cluster.visitor_gateways))
    cluster.ctl("nodes", "drain", name)
    time.sleep(pause)
    cluster.ctl("nodes", "undrain", name)
    return lambda: None


def abandoned_sends(cluster, postgres, rng, pause):
    # Visitors give up on each send before its answer, then resend it with the same id.
    for visitor in cluster.chaos_visitors:
        visitor.abandon_sends.set()
    time.sleep(pause)
    for visitor in cluster.chaos_visitors:
        visitor.abandon_sends.clear()
    return lambda: None


def pick(cluster, role, rng):
    if role == "relay":
        return cluster.relay
    nodes = cluster.visitor_gateways if role == "visitor_gateway" else cluster.agent_gateways
    return nodes[rng.choice(sorted(nodes))]


FAULTS = {
    "kill-visitor-gateway": (kill("visitor_gateway"), (1, 4)),
    "kill-agent-gateway": (kill("agent_gateway"), (1, 4)),
    "kill-relay": (kill("relay"), (1, 4)),
    "pause-visitor-gateway": (stop_cont("visitor_gateway"), (11, 13)),
    "pause-agent-gateway": (stop_cont("agent_gateway"), (11, 13)),
    "pause-relay": (stop_cont("relay"), (11, 13)),
    "postgres-crash": (postgres_crash, (1, 4)),
    "mass-disconnect": (mass_disconnect, (0.2, 1)),
    "rolling-restart": (rolling_restart, (0, 0)),
    "drain-visitor-gateway": (drain_gateway, (3, 6)),
    "client-abandons-send": (abandoned_sends, (3, 5)),
}


def run_one(bin_dir, postgres, fault_class, seed, conversations, messages, out_dir):
    rng = random.Random(f"{fault_class}-{seed}")
    cluster = Cluster(bin_dir, postgres.admin, visitor_gateways=3, agent_gateways=2)
    history = History()
    stop = threading.Event()
    threads = []
    try:
        email, password = cluster.new_agent("Chaos")
        agent_urls = [cluster.agent_url(name) for name in sorted(cluster.agent_gateways)]
        setup_deadline = time.monotonic() + 30
        visitors, agents = [], []
        for n in range(conversations):
            visitor = VisitorClient(cluster.lb_url, ["longpoll", "sse", "ws"][n % 3], history, rng)
            visitor.start()
            agent = AgentClient(agent_urls, email, password, history, rng)
            agent.login(setup_deadline)
            agent.claim(visitor.conversation, setup_deadline)
            visitors.append(visitor)
            agents.append(agent)
        cluster.chaos_visitors = visitors
        for client in visitors + agents:
            threads.append(threading.Thread(target=client.receive, args=(stop,), daemon=True))
        # Clients talk through the whole fault and a little after it; retries may go on until the deadline.
        talk_deadline = time.monotonic() + 90
        quiet = threading.Event()
        talkers = [threading.Thread(target=c.talk, args=(messages, 0.2, talk_deadline, quiet), daemon=True) for c in visitors + agents]
        for t in threads + talkers:
            t.start()

        fault, (low, high) = FAULTS[fault_class]
        time.sleep(1 + rng.random())
        fault_started = time.monotonic()
        fault(cluster, postgres, rng, rng.uniform(low, high))
        healed = time.monotonic()
        time.sleep(2)
        quiet.set()  # stop starting new messages; those in flight finish their retries
        for t in talkers:
            t.join(timeout=max(0, talk_deadline - time.monotonic()) + 5)
        settled = time.monotonic()

        def converged():
            db = db_events(cluster)
            for client in visitors + agents:
                rows = db.get(client.conversation, [])
                if rows and client.cursor < rows[-1][0]:
                    return False
            return True

        try:
            wait_until(converged, timeout=60, interval=0.1, what="every client has everything")
            convergence = time.monotonic() - settled
        except AssertionError:
            convergence = None
        stop.set()
        for t in threads:
            t.join(timeout=15)
        report = check(history.ops, visitors, agents, db_events(cluster))
        report.update(fault=fault_class, seed=seed, fault_seconds=round(healed - fault_started, 2),
                      convergence_seconds=None if convergence is None else round(convergence, 2))
        if convergence is None:
            report["lost"] += 1
            report["details"].append({"kind": "lost", "where": "clients did not converge within 60 s"})
    finally:
        stop.set()
        cluster.stop()
    with open(os.path.join(out_dir, f"{fault_class}-{seed}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def db_events(cluster):
    out = cluster.psql("SELECT conversation_id, seq, sender, coalesce(client_msg_id, '') FROM events ORDER BY conversation_id, seq")
    events = {}
    for line in out.splitlines():
        conversation, seq, sender, client_msg_id = line.split("|")
        events.setdefault(conversation, []).append((int(seq), sender, client_msg_id))
    return events


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--classes", default=",".join(FAULTS))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--messages", type=int, default=200, help="most messages per client in a run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("PARLEY_CHAOS_PG_PORT", "55888")))
    args = parser.parse_args()
    out_dir = args.out or tempfile.mkdtemp(prefix="parley-chaos-")
    os.makedirs(out_dir, exist_ok=True)
    postgres = Postgres(args.pg_port)
    summary = {}
    try:
        for fault_class in args.classes.split(","):
            for seed in range(1, args.seeds + 1):
                report = run_one(args.bin, postgres, fault_class, seed, args.conversations, args.messages, out_dir)
                row = summary.setdefault(fault_class, {"runs": 0, "lost": 0, "duplicates": 0, "order_violations": 0,
                                                       "unexpected": 0, "recovered": 0, "acknowledged": 0,
                                                       "convergence_max_s": 0.0})
                row["runs"] += 1
                for key in ("lost", "duplicates", "order_violations", "unexpected", "recovered", "acknowledged"):
                    row[key] += report[key]
                row["convergence_max_s"] = max(row["convergence_max_s"], report["convergence_seconds"] or 0)
                print(f"{fault_class} seed {seed}: lost {report['lost']} dup {report['duplicates']} order {report['order_violations']} "
                      f"unexpected {report['unexpected']} recovered {report['recovered']} converged {report['convergence_seconds']}s",
                      flush=True)
    finally:
        postgres.stop()
    path = os.path.join(out_dir, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    header = f"{'fault class':24} {'runs':>4} {'acked':>6} {'lost':>4} {'dup':>4} {'order':>5} {'unexp':>5} {'recov':>5} {'conv max s':>10}"
    print(header)
    for name, row in summary.items():
        print(f"{name:24} {row['runs']:>4} {row['acknowledged']:>6} {row['lost']:>4} {row['duplicates']:>4} "
              f"{row['order_violations']:>5} {row['unexpected']:>5} {row['recovered']:>5} {row['convergence_max_s']:>10}")
    print(path)
    bad = sum(row[k] for row in summary.values() for k in ("lost", "duplicates", "order_violations", "unexpected"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
