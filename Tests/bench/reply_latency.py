"""End-to-end latency of an agent reply reaching a long-polling visitor, and the relay's
commit rate, on a real cluster (relay, two visitor gateways, agent gateway, HAProxy,
PostgreSQL). Prints a JSON summary.

Latency: from just before the agent's POST to the moment the visitor's long-poll returns the
event, both clocks being this process's monotonic clock. Visitors long-poll through HAProxy,
each in its own thread; agents reply one message at a time per conversation.
"""

import argparse
import json
import os
import sys
import threading
import time
import uuid

import requests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cluster"))
from harness import AgentClient, Cluster, Visitor, metric  # noqa: E402


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def reply_latency(cluster, conversations, messages, pace_ms):
    email, password = cluster.new_agent("Bench")
    agent = AgentClient(cluster.agent_url(), email, password)
    visitors = []
    for _ in range(conversations):
        v = Visitor(cluster.lb_url)
        v.start()
        assert agent.claim(v.conversation).status_code == 200
        v.poll()
        visitors.append(v)
    sent_at = {}
    latencies = []
    lock = threading.Lock()
    per_conversation = messages // conversations
    done = threading.Event()

    def listen(v):
        received = 0
        while received < per_conversation and not done.is_set():
            body = v.poll(wait=10)
            now = time.monotonic()
            for event in body["events"]:
                key = event.get("client_msg_id")
                if event["sender"] == "agent" and key in sent_at:
                    with lock:
                        latencies.append((now - sent_at[key]) * 1000)
                    received += 1

    def speak(v, session):
        for n in range(per_conversation):
            key = f"bench-{uuid.uuid4()}"
            sent_at[key] = time.monotonic()
            r = session.post(f"{agent.base}/v1/agent/conversations/{v.conversation}/messages",
                             json={"client_msg_id": key, "text": f"reply {n}"}, headers=agent.headers, timeout=10)
            assert r.status_code == 201, r.text
            # Pace each conversation (an agent types; nobody replies 50 times a second), so that
            # the latency measured is the system's, not the queue of an overloaded machine.
            time.sleep(pace_ms / 1000)

    listeners = [threading.Thread(target=listen, args=(v,)) for v in visitors]
    for t in listeners:
        t.start()
    relay_before = metric(cluster.relay.metrics(), "parley_relay_messages_committed_total")
    start = time.monotonic()
    speakers = [threading.Thread(target=speak, args=(v, requests.Session())) for v in visitors]
    for t in speakers:
        t.start()
    for t in speakers:
        t.join()
    for t in listeners:
        t.join(timeout=30)
    done.set()
    elapsed = time.monotonic() - start
    relay_after = metric(cluster.relay.metrics(), "parley_relay_messages_committed_total")
    return {
        "messages": len(latencies),
        "conversations": conversations,
        "pace_ms": pace_ms,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "relay_committed": int(relay_after - relay_before),
        "relay_committed_per_s": round((relay_after - relay_before) / elapsed, 1),
        "seconds": round(elapsed, 2),
    }


def commit_throughput(cluster, senders, seconds):
    """Visitors sending as fast as they can through HAProxy: messages/s the relay commits."""
    visitors = []
    for _ in range(senders):
        v = Visitor(cluster.lb_url)
        v.start()
        visitors.append(v)
    stop = time.monotonic() + seconds
    counts = [0] * senders

    def send(index):
        v = visitors[index]
        while time.monotonic() < stop:
            assert v.send("load").status_code == 201
            counts[index] += 1

    before = cluster.relay.metrics()
    start = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    after = cluster.relay.metrics()
    committed = metric(after, "parley_relay_messages_committed_total") - metric(before, "parley_relay_messages_committed_total")
    batches = metric(after, "parley_relay_commit_batch_size_count") - metric(before, "parley_relay_commit_batch_size_count")
    return {
        "senders": senders,
        "acknowledged": sum(counts),
        "relay_committed_per_s": round(committed / elapsed, 1),
        "mean_batch_size": round(committed / batches, 2) if batches else None,
        "seconds": round(elapsed, 2),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--pace-ms", type=float, default=100, help="pause between one conversation's replies")
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    cluster = Cluster(args.bin, args.admin_url, visitor_gateways=2, agent_gateways=1)
    try:
        result = {
            "reply_latency": reply_latency(cluster, args.conversations, args.messages, args.pace_ms),
            "commit_throughput": commit_throughput(cluster, args.senders, args.seconds),
        }
    finally:
        cluster.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
