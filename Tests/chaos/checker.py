"""Reads a run's history, every client's received stream and the database, and counts what a
Jepsen-style checker counts: lost, duplicates, order violations, unexpected, recovered."""

from collections import Counter, defaultdict


def check(history_ops, visitors, agents, db_events):
    """`db_events`: conversation -> list of (seq, sender, client_msg_id) from PostgreSQL."""
    report = {"lost": 0, "duplicates": 0, "order_violations": 0, "unexpected": 0, "recovered": 0,
              "acknowledged": 0, "unknown_or_failed": 0, "details": []}

    def note(kind, **fields):
        report[kind] += 1
        if len(report["details"]) < 50:
            report["details"].append(dict(fields, kind=kind))

    stored = {}  # (conversation, sender, client_msg_id) -> seq
    for conversation, rows in db_events.items():
        seen_ids = Counter()
        for seq, sender, client_msg_id in rows:
            if client_msg_id:
                seen_ids[(sender, client_msg_id)] += 1
                stored[(conversation, sender, client_msg_id)] = seq
        for key, count in seen_ids.items():
            if count > 1:
                note("duplicates", conversation=conversation, client_msg_id=key[1], where="database")
        seqs = [row[0] for row in rows]
        if seqs != list(range(1, len(seqs) + 1)):
            note("order_violations", conversation=conversation, where="database", seqs=seqs[:20])

    invoked = defaultdict(set)
    acked_by_sender = defaultdict(list)
    for op in history_ops:
        key = (op["conversation"], op["sender"], op["client_msg_id"])
        invoked[op["conversation"]].add(op["client_msg_id"])
        if op["status"] == "ok":
            report["acknowledged"] += 1
            if key not in stored:
                note("lost", conversation=op["conversation"], client_msg_id=op["client_msg_id"], where="database")
            elif stored[key] != op["seq"]:
                note("order_violations", conversation=op["conversation"], client_msg_id=op["client_msg_id"],
                     where="acknowledged seq differs from stored seq")
            acked_by_sender[(op["conversation"], op["sender"])].append(op)
        else:
            report["unknown_or_failed"] += 1
            if key in stored:
                report["recovered"] += 1

    # One sender's acknowledged messages are stored in the order they were sent.
    for (conversation, sender), ops in acked_by_sender.items():
        ops = sorted(ops, key=lambda op: op["index"])
        seqs = [op["seq"] for op in ops]
        if seqs != sorted(seqs):
            note("order_violations", conversation=conversation, sender=sender, where="send order", seqs=seqs)

    for role, clients in (("visitor", visitors), ("agent", agents)):
        for client in clients:
            conversation = client.conversation
            received = client.received
            seqs = [event["seq"] for event in received]
            counts = Counter(seqs)
            for seq, count in counts.items():
                if count > 1:
                    note("duplicates", conversation=conversation, where=f"{role} stream", seq=seq)
            distinct = []
            for seq in seqs:
                if not distinct or seq != distinct[-1]:
                    distinct.append(seq)
            if distinct != list(range(1, len(distinct) + 1)):
                note("order_violations", conversation=conversation, where=f"{role} stream", seqs=distinct[:30])
            by_seq = {row[0]: row for row in db_events.get(conversation, [])}
            for event in received:
                row = by_seq.get(event["seq"])
                if row is None or (event.get("client_msg_id") or None) != (row[2] or None):
                    note("unexpected", conversation=conversation, where=f"{role} stream", seq=event["seq"])
                elif event.get("client_msg_id") and event["client_msg_id"] not in invoked[conversation]:
                    note("unexpected", conversation=conversation, where=f"{role} stream", client_msg_id=event["client_msg_id"])
            # Everything acknowledged in this conversation reached this client.
            got = {event.get("client_msg_id") for event in received}
            for op in history_ops:
                if op["conversation"] == conversation and op["status"] == "ok" and op["client_msg_id"] not in got:
                    note("lost", conversation=conversation, where=f"not received by the {role}", client_msg_id=op["client_msg_id"])
    return report
