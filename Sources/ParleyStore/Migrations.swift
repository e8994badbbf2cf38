import Logging
import PostgresNIO

/// The schema, as an ordered list of migrations applied once each.
public enum Migrations {
    /// Each entry is one version; never edit a shipped one, append a new one.
    public static let all: [(version: Int, name: String, sql: [String])] = [
        (
            1, "core schema",
            [
                """
                CREATE TABLE nodes (
                    id text PRIMARY KEY,
                    role text NOT NULL CHECK (role IN ('visitor_gateway', 'agent_gateway', 'relay')),
                    zone text NOT NULL,
                    public_address text NOT NULL DEFAULT '',
                    internal_address text NOT NULL DEFAULT '',
                    ops_address text NOT NULL DEFAULT '',
                    state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining')),
                    connections bigint NOT NULL DEFAULT 0,
                    started_at timestamptz NOT NULL DEFAULT now(),
                    last_seen timestamptz NOT NULL DEFAULT now()
                )
                """,
                """
                CREATE TABLE agents (
                    id uuid PRIMARY KEY,
                    email text NOT NULL,
                    name text NOT NULL,
                    password_hash text NOT NULL,
                    role text NOT NULL DEFAULT 'agent' CHECK (role IN ('agent', 'supervisor', 'admin')),
                    disabled boolean NOT NULL DEFAULT false,
                    created_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                "CREATE UNIQUE INDEX agents_email ON agents (lower(email))",
                """
                CREATE TABLE agent_sessions (
                    token_hash text PRIMARY KEY,
                    agent_id uuid NOT NULL REFERENCES agents (id),
                    created_at timestamptz NOT NULL DEFAULT now(),
                    expires_at timestamptz NOT NULL
                )
                """,
                """
                CREATE TABLE conversations (
                    id uuid PRIMARY KEY,
                    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'open', 'closed')),
                    visitor_name text NOT NULL DEFAULT '',
                    visitor_email text NOT NULL DEFAULT '',
                    topic text NOT NULL DEFAULT '',
                    pinned_node text,
                    assigned_agent uuid REFERENCES agents (id),
                    last_seq bigint NOT NULL DEFAULT 0,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    updated_at timestamptz NOT NULL DEFAULT now(),
                    claimed_at timestamptz,
                    closed_at timestamptz,
                    last_message_text text,
                    last_message_sender text,
                    last_message_at timestamptz
                )
                """,
                "CREATE INDEX conversations_queue ON conversations (status, created_at)",
                """
                CREATE TABLE events (
                    conversation_id uuid NOT NULL REFERENCES conversations (id),
                    seq bigint NOT NULL CHECK (seq > 0),
                    type text NOT NULL,
                    sender text NOT NULL CHECK (sender IN ('visitor', 'agent', 'system')),
                    text text NOT NULL DEFAULT '',
                    client_msg_id text,
                    agent_id uuid,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (conversation_id, seq)
                )
                """,
                // The idempotency key: one client_msg_id is stored once per conversation and sender.
                """
                CREATE UNIQUE INDEX events_client_msg_id ON events (conversation_id, sender, client_msg_id)
                    WHERE client_msg_id IS NOT NULL
                """,
            ]
        ),
        (
            2, "least-privilege roles",
            [
                // Group roles, one per service; logins are made members with `parleyctl db user`.
                // Roles belong to the server, not the database: an existing one is reused.
                """
                DO $$
                BEGIN
                    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'parley_relay') THEN
                        BEGIN CREATE ROLE parley_relay NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                    END IF;
                    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'parley_agent_gateway') THEN
                        BEGIN CREATE ROLE parley_agent_gateway NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                    END IF;
                END $$
                """,
                "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
                "GRANT USAGE ON SCHEMA public TO parley_relay, parley_agent_gateway",
                // The relay writes conversations and messages, never deletes; it reads agents'
                // names (not their password hashes).
                "GRANT SELECT, INSERT, UPDATE ON conversations TO parley_relay",
                "GRANT SELECT, INSERT ON events TO parley_relay",
                "GRANT SELECT (id, name, disabled) ON agents TO parley_relay",
                // Both register and heartbeat nodes, but only an administrator drains one (`state`).
                """
                GRANT SELECT,
                      INSERT (id, role, zone, public_address, internal_address, ops_address, connections, started_at, last_seen),
                      UPDATE (role, zone, public_address, internal_address, ops_address, connections, started_at, last_seen)
                ON nodes TO parley_relay, parley_agent_gateway
                """,
                // The agent gateway reads; its only writes are its agents' sessions.
                "GRANT SELECT ON conversations, events, agents TO parley_agent_gateway",
                "GRANT SELECT, INSERT, DELETE ON agent_sessions TO parley_agent_gateway",
            ]
        ),
        (
            3, "audit log, verified visitor identity",
            [
                // Append-only: no service may change or remove a row, and a trigger refuses it
                // even for the owner, so rewriting history takes a visible schema change.
                """
                CREATE TABLE audit_log (
                    id bigserial PRIMARY KEY,
                    at timestamptz NOT NULL DEFAULT now(),
                    actor text NOT NULL,
                    action text NOT NULL,
                    subject text NOT NULL DEFAULT '',
                    detail text NOT NULL DEFAULT ''
                )
                """,
                "CREATE INDEX audit_log_action ON audit_log (action, id)",
                """
                CREATE FUNCTION parley_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = '42501';
                END $$
                """,
                """
                CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
                FOR EACH ROW EXECUTE FUNCTION parley_audit_log_append_only()
                """,
                """
                CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
                FOR EACH STATEMENT EXECUTE FUNCTION parley_audit_log_append_only()
                """,
                "GRANT INSERT ON audit_log TO parley_relay, parley_agent_gateway",
                "GRANT USAGE ON SEQUENCE audit_log_id_seq TO parley_relay, parley_agent_gateway",
                // Admins read the log through the agent gateway.
                "GRANT SELECT ON audit_log TO parley_agent_gateway",
                // The relay checks a supervisor's role itself for transfers and closes.
                "GRANT SELECT (role) ON agents TO parley_relay",
                "ALTER TABLE conversations ADD COLUMN visitor_user_id text NOT NULL DEFAULT ''",
            ]
        ),
        (
            4, "appends in one round trip",
            [
                // A batch of messages in one call, so a commit costs one round trip instead of five
                // (BEGIN, lock, duplicate check, write, COMMIT); round trips, not PostgreSQL's work,
                // were most of an append's time. What it decides is what `EventStore.append` documents.
                // Each statement of a plpgsql function takes a new snapshot, so the duplicate check,
                // after the lock, sees whatever committed while the lock was awaited.
                """
                CREATE FUNCTION parley_append(p_conv uuid[], p_sender text[], p_text text[], p_msg text[], p_agent text[])
                RETURNS TABLE (o_outcome text, o_seq int8, o_created_ms int8, o_pinned_node text, o_agent_name text)
                LANGUAGE plpgsql
                -- Its plans are cached per connection, and a plan made while the tables were small
                -- (a new database) would scan them whole for ever: the indexes are always the way.
                SET enable_seqscan = off
                AS $fn$
                DECLARE
                    now_ms int8 := (extract(epoch FROM now()) * 1000)::int8;
                    stamp text := to_char(timestamp 'epoch' + now_ms * interval '1 millisecond', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
                    v_outcome text[]; v_seq int8[]; v_ms int8[]; v_node text[]; v_name text[]; v_lines text[];
                    line text;
                    chunk text := '';
                BEGIN
                    -- In id order: concurrent batches never deadlock.
                    PERFORM 1 FROM conversations c WHERE c.id = ANY(p_conv) ORDER BY c.id FOR UPDATE;

                    WITH items AS (
                        SELECT u.ord, u.conv, u.snd, u.txt, u.msg, NULLIF(u.agent, '')::uuid AS agent
                        FROM unnest(p_conv, p_sender, p_text, p_msg, p_agent) WITH ORDINALITY AS u(conv, snd, txt, msg, agent, ord)
                    ), checked AS (
                        SELECT i.*, c.pinned_node AS node, c.last_seq, a.name AS aname, e.seq AS old_seq,
                               (extract(epoch FROM e.created_at) * 1000)::int8 AS old_ms,
                               CASE
                                   WHEN c.id IS NULL THEN 'not_found'
                                   WHEN e.seq IS NOT NULL THEN 'duplicate'
                                   WHEN c.status = 'closed' THEN 'conversation_closed'
                                   WHEN i.snd = 'agent' AND (i.agent IS NULL OR i.agent IS DISTINCT FROM c.assigned_agent) THEN 'not_assigned'
                                   ELSE 'ok'
                               END AS verdict
                        FROM items i
                        LEFT JOIN conversations c ON c.id = i.conv
                        LEFT JOIN agents a ON a.id = c.assigned_agent
                        LEFT JOIN events e ON e.conversation_id = i.conv AND e.sender = i.snd AND e.client_msg_id = i.msg
                    ), firsts AS (
                        -- A client_msg_id repeated within the batch is stored once: its first acceptable copy.
                        SELECT ch.*, (ch.verdict = 'ok' AND ch.ord = min(ch.ord) FILTER (WHERE ch.verdict = 'ok')
                                          OVER (PARTITION BY ch.conv, ch.snd, ch.msg)) AS store
                        FROM checked ch
                    ), numbered AS (
                        SELECT f.*, f.last_seq + count(*) FILTER (WHERE f.store) OVER (PARTITION BY f.conv ORDER BY f.ord) AS new_seq
                        FROM firsts f
                    ), resolved AS (
                        SELECT n.*,
                               CASE WHEN n.store THEN 'stored' WHEN n.verdict = 'ok' THEN 'duplicate' ELSE n.verdict END AS result,
                               CASE WHEN n.verdict = 'duplicate' THEN n.old_seq
                                    WHEN n.verdict = 'ok' THEN max(n.new_seq) FILTER (WHERE n.store) OVER (PARTITION BY n.conv, n.snd, n.msg)
                               END AS result_seq,
                               CASE WHEN n.verdict = 'duplicate' THEN n.old_ms ELSE now_ms END AS result_ms
                        FROM numbered n
                    ), inserted AS (
                        INSERT INTO events (conversation_id, seq, type, sender, text, client_msg_id, agent_id, created_at)
                        SELECT r.conv, r.result_seq, 'message', r.snd, r.txt, r.msg, r.agent, now() FROM resolved r WHERE r.store
                    ), summarised AS (
                        UPDATE conversations c
                        SET last_seq = s.result_seq, last_message_text = s.txt, last_message_sender = s.snd,
                            last_message_at = now(), updated_at = now()
                        FROM (SELECT DISTINCT ON (r.conv) r.conv, r.result_seq, r.txt, r.snd FROM resolved r WHERE r.store
                              ORDER BY r.conv, r.ord DESC) s
                        WHERE c.id = s.conv
                    ), stored AS (
                        -- The agents' feed: each message inside the notification, as clients get it.
                        SELECT r.conv, r.ord, r.result_seq,
                               'E ' || r.conv || ' ' || (jsonb_build_object(
                                   'seq', r.result_seq, 'type', 'message', 'sender', r.snd, 'text', r.txt,
                                   'client_msg_id', r.msg, 'created_at', stamp)
                                 || CASE WHEN r.agent IS NULL THEN '{}'::jsonb
                                         ELSE jsonb_build_object('agent', jsonb_build_object('id', r.agent, 'name', coalesce(r.aname, ''))) END
                               )::text AS line
                        FROM resolved r WHERE r.store
                    ), lines AS (
                        -- A conversation with an event too large for a notification (8000 bytes)
                        -- gets its range to read instead.
                        SELECT s.conv, s.ord, s.line FROM stored s
                        WHERE NOT EXISTS (SELECT 1 FROM stored b WHERE b.conv = s.conv AND octet_length(b.line) > 6039)
                        UNION ALL
                        SELECT s.conv, min(s.ord), 'e ' || s.conv || ' ' || min(s.result_seq) || ' ' || max(s.result_seq)
                        FROM stored s GROUP BY s.conv HAVING max(octet_length(s.line)) > 6039
                    )
                    SELECT array_agg(r.result ORDER BY r.ord), array_agg(r.result_seq ORDER BY r.ord), array_agg(r.result_ms ORDER BY r.ord),
                           array_agg(r.node ORDER BY r.ord), array_agg(r.aname ORDER BY r.ord),
                           (SELECT array_agg(l.line ORDER BY l.conv, l.ord) FROM lines l)
                    INTO v_outcome, v_seq, v_ms, v_node, v_name, v_lines
                    FROM resolved r;

                    -- NOTIFY payloads are capped at 8000 bytes: lines go in chunks below that.
                    FOREACH line IN ARRAY coalesce(v_lines, '{}') LOOP
                        IF chunk <> '' AND octet_length(chunk) + octet_length(line) + 1 > 7000 THEN
                            PERFORM pg_notify('parley_events', chunk);
                            chunk := '';
                        END IF;
                        chunk := CASE WHEN chunk = '' THEN line ELSE chunk || E'\n' || line END;
                    END LOOP;
                    IF chunk <> '' THEN
                        PERFORM pg_notify('parley_events', chunk);
                    END IF;
                    RETURN QUERY SELECT * FROM unnest(v_outcome, v_seq, v_ms, v_node, v_name);
                END
                $fn$
                """,
                "REVOKE EXECUTE ON FUNCTION parley_append(uuid[], text[], text[], text[], text[]) FROM PUBLIC",
                "GRANT EXECUTE ON FUNCTION parley_append(uuid[], text[], text[], text[], text[]) TO parley_relay",
            ]
        ),
        (
            5, "appends planned once per connection",
            [
                // PostgreSQL plans a statement with parameters afresh for each of its first calls
                // and keeps doing so while a fresh plan looks cheaper than the generic one: the
                // append's one statement was planned on every call, 0.9 of its 1.4 ms. Its plans
                // use the indexes whatever the batch (enable_seqscan = off), so one generic plan
                // per connection does: a call is 0.5 ms, commit included.
                "ALTER FUNCTION parley_append(uuid[], text[], text[], text[], text[]) SET plan_cache_mode = force_generic_plan",
            ]
        ),
        (
            6, "appends probe the indexes whatever the tables' size; one message without the batch statement",
            [
                // A connection caches the batch statement's generic plan on its first call, and the
                // planner had joined `events` by hashing it whole when the table was small then (a
                // new database): every later call on that connection read every message's index
                // entry, a millisecond and more per call after a few thousand messages. Now each
                // lookup is a subquery of its own, which the planner cannot turn into that join, and
                // the summary update finds its rows through the batch's ids.
                """
                CREATE OR REPLACE FUNCTION parley_append(p_conv uuid[], p_sender text[], p_text text[], p_msg text[], p_agent text[])
                RETURNS TABLE (o_outcome text, o_seq int8, o_created_ms int8, o_pinned_node text, o_agent_name text)
                LANGUAGE plpgsql
                -- Its plans are cached per connection, and a plan made while the tables were small
                -- (a new database) would scan them whole for ever: the indexes are always the way.
                SET enable_seqscan = off
                SET plan_cache_mode = force_generic_plan
                AS $fn$
                DECLARE
                    now_ms int8 := (extract(epoch FROM now()) * 1000)::int8;
                    stamp text := to_char(timestamp 'epoch' + now_ms * interval '1 millisecond', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
                    v_outcome text[]; v_seq int8[]; v_ms int8[]; v_node text[]; v_name text[]; v_lines text[];
                    line text;
                    chunk text := '';
                BEGIN
                    -- In id order: concurrent batches never deadlock.
                    PERFORM 1 FROM conversations c WHERE c.id = ANY(p_conv) ORDER BY c.id FOR UPDATE;

                    WITH items AS (
                        SELECT u.ord, u.conv, u.snd, u.txt, u.msg, NULLIF(u.agent, '')::uuid AS agent
                        FROM unnest(p_conv, p_sender, p_text, p_msg, p_agent) WITH ORDINALITY AS u(conv, snd, txt, msg, agent, ord)
                    ), checked AS (
                        SELECT i.*, c.pinned_node AS node, c.last_seq, a.name AS aname, e.seq AS old_seq,
                               (extract(epoch FROM e.created_at) * 1000)::int8 AS old_ms,
                               CASE
                                   WHEN c.id IS NULL THEN 'not_found'
                                   WHEN e.seq IS NOT NULL THEN 'duplicate'
                                   WHEN c.status = 'closed' THEN 'conversation_closed'
                                   WHEN i.snd = 'agent' AND (i.agent IS NULL OR i.agent IS DISTINCT FROM c.assigned_agent) THEN 'not_assigned'
                                   ELSE 'ok'
                               END AS verdict
                        -- Each lookup is a subquery the planner cannot flatten into a join: an index
                        -- probe per message, whatever the tables' sizes when the plan was cached.
                        FROM items i
                        LEFT JOIN LATERAL (SELECT c.id, c.status, c.last_seq, c.pinned_node, c.assigned_agent
                                           FROM conversations c WHERE c.id = i.conv OFFSET 0) c ON true
                        LEFT JOIN LATERAL (SELECT a.name FROM agents a WHERE a.id = c.assigned_agent OFFSET 0) a ON true
                        LEFT JOIN LATERAL (SELECT e.seq, e.created_at FROM events e
                                           WHERE e.conversation_id = i.conv AND e.sender = i.snd AND e.client_msg_id = i.msg
                                           LIMIT 1) e ON true
                    ), firsts AS (
                        -- A client_msg_id repeated within the batch is stored once: its first acceptable copy.
                        SELECT ch.*, (ch.verdict = 'ok' AND ch.ord = min(ch.ord) FILTER (WHERE ch.verdict = 'ok')
                                          OVER (PARTITION BY ch.conv, ch.snd, ch.msg)) AS store
                        FROM checked ch
                    ), numbered AS (
                        SELECT f.*, f.last_seq + count(*) FILTER (WHERE f.store) OVER (PARTITION BY f.conv ORDER BY f.ord) AS new_seq
                        FROM firsts f
                    ), resolved AS (
                        SELECT n.*,
                               CASE WHEN n.store THEN 'stored' WHEN n.verdict = 'ok' THEN 'duplicate' ELSE n.verdict END AS result,
                               CASE WHEN n.verdict = 'duplicate' THEN n.old_seq
                                    WHEN n.verdict = 'ok' THEN max(n.new_seq) FILTER (WHERE n.store) OVER (PARTITION BY n.conv, n.snd, n.msg)
                               END AS result_seq,
                               CASE WHEN n.verdict = 'duplicate' THEN n.old_ms ELSE now_ms END AS result_ms
                        FROM numbered n
                    ), inserted AS (
                        INSERT INTO events (conversation_id, seq, type, sender, text, client_msg_id, agent_id, created_at)
                        SELECT r.conv, r.result_seq, 'message', r.snd, r.txt, r.msg, r.agent, now() FROM resolved r WHERE r.store
                    ), summarised AS (
                        UPDATE conversations c
                        SET last_seq = s.result_seq, last_message_text = s.txt, last_message_sender = s.snd,
                            last_message_at = now(), updated_at = now()
                        FROM (SELECT DISTINCT ON (r.conv) r.conv, r.result_seq, r.txt, r.snd FROM resolved r WHERE r.store
                              ORDER BY r.conv, r.ord DESC) s
                        WHERE c.id = ANY(p_conv) AND c.id = s.conv
                    ), stored AS (
                        -- The agents' feed: each message inside the notification, as clients get it.
                        SELECT r.conv, r.ord, r.result_seq,
                               'E ' || r.conv || ' ' || (jsonb_build_object(
                                   'seq', r.result_seq, 'type', 'message', 'sender', r.snd, 'text', r.txt,
                                   'client_msg_id', r.msg, 'created_at', stamp)
                                 || CASE WHEN r.agent IS NULL THEN '{}'::jsonb
                                         ELSE jsonb_build_object('agent', jsonb_build_object('id', r.agent, 'name', coalesce(r.aname, ''))) END
                               )::text AS line
                        FROM resolved r WHERE r.store
                    ), lines AS (
                        -- A conversation with an event too large for a notification (8000 bytes)
                        -- gets its range to read instead.
                        SELECT s.conv, s.ord, s.line FROM stored s
                        WHERE NOT EXISTS (SELECT 1 FROM stored b WHERE b.conv = s.conv AND octet_length(b.line) > 6039)
                        UNION ALL
                        SELECT s.conv, min(s.ord), 'e ' || s.conv || ' ' || min(s.result_seq) || ' ' || max(s.result_seq)
                        FROM stored s GROUP BY s.conv HAVING max(octet_length(s.line)) > 6039
                    )
                    SELECT array_agg(r.result ORDER BY r.ord), array_agg(r.result_seq ORDER BY r.ord), array_agg(r.result_ms ORDER BY r.ord),
                           array_agg(r.node ORDER BY r.ord), array_agg(r.aname ORDER BY r.ord),
                           (SELECT array_agg(l.line ORDER BY l.conv, l.ord) FROM lines l)
                    INTO v_outcome, v_seq, v_ms, v_node, v_name, v_lines
                    FROM resolved r;

                    -- NOTIFY payloads are capped at 8000 bytes: lines go in chunks below that.
                    FOREACH line IN ARRAY coalesce(v_lines, '{}') LOOP
                        IF chunk <> '' AND octet_length(chunk) + octet_length(line) + 1 > 7000 THEN
                            PERFORM pg_notify('parley_events', chunk);
                            chunk := '';
                        END IF;
                        chunk := CASE WHEN chunk = '' THEN line ELSE chunk || E'\n' || line END;
                    END LOOP;
                    IF chunk <> '' THEN
                        PERFORM pg_notify('parley_events', chunk);
                    END IF;
                    RETURN QUERY SELECT * FROM unnest(v_outcome, v_seq, v_ms, v_node, v_name);
                END
                $fn$
                """,
                // Most calls hold one message unless the relay is busy. The batch statement's
                // thirty-odd plan nodes (windows, sorts, aggregates) cost about as much for one
                // message as for three; these few single-row statements cost PostgreSQL a
                // quarter less CPU per call. The checks, their order and the answers are
                // parley_append's.
                """
                CREATE FUNCTION parley_append_one(p_conv uuid, p_sender text, p_text text, p_msg text, p_agent text)
                RETURNS TABLE (o_outcome text, o_seq int8, o_created_ms int8, o_pinned_node text, o_agent_name text)
                LANGUAGE plpgsql
                SET enable_seqscan = off
                SET plan_cache_mode = force_generic_plan
                AS $fn$
                DECLARE
                    now_ms int8 := (extract(epoch FROM now()) * 1000)::int8;
                    v_agent uuid := NULLIF(p_agent, '')::uuid;
                    c record;
                    v_name text;
                    v_seq int8;
                    v_ms int8;
                    line text;
                BEGIN
                    SELECT status, last_seq, pinned_node, assigned_agent INTO c FROM conversations WHERE id = p_conv FOR UPDATE;
                    IF NOT FOUND THEN
                        RETURN QUERY SELECT 'not_found'::text, NULL::int8, now_ms, NULL::text, NULL::text;
                        RETURN;
                    END IF;
                    IF c.assigned_agent IS NOT NULL THEN
                        SELECT a.name INTO v_name FROM agents a WHERE a.id = c.assigned_agent;
                    END IF;
                    SELECT e.seq, (extract(epoch FROM e.created_at) * 1000)::int8 INTO v_seq, v_ms
                    FROM events e WHERE e.conversation_id = p_conv AND e.sender = p_sender AND e.client_msg_id = p_msg;
                    IF FOUND THEN
                        RETURN QUERY SELECT 'duplicate'::text, v_seq, v_ms, c.pinned_node, v_name;
                        RETURN;
                    END IF;
                    IF c.status = 'closed' THEN
                        RETURN QUERY SELECT 'conversation_closed'::text, NULL::int8, now_ms, c.pinned_node, v_name;
                        RETURN;
                    END IF;
                    IF p_sender = 'agent' AND (v_agent IS NULL OR v_agent IS DISTINCT FROM c.assigned_agent) THEN
                        RETURN QUERY SELECT 'not_assigned'::text, NULL::int8, now_ms, c.pinned_node, v_name;
                        RETURN;
                    END IF;
                    v_seq := c.last_seq + 1;
                    INSERT INTO events (conversation_id, seq, type, sender, text, client_msg_id, agent_id, created_at)
                    VALUES (p_conv, v_seq, 'message', p_sender, p_text, p_msg, v_agent, now());
                    UPDATE conversations
                    SET last_seq = v_seq, last_message_text = p_text, last_message_sender = p_sender,
                        last_message_at = now(), updated_at = now()
                    WHERE id = p_conv;
                    -- The agents' feed line, as parley_append writes it.
                    line := 'E ' || p_conv || ' ' || (jsonb_build_object(
                                'seq', v_seq, 'type', 'message', 'sender', p_sender, 'text', p_text, 'client_msg_id', p_msg,
                                'created_at', to_char(timestamp 'epoch' + now_ms * interval '1 millisecond', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
                              || CASE WHEN v_agent IS NULL THEN '{}'::jsonb
                                      ELSE jsonb_build_object('agent', jsonb_build_object('id', v_agent, 'name', coalesce(v_name, ''))) END
                            )::text;
                    IF octet_length(line) > 6039 THEN
                        line := 'e ' || p_conv || ' ' || v_seq || ' ' || v_seq;
                    END IF;
                    PERFORM pg_notify('parley_events', line);
                    RETURN QUERY SELECT 'stored'::text, v_seq, now_ms, c.pinned_node, v_name;
                END
                $fn$
                """,
                "REVOKE EXECUTE ON FUNCTION parley_append_one(uuid, text, text, text, text) FROM PUBLIC",
                "GRANT EXECUTE ON FUNCTION parley_append_one(uuid, text, text, text, text) TO parley_relay",
            ]
        ),
    ]

    /// Applies every migration not applied yet, each in its own transaction, under an advisory
    /// lock so that concurrent migrators wait instead of racing. Returns the versions applied.
    @discardableResult
    public static func migrate(_ client: PostgresClient, logger: Logger) async throws -> [Int] {
        try await client.withConnection { connection in
            // Lock before anything else: even CREATE TABLE IF NOT EXISTS races with itself.
            try await connection.query("SELECT pg_advisory_lock(7243001)", logger: logger)
            do {
                try await connection.query(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                    logger: logger)
                var applied: Set<Int> = []
                for try await version in try await connection.query("SELECT version FROM schema_migrations", logger: logger).decode(Int.self) {
                    applied.insert(version)
                }
                var done: [Int] = []
                for migration in all where !applied.contains(migration.version) {
                    try await connection.withTransaction(logger: logger) { tx in
                        for statement in migration.sql {
                            try await tx.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                        }
                        try await tx.query(
                            "INSERT INTO schema_migrations (version, name) VALUES (\(migration.version), \(migration.name))", logger: logger)
                    }
                    logger.info("applied migration", metadata: ["parley.migration": "\(migration.version) \(migration.name)"])
                    done.append(migration.version)
                }
                try await connection.query("SELECT pg_advisory_unlock(7243001)", logger: logger)
                return done
            } catch {
                _ = try? await connection.query("SELECT pg_advisory_unlock(7243001)", logger: logger)
                throw error
            }
        }
    }
}
