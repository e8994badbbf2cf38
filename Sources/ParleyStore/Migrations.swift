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
