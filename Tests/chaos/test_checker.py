"""The checker must catch what it claims to catch: synthetic histories with known faults."""

from types import SimpleNamespace

from checker import check


def op(conversation, sender, key, index, status="ok", seq=None):
    return {"conversation": conversation, "sender": sender, "client_msg_id": key, "index": index, "status": status, "seq": seq}


def client(conversation, seqs, ids):
    return SimpleNamespace(conversation=conversation, received=[{"seq": s, "client_msg_id": i} for s, i in zip(seqs, ids)])


DB = {"c": [(1, "visitor", "v1"), (2, "agent", "a1"), (3, "visitor", "v2")]}
OPS = [op("c", "visitor", "v1", 0, seq=1), op("c", "agent", "a1", 0, seq=2), op("c", "visitor", "v2", 1, seq=3)]


def test_a_clean_run_counts_nothing():
    report = check(OPS, [client("c", [1, 2, 3], ["v1", "a1", "v2"])], [client("c", [1, 2, 3], ["v1", "a1", "v2"])], DB)
    assert (report["lost"], report["duplicates"], report["order_violations"], report["unexpected"]) == (0, 0, 0, 0)
    assert report["acknowledged"] == 3


def test_acknowledged_but_not_stored_or_not_received_is_lost():
    db = {"c": DB["c"][:2]}
    report = check(OPS, [client("c", [1, 2], ["v1", "a1"])], [client("c", [1, 2], ["v1", "a1"])], db)
    assert report["lost"] >= 1
    report = check(OPS, [client("c", [1, 2], ["v1", "a1"])], [client("c", [1, 2, 3], ["v1", "a1", "v2"])], DB)
    assert report["lost"] == 1


def test_duplicates_gaps_reordering_and_inventions_are_counted():
    report = check(OPS, [client("c", [1, 2, 2, 3], ["v1", "a1", "a1", "v2"])], [], DB)
    assert report["duplicates"] == 1
    report = check(OPS, [client("c", [1, 3], ["v1", "v2"])], [], DB)
    assert report["order_violations"] == 1
    report = check(OPS, [client("c", [1, 2, 3], ["v1", "zz", "v2"])], [], DB)
    assert report["unexpected"] == 1
    swapped = [op("c", "visitor", "v1", 1, seq=1), op("c", "agent", "a1", 0, seq=2), op("c", "visitor", "v2", 0, seq=3)]
    assert check(swapped, [], [], DB)["order_violations"] == 1
    db = {"c": DB["c"] + [(4, "visitor", "v1")]}
    assert check(OPS, [], [], db)["duplicates"] == 1


def test_unknown_outcomes_that_were_stored_are_recovered():
    ops = OPS[:2] + [op("c", "visitor", "v2", 1, status="unknown")]
    assert check(ops, [], [], DB)["recovered"] == 1
