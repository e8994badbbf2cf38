"""Agent roles on every endpoint, transfers, transcript export and the append-only audit log."""

import subprocess

import requests

from harness import AgentClient, Visitor, wait_until


def login(cluster, role, name=None):
    email, password = cluster.new_agent(name or role.title(), role=role)
    return AgentClient(cluster.agent_url(), email, password)


def test_each_endpoint_needs_its_role(cluster):
    agent, supervisor, admin = login(cluster, "agent"), login(cluster, "supervisor"), login(cluster, "admin")
    visitor = Visitor(cluster.lb_url)
    visitor.start(name="Role Test")
    conversation = visitor.conversation
    assert agent.claim(conversation).status_code == 200
    supervisor_only = [
        ("post", f"/v1/agent/conversations/{conversation}/transfer", {"agent_id": supervisor.agent["id"]}),
        ("get", f"/v1/agent/conversations/{conversation}/export", None),
        ("get", "/v1/agent/agents", None),
    ]
    for method, path, body in supervisor_only + [("get", "/v1/agent/audit", None)]:
        response = agent.post(path, body) if method == "post" else agent.get(path)
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden", (path, response.text)
    assert supervisor.get("/v1/agent/audit").status_code == 403
    assert supervisor.get("/v1/agent/agents").status_code == 200
    assert admin.get("/v1/agent/audit").status_code == 200
    # Nothing the refused requests asked for happened.
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{conversation}' AND type = 'transferred'") == "0"
    assert cluster.psql("SELECT count(*) FROM audit_log WHERE action = 'export'") == "0"


def test_a_supervisor_transfers_and_closes_anyones_conversation(cluster):
    first, second, supervisor = login(cluster, "agent", "First"), login(cluster, "agent", "Second"), login(cluster, "supervisor", "Sue")
    visitor = Visitor(cluster.lb_url)
    visitor.start(name="Transfer Test")
    conversation = visitor.conversation
    assert first.claim(conversation).status_code == 200
    # Another agent can neither close it nor move it.
    assert second.post(f"/v1/agent/conversations/{conversation}/close").json()["error"]["code"] == "not_assigned"
    moved = supervisor.post(f"/v1/agent/conversations/{conversation}/transfer", {"agent_id": second.agent["id"]})
    assert moved.status_code == 200, moved.text
    # The visitor sees the hand-over in order; the new agent may reply, the old one no longer.
    visitor.poll_until(lambda seen: any(e["type"] == "transferred" for e in seen))
    event = next(e for e in visitor.seen if e["type"] == "transferred")
    assert event["seq"] == moved.json()["seq"] and event["agent"]["id"] == second.agent["id"]
    assert "Sue transferred the conversation to Second" == event["text"]
    assert second.reply(conversation, "I can take it from here").status_code == 201
    assert first.reply(conversation, "still me?").json()["error"]["code"] == "not_assigned"
    summary = supervisor.get(f"/v1/agent/conversations/{conversation}").json()["conversation"]
    assert summary["assigned_agent"]["id"] == second.agent["id"]
    # Bad transfers are refused: unknown agent, same agent, malformed body.
    assert supervisor.post(f"/v1/agent/conversations/{conversation}/transfer",
                           {"agent_id": "00000000-0000-0000-0000-000000000000"}).status_code == 400
    assert supervisor.post(f"/v1/agent/conversations/{conversation}/transfer", {"agent_id": second.agent["id"]}).status_code == 400
    assert supervisor.post(f"/v1/agent/conversations/{conversation}/transfer", {"agent_id": "nope"}).status_code == 400
    # A supervisor may close a conversation assigned to someone else.
    assert supervisor.post(f"/v1/agent/conversations/{conversation}/close").status_code == 200
    visitor.poll_until(lambda seen: any(e["type"] == "closed" for e in seen))
    assert supervisor.post(f"/v1/agent/conversations/{conversation}/transfer",
                           {"agent_id": first.agent["id"]}).json()["error"]["code"] == "conversation_closed"


def test_export_gives_the_whole_transcript_and_is_audited(cluster):
    agent, supervisor, admin = login(cluster, "agent"), login(cluster, "supervisor"), login(cluster, "admin")
    visitor = Visitor(cluster.lb_url)
    visitor.start(name="Export Test")
    for n in range(3):
        assert visitor.send(f"question {n} <b>&'\"; DROP TABLE events;--").status_code == 201
    assert agent.claim(visitor.conversation).status_code == 200
    assert agent.reply(visitor.conversation, "answer").status_code == 201
    response = supervisor.get(f"/v1/agent/conversations/{visitor.conversation}/export")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    transcript = response.json()
    assert [e["seq"] for e in transcript["events"]] == [1, 2, 3, 4, 5]
    assert transcript["events"][0]["text"] == "question 0 <b>&'\"; DROP TABLE events;--"
    entries = admin.get("/v1/agent/audit", action="export").json()["entries"]
    assert entries[0]["subject"] == visitor.conversation and entries[0]["actor"] == f"agent:{supervisor.agent['id']}"
    assert admin.get(f"/v1/agent/conversations/00000000-0000-0000-0000-000000000000/export").status_code == 404


def test_the_audit_log_records_who_did_what_and_cannot_be_rewritten(cluster):
    agent, admin = login(cluster, "agent"), login(cluster, "admin")
    failed = requests.post(f"{cluster.agent_url()}/v1/agent/session", json={"email": "nobody@agents.test", "password": "wrong-password"},
                           timeout=10)
    assert failed.status_code == 401
    visitor = Visitor(cluster.lb_url)
    visitor.start()
    assert agent.claim(visitor.conversation).status_code == 200
    assert agent.post(f"/v1/agent/conversations/{visitor.conversation}/close").status_code == 200
    cluster.ctl("nodes", "drain", "vg-2")
    cluster.ctl("nodes", "undrain", "vg-2")

    def actions():
        return [(e["action"], e["actor"], e["subject"]) for e in admin.get("/v1/agent/audit", limit=500).json()["entries"]]

    seen = actions()
    me = f"agent:{agent.agent['id']}"
    for expected in [("login", me, ""), ("claim", me, visitor.conversation), ("close", me, visitor.conversation),
                     ("login_failed", "email:nobody@agents.test", "")]:
        assert expected in seen, expected
    assert any(a == "node_drain" and s == "vg-2" for a, _, s in seen)
    assert any(a == "node_undrain" and s == "vg-2" for a, _, s in seen)
    assert any(a == "agent_add" for a, _, _ in seen)
    # parleyctl shows the same log.
    listed = cluster.ctl("audit", "list", "--action", "claim", "--json").stdout
    assert visitor.conversation in listed
    # Paging and bad parameters.
    page = admin.get("/v1/agent/audit", limit=2).json()["entries"]
    older = admin.get("/v1/agent/audit", limit=2, before=page[-1]["id"]).json()["entries"]
    assert len(page) == 2 and all(e["id"] < page[-1]["id"] for e in older)
    for params in ({"limit": 0}, {"limit": "x"}, {"before": -1}):
        response = admin.get("/v1/agent/audit", **params)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    # Append-only: not even the database owner can change or delete an entry, nor truncate.
    for sql in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        result = subprocess.run(["psql", cluster.database_url, "-qtAc", sql], capture_output=True, text=True)
        assert result.returncode != 0 and "append-only" in result.stderr, (sql, result.stderr)
    assert set(seen) <= set(actions())
