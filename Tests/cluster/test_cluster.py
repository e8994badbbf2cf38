"""The cluster through its public APIs: real executables, HAProxy, PostgreSQL."""

import json
import signal
import socket
import struct
import threading
import time
import uuid

import requests
import websocket

from harness import AgentClient, Visitor, assert_exactly_once_in_order, metric, wait_until


def open_conversation(cluster, agent_gateway="ag-1", **fields):
    visitor = Visitor(cluster.lb_url)
    visitor.start(**fields)
    email, password = cluster.new_agent("Ann")
    agent = AgentClient(cluster.agent_url(agent_gateway), email, password)
    assert agent.claim(visitor.conversation).status_code == 200
    return visitor, agent


def test_chat_both_ways_over_long_poll(cluster):
    visitor = Visitor(cluster.lb_url)
    started = visitor.start(name="Vera", email="vera@example.com", topic="billing")
    assert started["last_seq"] == 0 and visitor.node == started["node_id"]
    email, password = cluster.new_agent("Ann")
    agent = AgentClient(cluster.agent_url(), email, password)

    queued = agent.get("/v1/agent/conversations", status="queued").json()["conversations"]
    mine = [c for c in queued if c["id"] == visitor.conversation]
    assert mine and mine[0]["visitor_name"] == "Vera" and mine[0]["topic"] == "billing"

    sent = visitor.send("Hello, my invoice is wrong")
    assert sent.status_code == 201 and sent.json()["seq"] == 1
    assert agent.claim(visitor.conversation).status_code == 200
    reply = agent.reply(visitor.conversation, "Let me check <b>that</b> for you")
    assert reply.status_code == 201 and reply.json()["seq"] == 3

    visitor.poll_until(lambda seen: len(seen) >= 3)
    assert [e["type"] for e in visitor.seen] == ["message", "agent_joined", "message"]
    assert visitor.seen[2]["text"] == "Let me check <b>that</b> for you"
    assert visitor.seen[2]["sender"] == "agent" and visitor.seen[2]["agent"]["name"] == "Ann"
    assert_exactly_once_in_order(visitor.seen)

    history = agent.history(visitor.conversation)
    assert [e["seq"] for e in history["events"]] == [1, 2, 3] and history["last_seq"] == 3

    # A long-poll with nothing new waits, then returns empty with the same cursor.
    body = visitor.poll(wait=1)
    assert body["events"] == [] and body["last_seq"] == 3

    open_list = agent.get("/v1/agent/conversations", status="open").json()["conversations"]
    assert any(c["id"] == visitor.conversation and c["assigned_agent"]["name"] == "Ann" for c in open_list)


def test_queue_is_oldest_first(cluster):
    email, password = cluster.new_agent()
    agent = AgentClient(cluster.agent_url(), email, password)
    ids = []
    for _ in range(3):
        v = Visitor(cluster.lb_url)
        v.start()
        ids.append(v.conversation)
    queued = [c["id"] for c in agent.get("/v1/agent/conversations", status="queued").json()["conversations"]]
    positions = [queued.index(i) for i in ids]
    assert positions == sorted(positions)


def test_server_sent_events_resume_from_last_event_id(cluster):
    visitor, agent = open_conversation(cluster)
    agent.reply(visitor.conversation, "first")
    url = f"{cluster.lb_url}/v1/conversations/{visitor.conversation}/stream"
    received = []

    def read_stream(headers):
        with visitor.session.get(url, headers={**visitor.headers, **headers}, stream=True, timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                    if len(received) >= expected[0]:
                        return

    expected = [3]
    thread = threading.Thread(target=read_stream, args=({},), daemon=True)
    thread.start()
    wait_until(lambda: len(received) >= 2, what="SSE catch-up")
    agent.reply(visitor.conversation, "second")
    thread.join(timeout=20)
    assert [e["seq"] for e in received] == [1, 2, 3]
    assert received[2]["text"] == "second"

    # Reconnect with Last-Event-ID: only what came after it.
    agent.reply(visitor.conversation, "third")
    received.clear()
    expected[0] = 1
    read_stream({"Last-Event-ID": "3"})
    assert [e["seq"] for e in received] == [4] and received[0]["text"] == "third"


def test_websocket_sends_with_ack_and_receives_replies(cluster):
    visitor, agent = open_conversation(cluster)
    cookie = "; ".join(f"{c.name}={c.value}" for c in visitor.session.cookies)
    ws_url = cluster.lb_url.replace("http://", "ws://") + f"/v1/conversations/{visitor.conversation}/ws?after=0"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: Bearer {visitor.token}", f"Cookie: {cookie}"], timeout=15)
    frames = []
    matched = set()

    def next_frame(predicate):
        # An event may arrive before the ack that precedes it in the test: look at what came first.
        index = 0
        while True:
            while index < len(frames):
                if index not in matched and predicate(frames[index]):
                    matched.add(index)
                    return frames[index]
                index += 1
            frames.append(json.loads(ws.recv()))

    joined = next_frame(lambda f: f.get("type") == "agent_joined")
    assert joined["seq"] == 1
    ws.send(json.dumps({"type": "message", "client_msg_id": "ws-1", "text": "over the socket"}))
    ack = next_frame(lambda f: f.get("type") == "ack")
    assert ack["client_msg_id"] == "ws-1" and ack["seq"] == 2
    echoed = next_frame(lambda f: f.get("seq") == 2)
    assert echoed["text"] == "over the socket" and echoed["sender"] == "visitor"
    agent.reply(visitor.conversation, "over to you")
    reply = next_frame(lambda f: f.get("seq") == 3)
    assert reply["sender"] == "agent" and reply["text"] == "over to you"
    ws.send(json.dumps({"type": "message", "client_msg_id": "ws-1", "text": "over the socket"}))
    again = next_frame(lambda f: f.get("type") == "ack")
    assert again["seq"] == 2
    ws.send("not json")
    error = next_frame(lambda f: f.get("type") == "error")
    assert error["error"]["code"] == "invalid_request"
    ws.close()
    seqs = [f["seq"] for f in frames if "seq" in f and f.get("type") != "ack"]
    assert seqs == [1, 2, 3]


def next_control_frame(ws):
    """The next frame other than the gateway's own keepalive pings (which may come at any time)."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode != websocket.ABNF.OPCODE_PING:
            return opcode, frame


def test_websocket_refuses_a_bad_token(cluster):
    visitor = Visitor(cluster.lb_url)
    visitor.start()
    ws_url = cluster.lb_url.replace("http://", "ws://") + f"/v1/conversations/{visitor.conversation}/ws"
    # A refused upgrade says why, in the same JSON as every other error.
    for header, status, code in (
        (["Authorization: Bearer pv1.k1.nope.0.AAAA"], 401, "unauthorized"),
        ([f"Authorization: Bearer {visitor.token}"], 400, "invalid_request"),  # with ?after=-1 below
    ):
        url = ws_url + ("?after=-1" if status == 400 else "")
        try:
            websocket.create_connection(url, header=header, timeout=5)
            raise AssertionError(f"upgrade accepted: {header}")
        except websocket.WebSocketBadStatusException as error:
            assert error.status_code == status, error
            assert json.loads(error.resp_body)["error"]["code"] == code, error.resp_body
    # A plain GET of the socket's address is told to upgrade.
    plain = visitor.session.get(ws_url.replace("ws://", "http://"), headers=visitor.headers, timeout=10)
    assert plain.status_code == 400 and "WebSocket" in plain.json()["error"]["message"], plain.text


def test_websocket_keeps_order_answers_pings_and_moves_on_drain(cluster):
    visitor, agent = open_conversation(cluster)
    pinned = visitor.node
    gateway = cluster.visitor_gateways[pinned]
    # Straight at the pinned node, so the drain below reaches this socket.
    ws = websocket.create_connection(f"ws://127.0.0.1:{gateway.http}/v1/conversations/{visitor.conversation}/ws?after=1",
                                     header=[f"Authorization: Bearer {visitor.token}"], timeout=15)
    # A burst sent without waiting (within the rate limit's burst of 20): handled one at a time,
    # so stored and acknowledged in send order.
    for n in range(15):
        ws.send(json.dumps({"type": "message", "client_msg_id": f"burst-{n}", "text": f"burst {n}"}))
    acks, events = [], []
    while len(acks) < 15 or len(events) < 15:
        frame = json.loads(ws.recv())
        (acks if frame.get("type") == "ack" else events).append(frame)
    assert [a["client_msg_id"] for a in acks] == [f"burst-{n}" for n in range(15)]
    assert [a["seq"] for a in acks] == list(range(2, 17))
    assert [e["seq"] for e in events] == list(range(2, 17)) and events[-1]["text"] == "burst 14"
    # A ping is answered with the same payload.
    ws.ping("are you there")
    opcode, frame = next_control_frame(ws)
    assert opcode == websocket.ABNF.OPCODE_PONG and frame.data == b"are you there"
    # Draining the node tells the socket to move, then closes it.
    cluster.ctl("nodes", "drain", pinned)
    try:
        move = json.loads(ws.recv())
        assert move["type"] == "move" and move["code"] == "draining", move
        opcode, frame = next_control_frame(ws)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame.data[:2], "big") == 1001
        ws.close()
    finally:
        cluster.ctl("nodes", "undrain", pinned)
    wait_until(lambda: gateway.health().status_code == 200, what="undrained node healthy again")

    def balanced():
        nodes = set()
        for _ in range(2):
            fresh = Visitor(cluster.lb_url)
            fresh.start()
            nodes.add(fresh.node)
        return len(nodes) == 2
    wait_until(balanced, timeout=30, what="HAProxy sending visitors to the undrained node again")
    # Nothing was stored twice, and the socket's cursor resumes anywhere.
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}' AND client_msg_id LIKE 'burst-%'") == "15"
    ws = websocket.create_connection(cluster.lb_url.replace("http://", "ws://") + f"/v1/conversations/{visitor.conversation}/ws?after=15",
                                     header=[f"Authorization: Bearer {visitor.token}"], timeout=15)
    assert json.loads(ws.recv())["seq"] == 16
    # The visitor's close is answered with a close, and the gateway lets go of the socket.
    ws.send_close(websocket.STATUS_NORMAL)
    opcode, frame = next_control_frame(ws)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    ws.shutdown()


def read_http_responses(raw, count):
    """Reads `count` HTTP/1.1 responses (with Content-Length) from a socket: [(status, body)]."""
    data, responses = b"", []
    raw.settimeout(15)
    while len(responses) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode()
            length = int(next(line.split(":", 1)[1] for line in head.split("\r\n") if line.lower().startswith("content-length:")))
            if len(data) >= head_end + 4 + length:
                responses.append((int(head.split()[1]), json.loads(data[head_end + 4:head_end + 4 + length])))
                data = data[head_end + 4 + length:]
                continue
        chunk = raw.recv(65536)
        assert chunk, f"connection closed after {len(responses)} responses"
        data += chunk
    return responses


def test_waiting_long_polls_answer_at_their_deadline_and_in_request_order(cluster):
    visitor, agent = open_conversation(cluster)
    gateway = cluster.visitor_gateways[visitor.node]
    path = f"/v1/conversations/{visitor.conversation}/events"
    # Nothing after the cursor: the poll answers at its deadline, with an empty page and the
    # headers every API response has.
    response = requests.get(f"http://127.0.0.1:{gateway.http}{path}", params={"after": 1, "wait": 1}, headers=visitor.headers, timeout=10)
    assert response.status_code == 200 and response.json()["events"] == [] and response.json()["last_seq"] == 1, response.text
    assert response.headers["X-Content-Type-Options"] == "nosniff" and "parley_node=" in response.headers["Set-Cookie"]
    # Requests pipelined behind a waiting poll on one connection are answered after it, in order.
    auth = f"Authorization: Bearer {visitor.token}\r\n"
    with socket.create_connection(("127.0.0.1", gateway.http)) as raw:
        raw.sendall((f"GET {path}?after=1&wait=1 HTTP/1.1\r\nHost: vg\r\n{auth}\r\n"
                     f"GET {path}?after=0&wait=0 HTTP/1.1\r\nHost: vg\r\n{auth}\r\n"
                     f"GET {path}?after=0&wait=5 HTTP/1.1\r\nHost: vg\r\n{auth}\r\n").encode())
        (s1, first), (s2, second), (s3, third) = read_http_responses(raw, 3)
    assert (s1, s2, s3) == (200, 200, 200)
    assert first["events"] == [] and [e["seq"] for e in second["events"]] == [1] and [e["seq"] for e in third["events"]] == [1]
    # A poll the checks refuse gets the router's JSON error, like any other request.
    refused = requests.get(f"http://127.0.0.1:{gateway.http}{path}", params={"after": 0, "wait": 5},
                           headers={"Authorization": "Bearer pv1.k1.nope.0.AAAA"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


def read_until_closed(raw):
    """Everything the peer sends until it closes the connection (fails if it stays open 15 s)."""
    raw.settimeout(15)
    data = b""
    while chunk := raw.recv(65536):
        data += chunk
    return data


def test_malformed_and_oversized_requests_end_the_connection_after_earlier_answers(cluster):
    gateway = next(iter(cluster.visitor_gateways.values()))
    # A request that does not parse, pipelined behind a good one: the good one is answered,
    # then a 400, then the connection closes.
    with socket.create_connection(("127.0.0.1", gateway.http)) as raw:
        raw.sendall(b"GET /v1/nothing HTTP/1.1\r\nHost: vg\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        data = read_until_closed(raw)
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 404") and b'"not_found"' in rest, data
    assert rest.split(b"}}", 1)[1].startswith(b"HTTP/1.1 400"), data
    # The RFC 9110 date every response carries.
    date = next(line for line in first.decode().split("\r\n") if line.lower().startswith("date:"))
    time.strptime(date.split(":", 1)[1].strip(), "%a, %d %b %Y %H:%M:%S GMT")
    # Garbage as the first request: the connection is closed, not left open.
    with socket.create_connection(("127.0.0.1", gateway.http)) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert b"HTTP/1.1 200" not in read_until_closed(raw)
    # A body over the limit: a JSON 413, and the connection closes (the rest is not read).
    with socket.create_connection(("127.0.0.1", gateway.http)) as raw:
        body = b"x" * 40_000
        raw.sendall(b"POST /v1/conversations HTTP/1.1\r\nHost: vg\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        data = read_until_closed(raw)
    assert data.startswith(b"HTTP/1.1 413") and b'"payload_too_large"' in data, data[:300]


def test_a_stream_whose_visitor_leaves_is_let_go(cluster):
    visitor, agent = open_conversation(cluster)
    gateway = cluster.visitor_gateways[visitor.node]

    def connected():
        return metric(gateway.metrics(), "parley_gateway_connected_visitors")

    before = connected()
    raw = socket.create_connection(("127.0.0.1", gateway.http))
    raw.sendall((f"GET /v1/conversations/{visitor.conversation}/stream?after=0 HTTP/1.1\r\nHost: vg\r\n"
                 f"Authorization: Bearer {visitor.token}\r\n\r\n").encode())
    raw.settimeout(15)
    received = b""
    while b"data: " not in received:  # the stream is past its first read and waiting for news
        chunk = raw.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received
    wait_until(lambda: connected() == before + 1, timeout=10, what="the stream counted")
    # The visitor's machine drops the connection (a reset, as when a network goes away).
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    wait_until(lambda: connected() == before, timeout=10, what="the stream let go")


def test_agent_reply_is_delivered_only_to_the_pinned_node(cluster):
    visitor, agent = open_conversation(cluster)
    pinned = visitor.node
    before = {name: metric(node.metrics(), "parley_gateway_delivered_events_total") for name, node in cluster.visitor_gateways.items()}
    for n in range(5):
        assert agent.reply(visitor.conversation, f"reply {n}").status_code == 201
    visitor.poll_until(lambda seen: len(seen) >= 6)
    after = {name: metric(node.metrics(), "parley_gateway_delivered_events_total") for name, node in cluster.visitor_gateways.items()}
    assert after[pinned] - before[pinned] >= 5
    for name in cluster.visitor_gateways:
        if name != pinned:
            assert after[name] == before[name], f"{name} received deliveries for a conversation pinned to {pinned}"
    relay_metrics = cluster.relay.metrics()
    assert metric(relay_metrics, "parley_relay_messages_committed_total") > 0
    assert "parley_relay_commit_batch_size" in relay_metrics


def test_idempotent_retry_stores_once(cluster):
    visitor, agent = open_conversation(cluster)
    first = visitor.send("exactly once", client_msg_id="retry-me")
    second = visitor.send("exactly once", client_msg_id="retry-me")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["seq"] == second.json()["seq"]
    assert second.json()["duplicate"] is True
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}' AND client_msg_id = 'retry-me'") == "1"
    reply = agent.reply(visitor.conversation, "agent once", client_msg_id="agent-retry")
    again = agent.reply(visitor.conversation, "agent once", client_msg_id="agent-retry")
    assert reply.status_code == 201 and again.status_code == 200 and reply.json()["seq"] == again.json()["seq"]


def test_two_agents_claim_at_once_on_two_gateways(cluster):
    for _ in range(5):
        visitor = Visitor(cluster.lb_url)
        visitor.start()
        agents = []
        for gateway in ("ag-1", "ag-2"):
            email, password = cluster.new_agent(gateway)
            agents.append(AgentClient(cluster.agent_url(gateway), email, password))
        barrier = threading.Barrier(2)
        results = [None, None]

        def claim(index):
            barrier.wait()
            results[index] = agents[index].claim(visitor.conversation)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 409], [r.text for r in results]
        loser = next(r for r in results if r.status_code == 409)
        assert loser.json()["error"]["code"] == "already_claimed"
        assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}' AND type = 'agent_joined'") == "1"


def test_agent_websocket_sees_events_from_every_node(cluster):
    email, password = cluster.new_agent("Watcher")
    watcher = AgentClient(cluster.agent_url("ag-2"), email, password)
    ws_url = cluster.agent_url("ag-2").replace("http://", "ws://") + "/v1/agent/ws"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: Bearer {watcher.token}"], timeout=15)
    visitors = []
    for _ in range(4):  # round-robin through HAProxy: conversations on both visitor gateways
        v = Visitor(cluster.lb_url)
        v.start()
        v.send("hello from " + v.node)
        visitors.append(v)
    assert len({v.node for v in visitors}) == 2
    wanted = {(v.conversation, 1) for v in visitors}
    seen_new = set()
    # Events come as they commit; summaries follow, batched, within a tick.
    while wanted or not {v.conversation for v in visitors} <= seen_new:
        frame = json.loads(ws.recv())
        if frame["type"] == "conversation":
            seen_new.add(frame["conversation"]["id"])
        if frame["type"] == "event":
            wanted.discard((frame["conversation_id"], frame["event"]["seq"]))
    assert {v.conversation for v in visitors} <= seen_new
    ws.close()


def test_agent_websocket_sends_summaries_for_changes_but_not_for_messages(cluster):
    """A message reaches consoles as its event frame alone; a start or a claim also sends the
    conversation's summary. Frames are read in order, and a summary of the first conversation
    after its message would come, at the latest, in the tick that sends the second one's first
    summary: before the second one's claim."""
    email, password = cluster.new_agent("Watcher")
    agent = AgentClient(cluster.agent_url(), email, password)
    ws_url = cluster.agent_url().replace("http://", "ws://") + "/v1/agent/ws"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: Bearer {agent.token}"], timeout=15)

    def frames_until(predicate):
        seen = []
        while True:
            frame = json.loads(ws.recv())
            seen.append(frame)
            if predicate(frame):
                return seen

    def summary_of(conversation, status):
        return lambda f: f["type"] == "conversation" and f["conversation"]["id"] == conversation and f["conversation"]["status"] == status

    first = Visitor(cluster.lb_url)
    first.start()
    frames_until(summary_of(first.conversation, "queued"))
    assert first.send("only an event, please").status_code == 201
    frames_until(lambda f: f["type"] == "event" and f["conversation_id"] == first.conversation and f["event"]["seq"] == 1)
    second = Visitor(cluster.lb_url)
    second.start()
    after = frames_until(summary_of(second.conversation, "queued"))
    assert agent.claim(second.conversation).status_code == 200
    after += frames_until(summary_of(second.conversation, "open"))
    assert [f for f in after if f["type"] == "conversation" and f["conversation"]["id"] == first.conversation] == []
    assert any(f["type"] == "event" and f["conversation_id"] == second.conversation and f["event"]["type"] == "agent_joined" for f in after)
    ws.close()


def agent_socket(cluster, headers, query=""):
    ws_url = cluster.agent_url().replace("http://", "ws://") + "/v1/agent/ws" + query
    # The Origin, when there is one, is the test's own, as a browser sends it: one header.
    return websocket.create_connection(ws_url, header=headers, timeout=15, suppress_origin=True)


def answers(ws, wanted, timeout=20):
    """The ack and error frames of the agent socket for the client_msg_ids in `wanted`, in the
    order they came; the feed's frames in between are passed over."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < len(wanted):
        assert time.monotonic() < deadline, f"answers for {wanted} did not all come: {got}"
        frame = json.loads(ws.recv())
        if frame["type"] in ("ack", "error") and frame["client_msg_id"] in wanted:
            got.append(frame)
    return got


def test_agent_replies_over_the_websocket_are_stored_once_in_the_order_sent(cluster):
    visitor, agent = open_conversation(cluster)
    ws = agent_socket(cluster, [f"Authorization: Bearer {agent.token}"])
    ids = [f"ws-{n}-{uuid.uuid4()}" for n in range(20)]
    # Sent back to back, without waiting for answers.
    for n, client_msg_id in enumerate(ids):
        ws.send(json.dumps({"type": "message", "conversation_id": visitor.conversation, "client_msg_id": client_msg_id, "text": f"reply {n}"}))
    acks = {f["client_msg_id"]: f for f in answers(ws, set(ids))}
    assert all(acks[i]["type"] == "ack" and acks[i]["duplicate"] is False and acks[i]["conversation_id"] == visitor.conversation for i in ids), acks
    seqs = [acks[i]["seq"] for i in ids]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20, seqs
    visitor.poll_until(lambda seen: sum(e["type"] == "message" for e in seen) >= 20)
    assert [e["text"] for e in visitor.seen if e["type"] == "message"] == [f"reply {n}" for n in range(20)]
    # The same client_msg_id again: the original seq, nothing stored twice.
    ws.send(json.dumps({"type": "message", "conversation_id": visitor.conversation, "client_msg_id": ids[3], "text": "reply 3"}))
    again = answers(ws, {ids[3]})[0]
    assert again["type"] == "ack" and again["duplicate"] is True and again["seq"] == acks[ids[3]]["seq"]
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}' AND type = 'message'") == "20"
    ws.close()


def test_agent_websocket_answers_bad_replies_with_errors_and_goes_on(cluster):
    visitor, agent = open_conversation(cluster)
    other = Visitor(cluster.lb_url)
    other.start()  # queued: nobody's
    ws = agent_socket(cluster, [f"Authorization: Bearer {agent.token}"])

    def reply(**fields):
        frame = {"type": "message", "conversation_id": visitor.conversation, "client_msg_id": str(uuid.uuid4()), "text": "hi"}
        frame.update(fields)
        ws.send(json.dumps({k: v for k, v in frame.items() if v is not None}))
        return answers(ws, {frame.get("client_msg_id") or ""})[0]

    ws.send("not json")
    assert answers(ws, {""})[0]["error"]["code"] == "invalid_request"
    assert reply(type="typing")["error"]["code"] == "invalid_request"
    assert reply(conversation_id="nope")["error"]["code"] == "invalid_request"
    assert reply(text="")["error"]["code"] == "invalid_request"
    assert reply(text="x" * 4001)["error"]["code"] == "invalid_request"
    assert reply(client_msg_id=None)["error"]["code"] == "invalid_request"
    assert reply(conversation_id=other.conversation)["error"]["code"] == "not_assigned"
    assert reply(conversation_id=str(uuid.uuid4()))["error"]["code"] == "not_found"
    ok = reply(text="still here")
    assert ok["type"] == "ack", ok
    visitor.poll_until(lambda seen: any(e.get("text") == "still here" for e in seen))
    assert [e["text"] for e in visitor.seen if e["type"] == "message"] == ["still here"]
    # A logout ends the socket's right to send, whatever gateway it went through.
    assert requests.delete(f"{agent.base}/v1/agent/session", headers=agent.headers, timeout=10).status_code == 200
    assert wait_until(lambda: reply(text="after logout")["type"] == "error", timeout=10, what="replies refused after logout")
    assert reply(text="after logout")["error"]["code"] == "unauthorized"
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}' AND type = 'message'") == "1"
    ws.close()


def test_an_agent_socket_without_events_carries_only_its_answers(cluster):
    visitor, agent = open_conversation(cluster)
    bearer = f"Authorization: Bearer {agent.token}"
    try:
        agent_socket(cluster, [bearer], "?events=some")
        assert False, "an unknown events value must refuse the upgrade"
    except websocket.WebSocketBadStatusException as refused:
        assert refused.status_code >= 400
    ws = agent_socket(cluster, [bearer], "?events=none")
    feed = agent_socket(cluster, [bearer])
    for n in range(3):
        assert visitor.send(f"question {n}").status_code == 201
        ws.send(json.dumps({"type": "message", "conversation_id": visitor.conversation, "client_msg_id": f"a{n}", "text": f"answer {n}"}))
        # The next frame is the answer: the visitor's message and the reply itself are events, which this socket does not carry.
        frame = json.loads(ws.recv())
        assert frame["type"] == "ack" and frame["client_msg_id"] == f"a{n}", frame
    # The feed socket of the same agent did carry them: six messages, in order.
    seen = []
    while len(seen) < 6:
        frame = json.loads(feed.recv())
        if frame["type"] == "event" and frame["event"]["type"] == "message":
            seen.append(frame["event"]["text"])
    assert seen == [t for n in range(3) for t in (f"question {n}", f"answer {n}")]
    # Those events were all out before this reply: had the socket carried them, they would come first.
    ws.send(json.dumps({"type": "message", "conversation_id": visitor.conversation, "client_msg_id": "last", "text": "last"}))
    frame = json.loads(ws.recv())
    assert frame["type"] == "ack" and frame["client_msg_id"] == "last", frame
    ws.close()
    feed.close()


def test_a_cookie_authenticated_agent_socket_sends_only_from_the_console_origin(cluster):
    visitor, agent = open_conversation(cluster)
    host = cluster.agent_url().removeprefix("http://")
    cookie = f"Cookie: parley_agent_session={agent.token}"
    frame = {"type": "message", "conversation_id": visitor.conversation, "text": "from a page"}
    foreign = agent_socket(cluster, [cookie, "Origin: https://elsewhere.example"])
    foreign.send(json.dumps({**frame, "client_msg_id": "foreign"}))
    assert answers(foreign, {"foreign"})[0]["error"]["code"] == "forbidden"
    foreign.close()
    no_origin = agent_socket(cluster, [cookie])
    no_origin.send(json.dumps({**frame, "client_msg_id": "no-origin"}))
    assert answers(no_origin, {"no-origin"})[0]["error"]["code"] == "forbidden"
    no_origin.close()
    console = agent_socket(cluster, [cookie, f"Origin: http://{host}"])
    console.send(json.dumps({**frame, "client_msg_id": "console"}))
    assert answers(console, {"console"})[0]["type"] == "ack"
    console.close()
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}' AND type = 'message'") == "1"


def test_kill_the_pinned_node_and_the_visitor_goes_on_elsewhere(cluster):
    visitor, agent = open_conversation(cluster)
    for n in range(3):
        assert visitor.send(f"before {n}").status_code == 201
    visitor.poll_until(lambda seen: len(seen) >= 4)
    pinned = visitor.node
    node = cluster.visitor_gateways[pinned]
    node.kill()
    try:
        # Replies committed while the pinned node is dead are not lost.
        for n in range(3):
            assert agent.reply(visitor.conversation, f"while down {n}").status_code == 201
        for n in range(3):
            visitor.send_until_acked(f"after {n}")
        visitor.poll_until(lambda seen: len(seen) >= 10, timeout=30)
        assert visitor.node != pinned
        assert_exactly_once_in_order(visitor.seen)
        texts = [e["text"] for e in visitor.seen if e["type"] == "message"]
        assert texts == ["before 0", "before 1", "before 2", "while down 0", "while down 1", "while down 2",
                         "after 0", "after 1", "after 2"]
        assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}'") == "10"
        new_node = visitor.node
        assert cluster.psql(f"SELECT pinned_node FROM conversations WHERE id = '{visitor.conversation}'") == new_node
        # Replies now reach the new node.
        assert agent.reply(visitor.conversation, "found you").status_code == 201
        visitor.poll_until(lambda seen: len(seen) >= 11)
        assert visitor.seen[-1]["text"] == "found you"
        assert_exactly_once_in_order(visitor.seen)
    finally:
        cluster.restart(node)


def test_drain_moves_visitors_and_undrain_restores(cluster):
    visitor, agent = open_conversation(cluster)
    pinned = visitor.node
    node = cluster.visitor_gateways[pinned]
    cluster.ctl("nodes", "drain", pinned)
    try:
        wait_until(lambda: node.health().status_code == 503, what="drained node failing its health check")
        listed = json.loads(cluster.ctl("nodes", "list", "--json").stdout)["nodes"]
        assert next(n for n in listed if n["id"] == pinned)["state"] == "draining"
        agent.reply(visitor.conversation, "while draining")
        # HAProxy moves the visitor after two failed checks; the other node resumes the conversation.
        visitor.poll_until(lambda seen: any(e["text"] == "while draining" for e in seen) and visitor.node != pinned, timeout=30)
        assert_exactly_once_in_order(visitor.seen)
        fresh = Visitor(cluster.lb_url)
        assert fresh.start()["node_id"] != pinned
    finally:
        cluster.ctl("nodes", "undrain", pinned)
    wait_until(lambda: node.health().status_code == 200, what="undrained node healthy again")


def test_bad_input_gets_clear_errors_and_stores_nothing(cluster):
    visitor, agent = open_conversation(cluster)
    base = f"{cluster.lb_url}/v1/conversations/{visitor.conversation}"
    cases = [
        ({"client_msg_id": "", "text": "x"}, 400),
        ({"client_msg_id": "a" * 65, "text": "x"}, 400),
        ({"client_msg_id": "ok", "text": ""}, 400),
        ({"client_msg_id": "ok", "text": "x" * 4001}, 400),
        ({"text": "no id"}, 400),
    ]
    for body, status in cases:
        response = visitor.session.post(f"{base}/messages", json=body, headers=visitor.headers, timeout=10)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    response = visitor.session.post(f"{base}/messages", data="{not json", headers={**visitor.headers, "Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    response = visitor.session.post(f"{base}/messages", data="x" * 100_000, headers=visitor.headers, timeout=10)
    assert response.status_code == 413 and "error" in response.json()
    # Another conversation's token, no token, a forged token.
    other = Visitor(cluster.lb_url)
    other.start()
    for headers in ({"Authorization": f"Bearer {other.token}"}, {}, {"Authorization": "Bearer pv1.k1.x.1.AAAA"}):
        response = requests.post(f"{base}/messages", json={"client_msg_id": "evil", "text": "hi"}, headers=headers, timeout=10)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        response = requests.get(f"{base}/events", headers=headers, timeout=10)
        assert response.status_code == 401
    for query, code in (({"after": "-1"}, 400), ({"after": "abc"}, 400), ({"wait": "61"}, 400), ({"after": "999"}, 400)):
        response = visitor.session.get(f"{base}/events", params=query, headers=visitor.headers, timeout=10)
        assert response.status_code == code, (query, response.text)
    response = requests.get(f"{cluster.lb_url}/v1/conversations/not-a-uuid/events", headers=visitor.headers, timeout=10)
    assert response.status_code == 404
    sql = "'; DROP TABLE events; --"
    assert visitor.send(sql, client_msg_id="sql'\"--").status_code == 201
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}'") == "2"
    assert cluster.psql(f"SELECT count(*) FROM events WHERE client_msg_id = 'evil'") == "0"
    # Agent API errors.
    assert requests.get(f"{cluster.agent_url()}/v1/agent/conversations", timeout=10).status_code == 401
    bad = requests.post(f"{cluster.agent_url()}/v1/agent/session", json={"email": "nobody@x.test", "password": "wrong"}, timeout=10)
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    assert agent.get("/v1/agent/conversations", status="bogus").status_code == 400
    assert agent.claim(str(uuid.uuid4())).status_code == 404
    email, password = cluster.new_agent("Other")
    other_agent = AgentClient(cluster.agent_url(), email, password)
    forbidden = other_agent.reply(visitor.conversation, "not mine")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "not_assigned"
    # A cookie session without the CSRF header cannot change state.
    login = requests.post(f"{cluster.agent_url()}/v1/agent/session", json={"email": email, "password": password}, timeout=10)
    jar = login.cookies
    assert requests.post(f"{cluster.agent_url()}/v1/agent/conversations/{visitor.conversation}/close", cookies=jar, timeout=10).status_code == 403


def test_logging_out_or_being_disabled_ends_a_session(cluster):
    email, password = cluster.new_agent("Leaving")
    agent = AgentClient(cluster.agent_url("ag-1"), email, password)
    elsewhere = AgentClient(cluster.agent_url("ag-2"), email, password)
    assert agent.get("/v1/agent/me").status_code == 200 and elsewhere.get("/v1/agent/me").status_code == 200
    # Logging out ends the session at once, on the gateway that took the logout.
    assert requests.delete(f"{agent.base}/v1/agent/session", headers=agent.headers, timeout=10).status_code == 200
    assert agent.get("/v1/agent/me").status_code == 401
    # Disabling the agent ends every other session too: gateways remember a session for at most
    # a second before asking the database again.
    cluster.ctl("agents", "disable", email)
    wait_until(lambda: elsewhere.get("/v1/agent/me").status_code == 401, timeout=10, what="the disabled agent's session refused")
    assert elsewhere.reply(str(uuid.uuid4()), "still here?").status_code == 401


def test_close_ends_the_conversation_for_both_sides(cluster):
    visitor, agent = open_conversation(cluster)
    closed = agent.post(f"/v1/agent/conversations/{visitor.conversation}/close")
    assert closed.status_code == 200
    visitor.poll_until(lambda seen: any(e["type"] == "closed" for e in seen))
    late = visitor.send("anyone?")
    assert late.status_code == 409 and late.json()["error"]["code"] == "conversation_closed"


def test_parleyctl_registry_commands(cluster):
    listed = cluster.ctl("nodes", "list").stdout
    for name in ("relay-1", "vg-1", "vg-2", "ag-1", "ag-2"):
        assert name in listed
    shown = json.loads(cluster.ctl("nodes", "show", "vg-1", "--json").stdout)
    assert shown["role"] == "visitor_gateway" and shown["health"] == "up"
    missing = cluster.ctl("nodes", "drain", "no-such-node", check=False)
    assert missing.returncode != 0 and "no node" in missing.stderr
    bad = cluster.ctl("agents", "add", "--email", "not-an-email", "--name", "x", "--password", "longenough", check=False)
    assert bad.returncode != 0
    config = cluster.ctl("lb", "haproxy").stdout
    assert "cookie parley_node" in config and "server vg-1" in config and "server vg-2" in config
    agents = json.loads(cluster.ctl("agents", "list", "--json").stdout)["agents"]
    assert agents and all("password" not in json.dumps(a) for a in agents)
    no_db = cluster.ctl("nodes", "list", "--database-url", "postgres://nobody@127.0.0.1:1/none", check=False)
    assert no_db.returncode != 0 and "database" in no_db.stderr


def test_removed_node_stops_taking_visitors(cluster):
    extra = cluster.add_visitor_gateway("vg-extra")
    wait_until(lambda: extra.health().status_code == 200, what="vg-extra up")
    cluster.ctl("nodes", "remove", "vg-extra")
    wait_until(lambda: extra.health().status_code == 503, what="removed node failing its health check")
    extra.stop()


def test_sigterm_stops_a_gateway_cleanly(cluster):
    extra = cluster.add_visitor_gateway("vg-term")
    wait_until(lambda: extra.health().status_code == 200, what="vg-term up")
    extra.signal(signal.SIGTERM)
    assert extra.process.wait(timeout=20) == 0


def test_sigterm_stops_gateway_and_relay_holding_streams(cluster):
    # Once a message has gone each way, the gateway holds an append stream to the relay and
    # the relay a delivery stream to the gateway. Neither may keep the other's graceful
    # shutdown waiting (that would last the 30 s shutdown limit and end in cancellation).
    extra = cluster.add_visitor_gateway("vg-streams")
    wait_until(lambda: extra.health().status_code == 200, what="vg-streams up")
    visitor = Visitor(f"http://127.0.0.1:{extra.http}")
    visitor.start()
    email, password = cluster.new_agent("Ann")
    agent = AgentClient(cluster.agent_url(), email, password)
    assert agent.claim(visitor.conversation).status_code == 200
    visitor.send_until_acked("over the append stream")
    assert agent.reply(visitor.conversation, "over the delivery stream").status_code == 201
    visitor.poll_until(lambda seen: any(e.get("text") == "over the delivery stream" for e in seen))
    extra.signal(signal.SIGTERM)
    assert extra.process.wait(timeout=20) == 0

    other, agent = open_conversation(cluster)
    other.send_until_acked("before the relay stops")
    assert agent.reply(other.conversation, "reply before").status_code == 201
    other.poll_until(lambda seen: any(e.get("text") == "reply before" for e in seen))
    cluster.relay.signal(signal.SIGTERM)
    try:
        assert cluster.relay.process.wait(timeout=20) == 0
    finally:
        cluster.relay.start()
    wait_until(lambda: cluster.relay.health().status_code == 200, what="relay back")
    # The gateways open new streams: both ways work again.
    other.send_until_acked("after the relay restarted")
    wait_until(lambda: agent.reply(other.conversation, "reply after", client_msg_id="reply-after").status_code in (200, 201),
               timeout=20, interval=0.2, what="agent reply accepted")
    other.poll_until(lambda seen: any(e.get("text") == "reply after" for e in seen))
    assert_exactly_once_in_order(other.seen)


def test_typing_is_ephemeral_both_ways(cluster):
    visitor, agent = open_conversation(cluster, agent_gateway="ag-2")
    agent_ws = websocket.create_connection(cluster.agent_url("ag-2").replace("http://", "ws://") + "/v1/agent/ws",
                                           header=[f"Authorization: Bearer {agent.token}"], timeout=15)
    ws_url = cluster.lb_url.replace("http://", "ws://") + f"/v1/conversations/{visitor.conversation}/ws?after=1"
    cookie = "; ".join(f"{c.name}={c.value}" for c in visitor.session.cookies)
    visitor_ws = websocket.create_connection(ws_url, header=[f"Authorization: Bearer {visitor.token}", f"Cookie: {cookie}"], timeout=15)

    def until(ws, predicate, send=None):
        # Typing signals are throttled and not replayed: resend until one is seen.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if send:
                send()
            ws.settimeout(1.5)
            try:
                frame = json.loads(ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if predicate(frame):
                return frame
        raise AssertionError("no typing frame")

    typing = until(visitor_ws, lambda f: f.get("type") == "typing",
                   send=lambda: agent.post(f"/v1/agent/conversations/{visitor.conversation}/typing"))
    assert typing["seq"] == 0 and typing["sender"] == "agent" and typing["agent"]["name"] == "Ann"
    seen = until(agent_ws, lambda f: f.get("type") == "typing" and f["conversation_id"] == visitor.conversation,
                 send=lambda: visitor_ws.send(json.dumps({"type": "typing"})))
    assert seen["sender"] == "visitor"
    # Nothing was stored: the conversation still has only the agent_joined event.
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}'") == "1"
    # Another agent cannot signal typing into a conversation that is not theirs.
    email, password = cluster.new_agent("Other")
    other = AgentClient(cluster.agent_url(), email, password)
    assert other.post(f"/v1/agent/conversations/{visitor.conversation}/typing").status_code == 403
    visitor_ws.close()
    agent_ws.close()


def test_relay_killed_and_restarted_loses_nothing(cluster):
    visitor, agent = open_conversation(cluster)
    visitor.send_until_acked("before the crash")
    cluster.relay.kill()
    try:
        # While the relay is down, writes are refused with a clear, retryable error.
        refused = visitor.send("while the relay is down", client_msg_id="during-outage")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
        # Reads of what the gateway holds keep working.
        assert visitor.poll()["last_seq"] >= 1
    finally:
        cluster.relay.start()
    wait_until(lambda: cluster.relay.health().status_code == 200, what="relay back")
    # The client retries with the same id until the relay takes it; the agent replies.
    visitor.send_until_acked("while the relay is down", client_msg_id="during-outage")
    reply = wait_until(lambda: (lambda r: r if r.status_code == 201 else None)(agent.reply(visitor.conversation, "back again")),
                       timeout=20, interval=0.2, what="agent reply accepted")
    assert reply.json()["seq"] == 4
    visitor.poll_until(lambda seen: len(seen) >= 4)
    assert_exactly_once_in_order(visitor.seen)
    assert [e["text"] for e in visitor.seen if e["type"] == "message"] == ["before the crash", "while the relay is down", "back again"]
