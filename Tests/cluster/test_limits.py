"""Per-client limits and the Origin allowlist of the visitor API: each refusal is a clear 4xx
with a JSON error, and nothing refused is stored."""

import concurrent.futures
import socket
import uuid

import requests
import websocket

from harness import Visitor, wait_until


def test_a_message_flood_gets_429_with_retry_after_and_loses_nothing(cluster):
    visitor = Visitor(cluster.lb_url)
    visitor.start()
    url = f"{cluster.lb_url}/v1/conversations/{visitor.conversation}/messages"
    cookies = visitor.session.cookies.get_dict()

    def send(n):
        key = str(uuid.uuid4())
        # With the visitor's cookies, as a browser sends them: the load balancer keeps it on its node.
        return key, requests.post(url, json={"client_msg_id": key, "text": f"flood {n}"}, headers=visitor.headers,
                                  cookies=cookies, timeout=10)

    # The default allows bursts of 20 a conversation and 5 a second after that; 60 sends from
    # 10 threads at once exceed it on any machine.
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(send, range(60)))
    acked, refused = [], []
    for key, response in results:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited"
            assert int(response.headers["Retry-After"]) >= 1
            refused.append(key)
        else:
            assert response.status_code == 201, response.text
            acked.append(key)
    assert refused and len(acked) >= 20
    # Refused sends were not stored; acknowledged ones were, once each.
    stored = cluster.psql(f"SELECT client_msg_id FROM events WHERE conversation_id = '{visitor.conversation}' AND sender = 'visitor'").split()
    assert sorted(stored) == sorted(acked)
    # After the advertised wait, the same id goes through.
    wait_until(lambda: visitor.send("again", refused[0]).status_code == 201, timeout=10, interval=0.3, what="send after Retry-After")


def test_new_conversations_are_limited_per_client_address(cluster):
    gateway = cluster.add_visitor_gateway("vg-limited", extra_args=["--rate-starts-burst", "3", "--rate-starts-per-second", "0.1"])
    wait_until(lambda: gateway.health().status_code == 200, what="vg-limited up")
    url = f"http://127.0.0.1:{gateway.http}/v1/conversations"
    try:
        # Straight to the gateway, which trusts X-Forwarded-For only from 127.0.0.1 (the load
        # balancer here): two clients behind it are limited separately.
        codes_a = [requests.post(url, json={}, headers={"X-Forwarded-For": "198.51.100.7"}, timeout=10).status_code for _ in range(5)]
        codes_b = [requests.post(url, json={}, headers={"X-Forwarded-For": "198.51.100.8"}, timeout=10).status_code for _ in range(3)]
        assert codes_a == [201, 201, 201, 429, 429]
        assert codes_b == [201, 201, 201]
    finally:
        gateway.stop()


def test_cross_site_requests_are_refused(cluster):
    visitor = Visitor(cluster.lb_url)
    visitor.start()
    host = cluster.lb_url.split("://")[1]
    evil = {"Origin": "https://evil.example"}
    base = f"{cluster.lb_url}/v1/conversations/{visitor.conversation}"
    # A page on another site cannot read the stream or post with the visitor's cookie ...
    for response in (
        visitor.session.get(f"{base}/events", params={"wait": 0}, headers=evil, timeout=10),
        visitor.session.post(f"{base}/messages", json={"client_msg_id": "x1", "text": "hi"}, headers=evil, timeout=10),
        requests.post(f"{cluster.lb_url}/v1/conversations", json={}, headers=evil, timeout=10),
    ):
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden", response.text
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{visitor.conversation}' AND client_msg_id = 'x1'") == "0"
    # ... nor open its WebSocket (cross-site WebSocket hijacking).
    cookie = "; ".join(f"{c.name}={c.value}" for c in visitor.session.cookies)
    try:
        websocket.create_connection(f"ws://{host}/v1/conversations/{visitor.conversation}/ws", header=[f"Cookie: {cookie}"],
                                    origin="https://evil.example", timeout=5).close()
        raise AssertionError("a cross-site WebSocket was accepted")
    except websocket.WebSocketBadStatusException as error:
        # The upgrade is refused before the handshake (the WebSocket layer answers 400 to any
        # refused upgrade); the same request from the same origin is accepted below.
        assert error.status_code in (400, 403)
    # The gateway's own page (same origin) and non-browser clients (no Origin) are served.
    same = visitor.session.get(f"{base}/events", params={"wait": 0}, headers={"Origin": f"http://{host}"}, timeout=10)
    assert same.status_code == 200
    ws = websocket.create_connection(f"ws://{host}/v1/conversations/{visitor.conversation}/ws", header=[f"Cookie: {cookie}"],
                                     origin=f"http://{host}", timeout=5)
    ws.close()


def test_identity_verification_is_checked_on_every_request(cluster):
    import hashlib
    import hmac
    secret = "a-shared-secret-of-at-least-32-bytes!!"
    gateway = cluster.add_visitor_gateway("vg-identity", extra_args=["--identity-secret", secret])
    wait_until(lambda: gateway.health().status_code == 200, what="vg-identity up")
    base = f"http://127.0.0.1:{gateway.http}/v1/conversations"
    sign = lambda user: hmac.new(secret.encode(), user.encode(), hashlib.sha256).hexdigest()
    try:
        # Starting needs a user id with its hash, made by the customer's backend.
        refused = [requests.post(base, json=body, timeout=10) for body in (
            {}, {"user_id": "alice"}, {"user_id": "alice", "user_hash": sign("mallory")}, {"user_id": "alice", "user_hash": "zz" * 32})]
        assert [r.status_code for r in refused] == [401, 401, 401, 401], [r.text for r in refused]
        started = requests.post(base, json={"user_id": "alice", "user_hash": sign("alice"), "name": "Alice"}, timeout=10)
        assert started.status_code == 201, started.text
        conversation, token = started.json()["conversation_id"], started.json()["visitor_token"]
        url = f"{base}/{conversation}/messages"
        auth = {"Authorization": f"Bearer {token}"}
        as_alice = {**auth, "X-Parley-User-Id": "alice", "X-Parley-User-Hash": sign("alice")}
        # Every message must carry the identity again: without it, with another user's valid
        # pair, or with a forged hash, the token alone is not enough.
        for headers in (auth, {**auth, "X-Parley-User-Id": "bob", "X-Parley-User-Hash": sign("bob")},
                        {**auth, "X-Parley-User-Id": "alice", "X-Parley-User-Hash": sign("bob")}):
            response = requests.post(url, json={"client_msg_id": "m1", "text": "hi"}, headers=headers, timeout=10)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized", response.text
        assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{conversation}'") == "0"
        assert requests.post(url, json={"client_msg_id": "m1", "text": "hi"}, headers=as_alice, timeout=10).status_code == 201
        # Reads too; the WebSocket takes the pair in its query.
        assert requests.get(f"{base}/{conversation}/events", params={"wait": 0}, headers=auth, timeout=10).status_code == 401
        assert requests.get(f"{base}/{conversation}/events", params={"wait": 0}, headers=as_alice, timeout=10).status_code == 200
        socket = websocket.create_connection(
            f"ws://127.0.0.1:{gateway.http}/v1/conversations/{conversation}/ws?after=0&user_id=alice&user_hash={sign('alice')}",
            header=[f"Authorization: Bearer {token}"], origin=f"http://127.0.0.1:{gateway.http}", timeout=5)
        socket.close()
        # Agents see the verified user id.
        assert cluster.psql(f"SELECT visitor_user_id FROM conversations WHERE id = '{conversation}'") == "alice"
    finally:
        gateway.stop()
    # Where identity verification is not configured, a user_id is refused rather than trusted.
    response = requests.post(f"{cluster.lb_url}/v1/conversations", json={"user_id": "alice", "user_hash": sign("alice")}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_one_address_holds_a_bounded_number_of_connections(cluster):
    gateway = cluster.add_visitor_gateway("vg-capped", extra_args=["--connections-per-address", "2"])
    wait_until(lambda: gateway.health().status_code == 200, what="vg-capped up")
    base = f"http://127.0.0.1:{gateway.http}/v1/conversations"
    try:
        started = requests.post(base, json={}, timeout=10).json()
        url = f"{base}/{started['conversation_id']}/events"
        auth = {"Authorization": f"Bearer {started['visitor_token']}"}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(requests.get, url, params={"wait": 20}, headers=auth, timeout=30) for _ in range(2)]

            def third_refused():
                finished = [f.result().text for f in waiting if f.done()]
                assert not finished, f"a long-poll returned early: {finished}"
                response = requests.get(url, params={"wait": 0}, headers=auth, timeout=10)
                return [response] if response.status_code == 429 else None  # a 4xx Response is falsy

            # Once both long-polls are held, a third connection from the address is refused.
            [third] = wait_until(third_refused, what="a third connection refused")
            assert third.json()["error"]["code"] == "rate_limited", third.text
            assert int(third.headers["Retry-After"]) >= 1
            # Another client behind the proxy is not affected.
            other = requests.get(url, params={"wait": 0}, headers={**auth, "X-Forwarded-For": "198.51.100.9"}, timeout=10)
            assert other.status_code == 200
            # A message wakes the held polls; their slots are returned.
            assert requests.post(f"{base}/{started['conversation_id']}/messages", json={"client_msg_id": "c1", "text": "hi"},
                                 headers=auth, timeout=10).status_code == 201
            assert all(f.result().status_code == 200 for f in waiting)
        wait_until(lambda: requests.get(url, params={"wait": 0}, headers=auth, timeout=10).status_code == 200, what="slot returned")
    finally:
        gateway.stop()


def test_a_connection_that_sends_nothing_is_closed_at_the_idle_timeout(cluster):
    gateway = cluster.add_visitor_gateway("vg-quiet", extra_args=["--http-idle-timeout", "1"])
    wait_until(lambda: gateway.health().status_code == 200, what="vg-quiet up")
    try:
        with socket.create_connection(("127.0.0.1", gateway.http)) as silent, \
                socket.create_connection(("127.0.0.1", gateway.http)) as answered:
            answered.sendall(b"GET /v1/nothing HTTP/1.1\r\nHost: vg\r\n\r\n")
            for connection in (silent, answered):
                connection.settimeout(15)
            # Closed before its first request as after its last: neither holds a socket for ever.
            assert silent.recv(1) == b""
            data = b""
            while chunk := answered.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 404"), data
    finally:
        gateway.stop()


def test_a_gateway_that_cannot_start_exits_instead_of_hanging(cluster):
    # Its ops address is taken: that service fails, the others are cancelled, and the process
    # must end (a cancelled service loop that spun on its sleep used to keep it alive, on a core).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        gateway = cluster.add_visitor_gateway("vg-blocked", start=False)
        gateway.args[gateway.args.index("--ops-listen") + 1] = f"127.0.0.1:{taken.getsockname()[1]}"
        gateway.start()
        try:
            wait_until(lambda: gateway.process.poll() is not None, timeout=40, what="the gateway to exit")
            assert gateway.process.returncode != 0
        finally:
            gateway.stop()
