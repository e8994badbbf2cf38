"""`make bench`: runs every scenario of parley-bench against clusters of the real executables
(release build, mutual TLS on the internal plane, PostgreSQL at durable defaults), records the
CPU seconds and peak RSS of every process from /proc, and writes one JSON report.

Each scenario gets a fresh cluster (its own database on the one PostgreSQL server), so a peak
RSS belongs to that scenario alone. The load generator is parley-bench; this script only
starts clusters, reads /proc, and writes the report.
"""

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cluster"))
from harness import ROOT, Cluster, free_port, wait_until  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Visitor gateways in a benchmark serve one client host with thousands of visitors: the
# per-address limits are raised (and the report says so).
BENCH_VG_ARGS = ["--rate-messages-per-second", "100000", "--rate-messages-burst", "100000",
                 "--rate-starts-per-second", "100000", "--rate-starts-burst", "100000",
                 "--connections-per-address", "100000",
                 # The WebSocket client library sends `Origin: ws://127.0.0.1` (no port).
                 "--allowed-origins", "ws://127.0.0.1"]

TARGETS = {
    "capacity_msgs_per_s": 15000,
    "chat_p50_ms": 2.0,
    "chat_p99_ms": 10.0,
    "idle_kib_per_visitor": 10.0,
    "idle_delivery_p99_ms": 20.0,
    "scale_relay_cpu_ratio": 1.1,
    "failover_p99_ms": 3000.0,
}


# --- /proc ------------------------------------------------------------------------------------
def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def postgres_pids(postmaster):
    """The postmaster and its children (backends, WAL writer, checkpointer...)."""
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return pids


class Processes:
    """CPU seconds between two points, and peak RSS, of every process of a cluster."""

    def __init__(self, cluster, postmaster):
        self.cluster, self.postmaster = cluster, postmaster

    def named(self):
        c = self.cluster
        out = {"relay": [c.relay.process.pid], "haproxy": [c.haproxy.process.pid],
               "postgres": postgres_pids(self.postmaster)}
        for name, node in {**c.visitor_gateways, **c.agent_gateways}.items():
            if node.process and node.process.poll() is None:
                out[name] = [node.process.pid]
        return out

    def snapshot(self):
        return {name: sum(cpu_seconds(p) or 0 for p in pids) for name, pids in self.named().items()}

    def usage(self, before):
        after = self.snapshot()
        result = {}
        for name, pids in self.named().items():
            result[name] = {
                "cpu_seconds": round(after.get(name, 0) - before.get(name, 0), 3),
                "peak_rss_mib": round(sum(status_kib(p, "VmHWM") or 0 for p in pids) / 1024, 1),
                "rss_mib": round(sum(status_kib(p, "VmRSS") or 0 for p in pids) / 1024, 1),
            }
        return result


# --- running parley-bench --------------------------------------------------------------------
def run_bench(bin_dir, *args, timeout=1800):
    """Runs parley-bench and returns its JSON result."""
    return run_bench_measured(bin_dir, *args, timeout=timeout)[0]


def wait4_usage(process):
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def run_bench_measured(bin_dir, *args, timeout=1800):
    """Runs parley-bench, returning its JSON result and its own CPU seconds and peak RSS."""
    process = subprocess.Popen([f"{bin_dir}/parley-bench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = {}

    def read():
        result["out"] = process.stdout.read()
        result["err"] = process.stderr.read()

    reader = threading.Thread(target=read)
    reader.start()
    usage = wait4_usage(process)
    reader.join(timeout)
    if process.returncode != 0:
        raise RuntimeError(f"parley-bench {args[0]} failed ({process.returncode}): {result.get('err', '').strip()[:3000]}")
    return json.loads(result["out"].strip().splitlines()[-1]), usage


class Bench:
    def __init__(self, bin_dir, admin_url, postmaster, quick):
        self.bin, self.admin, self.postmaster, self.quick = bin_dir, admin_url, postmaster, quick
        self.databases = []

    def cluster(self, visitor_gateways=2, agent_gateways=1):
        # A start can fail on a port taken between free_port and the node's bind, likelier after
        # the idle scenarios have churned through 100,000 connections: try again, twice.
        for attempt in range(3):
            self.settle()
            try:
                cluster = Cluster(self.bin, self.admin, visitor_gateways=visitor_gateways, agent_gateways=agent_gateways,
                                  visitor_gateway_args=BENCH_VG_ARGS, log_level="warning")
            except Exception as error:
                print(f"   cluster start failed ({str(error)[:200]}); retrying", file=sys.stderr, flush=True)
                if attempt == 2:
                    raise
                continue
            self.databases.append(cluster.db_name)
            return cluster

    def settle(self):
        """Every cluster starts on a quiet server: the earlier clusters' databases are dropped (their
        autovacuum would run in this one's window) and a checkpoint writes out their dirty pages."""
        for db in self.databases:
            subprocess.run(["psql", self.admin, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)
        self.databases.clear()
        subprocess.run(["psql", self.admin, "-qc", "CHECKPOINT"], check=True, capture_output=True)

    @staticmethod
    def agents(cluster, count):
        return ",".join(f"{e}:{p}" for e, p in (cluster.new_agent(f"Bench {n}") for n in range(count)))

    def chat(self, visitor_gateways, conversations, rate, seconds, warmup, transport, kill=None, agent_gateways=1):
        cluster = self.cluster(visitor_gateways, agent_gateways)
        try:
            processes = Processes(cluster, self.postmaster)
            args = ["chat", "--lb", cluster.lb_url,
                    "--agent-gateways", ",".join(cluster.agent_url(n) for n in cluster.agent_gateways),
                    "--agents", self.agents(cluster, 4), "--conversations", str(conversations), "--rate", str(rate),
                    "--seconds", str(seconds), "--warmup", str(warmup), "--transport", transport]
            if kill:
                node = cluster.visitor_gateways[kill]
                args += ["--kill-pid", str(node.process.pid), "--kill-node", kill, "--kill-after", str(seconds / 3)]
            watch = {name: pids[0] for name, pids in processes.named().items() if name != "postgres"}
            args += ["--watch", ",".join(f"{n}={p}" for n, p in watch.items())]
            before = processes.snapshot()
            result, generator = run_bench_measured(self.bin, *args)
            result["processes"] = processes.usage(before)
            result["processes"]["parley-bench"] = generator
            return result
        finally:
            cluster.stop()

    def limit(self):
        self.settle()
        db = f"bench_limit_{random.randrange(1 << 30)}"
        subprocess.run(["psql", self.admin, "-qc", f"CREATE DATABASE {db}"], check=True, capture_output=True)
        url = self.admin.rsplit("/", 1)[0] + "/" + db
        before = sum(cpu_seconds(p) or 0 for p in postgres_pids(self.postmaster))
        result = run_bench(self.bin, "limit", "--database-url", url, "--seconds", str(3 if self.quick else 10))
        result["postgres_cpu_seconds"] = round(sum(cpu_seconds(p) or 0 for p in postgres_pids(self.postmaster)) - before, 3)
        subprocess.run(["psql", self.admin, "-qc", f"DROP DATABASE {db}"], capture_output=True)
        return result

    def capacity(self, transport="ws"):
        steps = [250, 500, 1000] if self.quick else [250, 500, 1000, 2000, 4000, 8000, 15000, 20000]
        seconds, conversations = (4, 1000) if self.quick else (10, 2000)
        runs = []

        def attempt(rate):
            result = self.chat(2, conversations, rate, seconds, 2, transport)
            c = result["counts"]
            ok = result["latency"]["p99"] <= 50 and c["lost"] == 0 and c["send_errors"] == 0
            runs.append({"rate": rate, "ok": ok, "delivered_per_second": result["delivered_per_second"],
                         "p99_ms": result["latency"]["p99"], "lost": c["lost"], "send_errors": c["send_errors"],
                         "generator_late": result["generator_late"], "processes": result["processes"]})
            return ok

        low = high = None
        for rate in steps:
            if not attempt(rate):
                high = rate
                break
            low = rate
        # Doubling leaves a wide gap between the last rate that held and the first that did
        # not; two halvings narrow it to an eighth of that.
        if low is not None and high is not None and not self.quick:
            for _ in range(2):
                rate = (low + high) // 2
                low, high = (rate, high) if attempt(rate) else (low, rate)
        held = [r for r in runs if r["ok"]]
        best = max(held, key=lambda r: r["rate"]) if held else None
        return {"highest_ok_delivered_per_second": best and best["delivered_per_second"],
                "highest_ok_offered": best and best["rate"], "steps": runs}

    def idle(self, transport, per_gateway, gateways=1):
        """Idle visitors straight at the gateways (HAProxy's own file limit would cap the count)."""
        cluster = self.cluster(visitor_gateways=gateways)
        workers = []
        try:
            nodes = list(cluster.visitor_gateways.values())
            baseline = {n.name: status_kib(n.process.pid, "VmRSS") for n in nodes}
            ids_files = []
            # One worker process holds at most ~9,000 visitors: every process here may open 20,000 files.
            for node in nodes:
                remaining = per_gateway
                while remaining > 0:
                    count = min(9000, remaining)
                    remaining -= count
                    ids = tempfile.mktemp(prefix="parley-idle-ids-")
                    ids_files.append(ids)
                    workers.append(subprocess.Popen(
                        [f"{self.bin}/parley-bench", "idle", "--gateway", f"http://127.0.0.1:{node.http}", "--count", str(count),
                         "--transport", transport, "--ids-file", ids],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            wait_until(lambda: all(os.path.exists(f) or w.poll() is not None for f, w in zip(ids_files, workers)),
                       timeout=900, interval=0.5, what="idle visitors connected")
            failed = [w for w in workers if w.poll() is not None]
            if failed:
                raise RuntimeError(f"an idle worker failed: {failed[0].stderr.read()[-2000:]}")
            time.sleep(2)  # let allocations settle before reading RSS (a reading, not a test assertion)
            held = {n.name: status_kib(n.process.pid, "VmRSS") for n in nodes}
            total = per_gateway * gateways
            all_ids = os.path.join(tempfile.mkdtemp(), "ids")
            with open(all_ids, "w") as out:
                for f in ids_files:
                    out.write(open(f).read().strip() + "\n")
            email, password = cluster.new_agent("Idle Bench")
            count = 300 if self.quick else 2000
            replies = run_bench(self.bin, "replies", "--agent-gateway", cluster.agent_url(), "--agent", f"{email}:{password}",
                                "--ids-file", all_ids, "--sample", "200", "--count", str(count), "--rate", "100")
            # Deliveries are counted when the workers stop; give the last ones their moment.
            deadline = time.time() + 20
            results = []
            for worker in workers:
                out, err = worker.communicate(input="", timeout=max(30, deadline - time.time() + 30))
                results.append(json.loads(out.strip().splitlines()[-1]))
            received = sum(r["received"] for r in results)
            per_visitor = {name: round((held[name] - baseline[name]) / per_gateway, 2) for name in held}
            return {
                "transport": transport, "visitors": total, "gateways": gateways,
                "gateway_rss_mib": {n: round(v / 1024, 1) for n, v in held.items()},
                "gateway_rss_baseline_mib": {n: round(v / 1024, 1) for n, v in baseline.items()},
                "kib_per_visitor": per_visitor, "total_rss_mib": round(sum(held.values()) / 1024, 1),
                "replies": replies, "received": received, "lost": replies["acknowledged"] - received,
                "duplicates": sum(r["duplicates"] for r in results), "reordered": sum(r["reordered"] for r in results),
                "delivery_latency": merge_latency(results),
            }
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            cluster.stop()

    def scale(self):
        # A load every configuration carries without queueing, so that CPU per message is compared at equal work.
        rate, seconds, conversations = (200, 5, 100) if self.quick else (300, 15, 300)
        out = {}
        for gateways in (1, 2, 4):
            result = self.chat(gateways, conversations, rate, seconds, 2, "ws")
            delivered = result["counts"]["delivered_measured"]
            relay = result["window_cpu_seconds"]["relay"]
            out[str(gateways)] = {"relay_cpu_us_per_message": round(relay / max(1, result["counts"]["acknowledged"]) * 1e6, 1),
                                  "delivered_per_second": result["delivered_per_second"], "p99_ms": result["latency"]["p99"],
                                  "lost": result["counts"]["lost"], "delivered_measured": delivered, "processes": result["processes"]}
        out["ratio_4_to_1"] = round(out["4"]["relay_cpu_us_per_message"] / max(0.001, out["1"]["relay_cpu_us_per_message"]), 3)
        return out

    def failover(self):
        # Each conversation gets an agent message every ~0.7 s, so "receives again" is not
        # dominated by the wait for the next message; the load stays below saturation.
        conversations, rate, seconds = (60, 180, 9) if self.quick else (100, 300, 15)
        return self.chat(3, conversations, rate, seconds, 2, "ws", kill="vg-2")


def merge_latency(results):
    """One distribution from the idle workers' histograms: their buckets are added, then read
    as HdrHistogram reads a percentile (the bucket holding the count-th value, rounded up)."""
    buckets = {}
    for r in results:
        for value, count in r.get("latencyBuckets", []):
            buckets[value] = buckets.get(value, 0) + count
    total = sum(buckets.values())
    ordered = sorted(buckets.items())

    def at(percentile):
        if total == 0:
            return 0.0
        # One ulp below the percentile, as HdrHistogram does, so 99 % of 2,000 is the 1,980th value.
        wanted = max(1, math.ceil(math.nextafter(percentile, 0) * total / 100))
        seen = 0
        for value, count in ordered:
            seen += count
            if seen >= wanted:
                return value / 1000
        return ordered[-1][0] / 1000

    merged = {"p50": at(50), "p90": at(90), "p99": at(99), "p999": at(99.9),
              "max": max((r["latency"]["max"] for r in results), default=0.0), "count": total}
    # Kept beside the merged figure: how far the busiest worker's own tail lies from it.
    merged["worst_worker_p99"] = max((r["latency"]["p99"] for r in results), default=0.0)
    return merged


def summary_table(report):
    s = {name: result for name, result in report["scenarios"].items() if "error" not in result}
    rows = []

    def row(name, result, target, ok):
        rows.append((name, result, target, "yes" if ok else "NO"))

    if "limit" in s:
        row("limit: PostgreSQL rows/s (100-row batches)", f"{s['limit']['rows_per_second']:.0f}", "(the ceiling)", True)
    for t in ("ws", "longpoll", "sse"):
        key = f"chat_{t}"
        if key in s:
            lat = s[key]["latency"]
            target = "p50 <= 2 ms, p99 <= 10 ms" if t == "ws" else "within 2 ms of ws"
            ok = lat["p50"] <= 2 and lat["p99"] <= 10 if t == "ws" else "chat_ws" in s and lat["p50"] <= s["chat_ws"]["latency"]["p50"] + 2
            row(f"chat {t}: 1k msg/s, 1k conversations", f"p50 {lat['p50']} / p99 {lat['p99']} / max {lat['max']} ms, lost {s[key]['counts']['lost']}", target, ok and s[key]["counts"]["lost"] == 0)
    if "capacity" in s:
        best = s["capacity"]["highest_ok_delivered_per_second"] or 0
        first_fail = min((r["rate"] for r in s["capacity"]["steps"] if not r["ok"]), default=None)
        row("capacity (p99 <= 50 ms, 0 lost)", f"{best:.0f} msg/s" + (f" (fails at {first_fail} offered)" if first_fail else ""),
            ">= 15000 msg/s", best >= 15000)
    for key in ("idle_ws", "idle_longpoll", "idle_ws_6x"):
        if key in s:
            i = s[key]
            worst = max(i["kib_per_visitor"].values())
            row(f"{key}: {i['visitors']} visitors on {i['gateways']} gateway(s)",
                f"{worst} KiB/visitor, total {i['total_rss_mib']} MiB, delivery p99 {i['delivery_latency']['p99']} ms, lost {i['lost']}",
                "<= 10 KiB/visitor, p99 <= 20 ms" + (", <= 1 GiB total" if i["gateways"] > 1 else ""),
                worst <= 10 and i["delivery_latency"]["p99"] <= 20 and i["lost"] == 0)
    if "scale" in s:
        sc = s["scale"]
        row("scale: relay CPU/msg, 4 gateways vs 1",
            f"{sc['1']['relay_cpu_us_per_message']} -> {sc['2']['relay_cpu_us_per_message']} -> {sc['4']['relay_cpu_us_per_message']} us (x{sc['ratio_4_to_1']})",
            "<= 1.1x", sc["ratio_4_to_1"] <= 1.1)
    if "failover" in s:
        f = s["failover"]["failover"]
        row("failover: kill -9 one of 3 gateways",
            f"recovered {f['recovered']}/{f['visitors']}, p50 {f['recovery_p50_ms']} / p99 {f['recovery_p99_ms']} / max {f['recovery_max_ms']} ms, lost {s['failover']['counts']['lost']}",
            "p99 <= 3000 ms, 0 lost", f["recovery_p99_ms"] <= 3000 and s["failover"]["counts"]["lost"] == 0 and f["recovered"] == f["visitors"])
    widths = [max(len(r[i]) for r in rows + [("scenario", "result", "target", "met")]) for i in range(4)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(("scenario", "result", "target", "met"), widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--postmaster", type=int, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated scenarios (limit,chat,capacity,idle,scale,failover)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    bench = Bench(args.bin, args.admin_url, args.postmaster, args.quick)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
    report = {
        "machine": {"cores": os.cpu_count(), "kernel": platform.release(), "open_files_limit": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0]},
        "commit": commit + ("-dirty" if dirty else ""),
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": {
            "build": "release", "internal_plane": "mutual TLS", "postgres": "fsync=on, synchronous_commit=on (defaults), max_connections=200",
            "visitor_gateway_settings": BENCH_VG_ARGS,
            "notes": ["every process on this one machine: PostgreSQL, relay, gateways, HAProxy and the load generator",
                      "chat, capacity, scale and failover visitors go through HAProxy; idle visitors connect straight to the gateways",
                      "per-address limits of the visitor gateways are raised: every benchmark client comes from 127.0.0.1"],
        },
        "targets": TARGETS,
        "scenarios": {},
    }
    scenarios = report["scenarios"]

    def want(name):
        return not only or name in only

    out = args.out or os.path.join(tempfile.mkdtemp(prefix="parley-bench-"), "report.json")

    def save():
        with open(out, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)

    def step(name, fn):
        started = time.time()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            scenarios[name] = fn()
        except Exception as error:  # a failed scenario is reported, the others still run
            scenarios[name] = {"error": str(error)}
        scenarios[name]["wall_seconds"] = round(time.time() - started, 1)
        save()  # a long run keeps what it measured even if stopped

    chat_seconds, chat_warmup = (8, 2) if args.quick else (30, 5)
    if want("limit"):
        step("limit", bench.limit)
    if want("chat"):
        for transport in ("ws", "longpoll", "sse"):
            step(f"chat_{transport}", lambda t=transport: bench.chat(2, 1000, 1000, chat_seconds, chat_warmup, t))
    if want("capacity"):
        step("capacity", bench.capacity)
    if want("idle"):
        per = 2000 if args.quick else 19000
        step("idle_ws", lambda: bench.idle("ws", per))
        step("idle_longpoll", lambda: bench.idle("longpoll", per))
        if not args.quick:
            step("idle_ws_6x", lambda: bench.idle("ws", 16667, gateways=6))
    if want("scale"):
        step("scale", bench.scale)
    if want("failover"):
        step("failover", bench.failover)

    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    try:
        print(summary_table(report))
    except (KeyError, TypeError, ValueError) as error:
        print(f"(no table: {error!r})")
    errors = [n for n, r in scenarios.items() if isinstance(r, dict) and "error" in r]
    if errors:
        print("scenarios that failed to run: " + ", ".join(f"{n} ({scenarios[n]['error'][:200]})" for n in errors))
    print(out)


if __name__ == "__main__":
    main()
