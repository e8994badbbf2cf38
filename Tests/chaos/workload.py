"""Simulated visitors and agents for the fault-injection suite.

Every send carries a unique client_msg_id and is retried with the same id until acknowledged
or the run's deadline passes, as a real client does; every operation is recorded in a
history (invoked, then ok with its seq, or fail, or unknown). Every event a client receives is
recorded raw, in arrival order, so the checker sees duplicates and gaps the server produced.
"""

import json
import random
import threading
import time
import uuid

import requests
import websocket


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = []

    def invoke(self, **fields):
        op = dict(fields, status="invoked", invoked_at=time.monotonic())
        with self.lock:
            self.ops.append(op)
        return op

    def complete(self, op, status, **fields):
        with self.lock:
            op.update(fields, status=status, completed_at=time.monotonic())


def send_with_retries(session, url, headers, body, op, history, deadline, abandon_first=False):
    """POSTs until a 200/201, retrying transport errors and 5xx with the same client_msg_id.
    With `abandon_first`, the first attempt gives up before any answer can arrive, like a client
    killed after sending and before the acknowledgement."""
    outcome = "fail"
    first = abandon_first
    while time.monotonic() < deadline:
        try:
            response = session.post(url, json=body, headers=headers, timeout=0.0005 if first else 5)
        except requests.RequestException:
            outcome = "unknown"  # may or may not have been stored
            time.sleep(0.01 if first else 0.2)
            first = False
            continue
        if response.status_code in (200, 201):
            history.complete(op, "ok", seq=response.json()["seq"])
            return True
        if response.status_code >= 500 or response.status_code == 429:
            outcome = "unknown" if outcome == "unknown" else "fail"
            time.sleep(0.2)
            continue
        history.complete(op, "fail", http=response.status_code, error=response.text[:200])
        return False
    history.complete(op, outcome)
    return False


class VisitorClient:
    """A visitor through the load balancer, receiving over long-poll, SSE or WebSocket."""

    def __init__(self, lb_url, transport, history, rng):
        self.lb, self.transport, self.history, self.rng = lb_url, transport, history, rng
        self.session = requests.Session()
        self.received = []  # raw (seq, event) in arrival order, persisted events only
        self.cursor = 0
        self.conversation = None
        self.token = None
        self.abandon_sends = threading.Event()

    def start(self):
        response = self.session.post(f"{self.lb}/v1/conversations", json={"name": "chaos"}, timeout=10)
        response.raise_for_status()
        body = response.json()
        self.conversation, self.token = body["conversation_id"], body["visitor_token"]

    @property
    def headers(self):
        return {"Authorization": f"Bearer {self.token}"}

    def record(self, event):
        if event.get("seq", 0) > 0:
            event["_at"] = time.time()  # arrival, for the convergence time
            self.received.append(event)
            self.cursor = max(self.cursor, event["seq"])

    def receive(self, stop):
        """Runs until `stop`, reconnecting from the cursor after every failure."""
        base = f"{self.lb}/v1/conversations/{self.conversation}"
        while not stop.is_set():
            try:
                if self.transport == "longpoll":
                    r = self.session.get(f"{base}/events", params={"after": self.cursor, "wait": 2}, headers=self.headers, timeout=10)
                    if r.status_code != 200:
                        raise IOError(r.status_code)
                    for event in r.json()["events"]:
                        self.record(event)
                elif self.transport == "sse":
                    with self.session.get(f"{base}/stream", headers={**self.headers, "Last-Event-ID": str(self.cursor)},
                                          stream=True, timeout=(5, 20)) as r:
                        if r.status_code != 200:
                            raise IOError(r.status_code)
                        for line in r.iter_lines(decode_unicode=True):
                            if stop.is_set():
                                return
                            if line.startswith("event: move"):
                                break
                            if line.startswith("data: "):
                                self.record(json.loads(line[6:]))
                else:
                    cookie = "; ".join(f"{c.name}={c.value}" for c in self.session.cookies)
                    ws = websocket.create_connection(
                        f"{self.lb.replace('http://', 'ws://')}/v1/conversations/{self.conversation}/ws?after={self.cursor}",
                        header=[f"Authorization: Bearer {self.token}", f"Cookie: {cookie}"], timeout=5)
                    try:
                        while not stop.is_set():
                            try:
                                frame = json.loads(ws.recv())
                            except websocket.WebSocketTimeoutException:
                                continue
                            if frame.get("type") == "move":
                                break
                            if "seq" in frame:
                                self.record(frame)
                    finally:
                        ws.close()
            except Exception:
                time.sleep(0.1 + self.rng.random() * 0.3)  # jittered reconnect

    def talk(self, count, pace, deadline, stop):
        for n in range(count):
            if stop.is_set() or time.monotonic() > deadline:
                return
            key = f"v-{uuid.uuid4()}"
            body = {"client_msg_id": key, "text": f"visitor {n}"}
            op = self.history.invoke(conversation=self.conversation, sender="visitor", client_msg_id=key, index=n)
            send_with_retries(self.session, f"{self.lb}/v1/conversations/{self.conversation}/messages",
                              self.headers, body, op, self.history, deadline, abandon_first=self.abandon_sends.is_set())
            time.sleep(pace * (0.5 + self.rng.random()))


class AgentClient:
    """An agent on any agent gateway, failing over between them; reads history by cursor."""

    def __init__(self, agent_urls, email, password, history, rng):
        self.urls, self.history, self.rng = list(agent_urls), history, rng
        self.session = requests.Session()
        self.email, self.password = email, password
        self.token = None
        self.received = []
        self.cursor = 0
        self.conversation = None
        self.index = rng.randrange(len(self.urls))

    @property
    def url(self):
        return self.urls[self.index % len(self.urls)]

    def failover(self):
        self.index += 1

    def login(self, deadline):
        while time.monotonic() < deadline:
            try:
                r = self.session.post(f"{self.url}/v1/agent/session", json={"email": self.email, "password": self.password}, timeout=5)
                if r.status_code == 200:
                    self.token = r.json()["token"]
                    return
            except requests.RequestException:
                pass
            self.failover()
            time.sleep(0.2)
        raise AssertionError("agent could not log in")

    @property
    def headers(self):
        return {"Authorization": f"Bearer {self.token}"}

    def claim(self, conversation, deadline):
        self.conversation = conversation
        while time.monotonic() < deadline:
            try:
                r = self.session.post(f"{self.url}/v1/agent/conversations/{conversation}/claim", headers=self.headers, timeout=5)
                if r.status_code in (200, 409):
                    return
            except requests.RequestException:
                pass
            self.failover()
            time.sleep(0.2)
        raise AssertionError("agent could not claim")

    def receive(self, stop):
        while not stop.is_set():
            try:
                r = self.session.get(f"{self.url}/v1/agent/conversations/{self.conversation}/events",
                                     params={"after": self.cursor, "limit": 500}, headers=self.headers, timeout=5)
                if r.status_code != 200:
                    raise IOError(r.status_code)
                for event in r.json()["events"]:
                    event["_at"] = time.time()
                    self.received.append(event)
                    self.cursor = max(self.cursor, event["seq"])
                time.sleep(0.1)
            except Exception:
                self.failover()
                time.sleep(0.2)

    def talk(self, count, pace, deadline, stop):
        for n in range(count):
            if stop.is_set() or time.monotonic() > deadline:
                return
            key = f"a-{uuid.uuid4()}"
            op = self.history.invoke(conversation=self.conversation, sender="agent", client_msg_id=key, index=n)
            body = {"client_msg_id": key, "text": f"agent {n}"}
            while True:
                url = f"{self.url}/v1/agent/conversations/{self.conversation}/messages"
                if send_with_retries(self.session, url, self.headers, body, op, self.history,
                                     min(deadline, time.monotonic() + 2)) or time.monotonic() > deadline:
                    break
                if "http" in op:  # refused for good (4xx): retrying elsewhere would not help
                    break
                self.failover()  # this gateway may be down: the same id on another one
                op["status"] = "invoked"
            time.sleep(pace * (0.5 + self.rng.random()))
