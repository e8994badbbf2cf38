"""The fault-injection suite: runs fault classes x seeds against a real cluster, checks each
run, writes a JSON report per run and a JSON summary, prints the summary table, and last the
summary's path. Exits non-zero if any run lost, duplicated, reordered or invented anything."""

import argparse
import json
import multiprocessing
import os
import queue
import random
import signal
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cluster"))
import netns  # noqa: E402
from harness import wait_until  # noqa: E402
from netns_cluster import NetnsCluster, Postgres, Topology  # noqa: E402

from checker import check  # noqa: E402
from workload import AgentClient, History, VisitorClient  # noqa: E402

COUNTS = ("lost", "duplicates", "order_violations", "unexpected", "recovered", "acknowledged")


# --- faults: each takes (cluster, rng, pause) and returns when the cluster is healed ----------

def kill(role):
    def fault(cluster, rng, pause):
        nodes = pick(cluster, role, rng)
        for node in nodes:
            node.kill()
        time.sleep(pause)
        for node in nodes:
            node.start()
    return fault


def stop_cont(role):
    def fault(cluster, rng, pause):
        nodes = pick(cluster, role, rng)
        for node in nodes:
            node.signal(signal.SIGSTOP)
        time.sleep(pause)
        for node in nodes:
            node.signal(signal.SIGCONT)
    return fault


def postgres_crash(cluster, rng, pause):
    cluster.postgres.crash()
    time.sleep(pause)
    cluster.postgres.start()


def mass_disconnect(cluster, rng, pause):
    # Restarting the load balancer drops every visitor connection at once.
    cluster.haproxy.kill()
    time.sleep(min(pause, 1.0))
    cluster.haproxy.start()


def rolling_restart(cluster, rng, pause):
    for node in [*cluster.visitor_gateways.values(), *cluster.agent_gateways.values(), *cluster.relays.values()]:
        node.stop()  # SIGTERM: drains and stops cleanly
        node.start()
        wait_until(lambda: node.health().status_code == 200, timeout=30, what=f"{node.name} back")


def drain_gateway(cluster, rng, pause):
    name = rng.choice(sorted(cluster.visitor_gateways))
    cluster.ctl("nodes", "drain", name)
    time.sleep(pause)
    cluster.ctl("nodes", "undrain", name)


def remove_gateway(cluster, rng, pause):
    # Removed from the registry while serving: it takes no new visitors and moves its own away;
    # the operator then stops it, as the runbook says.
    name = rng.choice(sorted(cluster.visitor_gateways))
    cluster.ctl("nodes", "remove", name)
    time.sleep(pause)
    cluster.visitor_gateways[name].stop()


def abandoned_sends(cluster, rng, pause):
    # Visitors give up on each send before its answer, then resend it with the same id.
    for visitor in cluster.chaos_visitors:
        visitor.abandon_sends.set()
    time.sleep(pause)
    for visitor in cluster.chaos_visitors:
        visitor.abandon_sends.clear()


def partition(kind, oneway=False):
    """nftables drops inside the namespaces: `edge-relay` (relays' edge side), `relay-postgres`,
    `agent-gateway-postgres`; one relay or gateway or all of them, one way or both."""
    def fault(cluster, rng, pause):
        topology = cluster.topology
        pg = topology.addr("pg")
        directions = [rng.choice(["in", "out"])] if oneway else ["in", "out"]
        if kind == "edge-relay":
            hosts = rng.choice([["relay1"], sorted(h for h in topology.addresses if h.startswith("relay"))])
            inbound, outbound = ['iifname "eth-edge"'], ['oifname "eth-edge"']
        elif kind == "relay-postgres":
            hosts = rng.choice([["relay1"], sorted(h for h in topology.addresses if h.startswith("relay"))])
            inbound, outbound = [f"ip saddr {pg}"], [f"ip daddr {pg}"]
        else:
            hosts = rng.choice([["ag1"], sorted(h for h in topology.addresses if h.startswith("ag"))])
            inbound, outbound = [f"ip saddr {pg}"], [f"ip daddr {pg}"]
        for host in hosts:
            topology.block(host, inbound=inbound if "in" in directions else (),
                           outbound=outbound if "out" in directions else ())
        time.sleep(pause)
        topology.heal()
    return fault


def packet_loss(cluster, rng, pause):
    percent = rng.choice([10, 20, 30])
    for host in cluster.topology.addresses:
        cluster.topology.block(host, inbound=[f"numgen random mod 100 < {percent}"])
    time.sleep(pause)
    cluster.topology.heal()


def pick(cluster, role, rng):
    nodes = {"relay": cluster.relays, "visitor_gateway": cluster.visitor_gateways, "agent_gateway": cluster.agent_gateways}[role]
    names = sorted(nodes)
    # Mostly one node; sometimes every relay at once (no relay at all for a while).
    chosen = names if role == "relay" and rng.random() < 0.3 else [rng.choice(names)]
    return [nodes[name] for name in chosen]


FAULTS = {
    "kill-visitor-gateway": (kill("visitor_gateway"), (1, 4)),
    "kill-agent-gateway": (kill("agent_gateway"), (1, 4)),
    "kill-relay": (kill("relay"), (1, 4)),
    "pause-visitor-gateway": (stop_cont("visitor_gateway"), (11, 13)),
    "pause-agent-gateway": (stop_cont("agent_gateway"), (11, 13)),
    "pause-relay": (stop_cont("relay"), (11, 13)),
    "postgres-crash": (postgres_crash, (1, 4)),
    "partition-edge-relay": (partition("edge-relay"), (3, 8)),
    "partition-edge-relay-oneway": (partition("edge-relay", oneway=True), (3, 8)),
    "partition-relay-postgres": (partition("relay-postgres"), (3, 8)),
    "partition-relay-postgres-oneway": (partition("relay-postgres", oneway=True), (3, 8)),
    "partition-agent-gateway-postgres": (partition("agent-gateway-postgres"), (3, 8)),
    "partition-agent-gateway-postgres-oneway": (partition("agent-gateway-postgres", oneway=True), (3, 8)),
    "packet-loss": (packet_loss, (4, 8)),
    "mass-disconnect": (mass_disconnect, (0.2, 1)),
    "rolling-restart": (rolling_restart, (0, 0)),
    "drain-visitor-gateway": (drain_gateway, (3, 6)),
    "remove-visitor-gateway": (remove_gateway, (2, 4)),
    "client-abandons-send": (abandoned_sends, (3, 5)),
}


def run_one(bin_dir, topology, postgres, fault_class, seed, conversations, messages, out_dir):
    rng = random.Random(f"{fault_class}-{seed}")
    cluster = None
    history = History()
    stop = threading.Event()
    threads = []
    client_ns, agents_ns = topology.ns("client"), topology.ns("agents")
    try:
        cluster = NetnsCluster(bin_dir, topology, postgres)
        email, password = cluster.new_agent("Chaos")
        agent_urls = [cluster.agent_url(name) for name in sorted(cluster.agent_gateways)]
        setup_deadline = time.monotonic() + 30
        visitors, agents = [], []
        for n in range(conversations):
            visitor = VisitorClient(cluster.lb_url, ["longpoll", "sse", "ws"][n % 3], history, rng)
            with netns.inside(client_ns):
                visitor.start()
            agent = AgentClient(agent_urls, email, password, history, rng)
            with netns.inside(agents_ns):
                agent.login(setup_deadline)
                agent.claim(visitor.conversation, setup_deadline)
            visitors.append(visitor)
            agents.append(agent)
        cluster.chaos_visitors = visitors
        clients = [(client_ns, v) for v in visitors] + [(agents_ns, a) for a in agents]
        threads = [netns.thread(ns, c.receive, stop) for ns, c in clients]
        # Clients talk through the whole fault and a little after it; retries may go on until the deadline.
        talk_deadline = time.monotonic() + 90
        quiet = threading.Event()
        talkers = [netns.thread(ns, c.talk, messages, 0.2, talk_deadline, quiet) for ns, c in clients]
        for t in threads + talkers:
            t.start()

        fault, (low, high) = FAULTS[fault_class]
        time.sleep(1 + rng.random())
        fault_started = time.monotonic()
        fault(cluster, rng, rng.uniform(low, high))
        healed, healed_wall = time.monotonic(), time.time()
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
            final_sync = time.monotonic() - settled
        except AssertionError:
            final_sync = None
        stop.set()
        for t in threads:
            t.join(timeout=15)
        db = db_events(cluster)
        report = check(history.ops, visitors, agents, {c: [row[:3] for row in rows] for c, rows in db.items()})
        report.update(fault=fault_class, seed=seed, fault_seconds=round(healed - fault_started, 2),
                      convergence_seconds=convergence(visitors + agents, db, healed_wall),
                      final_sync_seconds=None if final_sync is None else round(final_sync, 2))
        if final_sync is None:
            report["lost"] += 1
            report["details"].append({"kind": "lost", "where": "clients did not converge within 60 s"})
    except Exception:
        report = {key: 0 for key in COUNTS}
        report.update(fault=fault_class, seed=seed, error=traceback.format_exc(), convergence_seconds=None,
                      final_sync_seconds=None, details=[])
    finally:
        stop.set()
        if cluster:
            cluster.stop()
    if cluster and (report.get("error") or any(report[k] for k in ("lost", "duplicates", "order_violations", "unexpected"))):
        report["logs"] = cluster.logs()
    with open(os.path.join(out_dir, f"{fault_class}-{seed}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def convergence(clients, db, healed_wall):
    """Seconds from the heal until every client had every event committed before the heal
    (0 when nothing committed before it was still missing then)."""
    latest = healed_wall
    for client in clients:
        arrival = {event["seq"]: event.get("_at", 0) for event in client.received}
        for seq, _, _, committed_at in db.get(client.conversation, []):
            if committed_at <= healed_wall and seq in arrival:
                latest = max(latest, arrival[seq])
    return round(latest - healed_wall, 2)


def db_events(cluster):
    out = cluster.psql("SELECT conversation_id, seq, sender, coalesce(client_msg_id, ''), extract(epoch FROM created_at) "
                       "FROM events ORDER BY conversation_id, seq")
    events = {}
    for line in out.splitlines():
        conversation, seq, sender, client_msg_id, created = line.split("|")
        events.setdefault(conversation, []).append((int(seq), sender, client_msg_id, float(created)))
    return events


def worker(prefix, bin_dir, tasks, results, conversations, messages, out_dir):
    """One topology and one PostgreSQL of its own; runs (class, seed) tasks until told to stop."""
    topology = Topology(prefix)
    postgres = Postgres(topology)
    try:
        while True:
            task = tasks.get()
            if task is None:
                return
            fault_class, seed = task
            results.put(run_one(bin_dir, topology, postgres, fault_class, seed, conversations, messages, out_dir))
    finally:
        postgres.close()
        topology.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--classes", default=",".join(FAULTS))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("PARLEY_CHAOS_JOBS", "3")),
                        help="clusters run side by side, each in a topology of its own")
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--messages", type=int, default=200, help="most messages per client in a run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--prefix", default=os.environ.get("PARLEY_CHAOS_PREFIX", "pc"),
                        help="namespace name prefix; suites running side by side need different ones")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the fault-injection suite builds network namespaces and needs root")
    out_dir = args.out or tempfile.mkdtemp(prefix="parley-chaos-")
    os.makedirs(out_dir, exist_ok=True)
    classes = [c for c in args.classes.split(",") if c]
    unknown = [c for c in classes if c not in FAULTS]
    if unknown:
        sys.exit(f"unknown fault classes: {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    # Seed-major order, so that every class has runs early and a cut-short run still says something.
    tasks_list = [(c, seed) for seed in range(1, args.seeds + 1) for c in classes]
    context = multiprocessing.get_context("fork")
    tasks, results = context.Queue(), context.Queue()
    for task in tasks_list:
        tasks.put(task)
    jobs = max(1, min(args.jobs, len(tasks_list)))
    for _ in range(jobs):
        tasks.put(None)
    workers = [context.Process(target=worker, args=(f"{args.prefix}{n + 1}", args.bin, tasks, results, args.conversations, args.messages, out_dir))
               for n in range(jobs)]
    for w in workers:
        w.start()
    summary = {c: {"runs": 0, "errors": 0, **{k: 0 for k in COUNTS}, "convergence_p50_s": None,
                   "convergence_max_s": None, "final_sync_max_s": None} for c in classes}
    convergences = {c: [] for c in classes}
    started = time.monotonic()
    for done in range(1, len(tasks_list) + 1):
        while True:
            try:
                report = results.get(timeout=10)
                break
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    sys.exit("every worker stopped before the suite finished (see the errors above)")
        c = report["fault"]
        row = summary[c]
        row["runs"] += 1
        row["errors"] += 1 if report.get("error") else 0
        for key in COUNTS:
            row[key] += report[key]
        if report["convergence_seconds"] is not None:
            convergences[c].append(report["convergence_seconds"])
            values = sorted(convergences[c])
            row["convergence_p50_s"] = values[len(values) // 2]
            row["convergence_max_s"] = values[-1]
        if report.get("final_sync_seconds") is not None:
            row["final_sync_max_s"] = max(row["final_sync_max_s"] or 0, report["final_sync_seconds"])
        status = "ERROR " + report["error"].strip().splitlines()[-1] if report.get("error") else (
            f"lost {report['lost']} dup {report['duplicates']} order {report['order_violations']} "
            f"unexpected {report['unexpected']} recovered {report['recovered']} converged {report['convergence_seconds']}s")
        print(f"[{done}/{len(tasks_list)} {time.monotonic() - started:.0f}s] {c} seed {report['seed']}: {status}", flush=True)
    for w in workers:
        w.join(timeout=60)
    path = os.path.join(out_dir, "summary.json")
    with open(path, "w") as f:
        json.dump({"runs": len(tasks_list), "jobs": jobs, "seeds": args.seeds, "conversations": args.conversations,
                   "wall_seconds": round(time.monotonic() - started), "classes": summary}, f, indent=2)
    header = (f"{'fault class':40} {'runs':>4} {'err':>3} {'acked':>6} {'lost':>4} {'dup':>4} {'order':>5} {'unexp':>5} "
              f"{'recov':>5} {'conv p50':>8} {'conv max':>8}")
    print(header)
    for name, row in summary.items():
        print(f"{name:40} {row['runs']:>4} {row['errors']:>3} {row['acknowledged']:>6} {row['lost']:>4} {row['duplicates']:>4} "
              f"{row['order_violations']:>5} {row['unexpected']:>5} {row['recovered']:>5} "
              f"{fmt(row['convergence_p50_s']):>8} {fmt(row['convergence_max_s']):>8}")
    print(path)
    bad = sum(row["errors"] + sum(row[k] for k in ("lost", "duplicates", "order_violations", "unexpected")) for row in summary.values())
    sys.exit(1 if bad else 0)


def fmt(value):
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
