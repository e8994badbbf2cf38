import Crypto
import Foundation
import Logging
import ParleyCore
import PostgresNIO

/// An agent account.
public struct Agent: Sendable, Hashable, Codable {
    public var id: UUID
    public var email: String
    public var name: String
    public var role: String
    public var disabled: Bool

    public init(id: UUID, email: String, name: String, role: String, disabled: Bool) {
        self.id = id
        self.email = email
        self.name = name
        self.role = role
        self.disabled = disabled
    }
}

/// Agent accounts and their sessions. Passwords arrive already hashed (bcrypt); session tokens
/// are stored only as SHA-256 digests, so a database dump yields no usable session.
public struct AgentStore: Sendable {
    public static let roles = ["agent", "supervisor", "admin"]
    /// The roles that may transfer conversations and close anyone's.
    public static let supervisorRoles: Set<String> = ["supervisor", "admin"]

    let client: PostgresClient
    let logger: Logger

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Adds an agent, or with `replace` updates the name, role and password of an existing one.
    public func add(email: String, name: String, role: String, passwordHash: String, replace: Bool = false) async throws -> Agent {
        let email = email.lowercased()
        if replace {
            let rows = try await client.query(
                """
                UPDATE agents SET name = \(name), role = \(role), password_hash = \(passwordHash), disabled = false
                WHERE lower(email) = \(email) RETURNING id
                """, logger: logger)
            for try await id in rows.decode(UUID.self) {
                return Agent(id: id, email: email, name: name, role: role, disabled: false)
            }
        }
        let id = UUID()
        do {
            try await client.query(
                """
                INSERT INTO agents (id, email, name, role, password_hash)
                VALUES (\(id), \(email), \(name), \(role), \(passwordHash))
                """, logger: logger)
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
            throw ParleyError(.alreadyClaimed, "an agent with the email \(email) already exists")
        }
        return Agent(id: id, email: email, name: name, role: role, disabled: false)
    }

    public func list() async throws -> [Agent] {
        var agents: [Agent] = []
        let rows = try await client.query("SELECT id, email, name, role, disabled FROM agents ORDER BY email", logger: logger)
        for try await (id, email, name, role, disabled) in rows.decode((UUID, String, String, String, Bool).self) {
            agents.append(Agent(id: id, email: email, name: name, role: role, disabled: disabled))
        }
        return agents
    }

    /// Disables an agent and ends their sessions; returns false when there is no such agent.
    public func disable(email: String) async throws -> Bool {
        try await client.withTransaction(logger: logger) { tx in
            let rows = try await tx.query("UPDATE agents SET disabled = true WHERE lower(email) = \(email.lowercased()) RETURNING id", logger: logger)
            var id: UUID?
            for try await found in rows.decode(UUID.self) { id = found }
            guard let id else { return false }
            try await tx.query("DELETE FROM agent_sessions WHERE agent_id = \(id)", logger: logger)
            return true
        }
    }

    /// The agent and password hash for a login attempt, if the account exists and is enabled.
    public func credentials(email: String) async throws -> (Agent, String)? {
        let rows = try await client.query(
            "SELECT id, email, name, role, password_hash FROM agents WHERE lower(email) = \(email.lowercased()) AND NOT disabled",
            logger: logger)
        for try await (id, email, name, role, hash) in rows.decode((UUID, String, String, String, String).self) {
            return (Agent(id: id, email: email, name: name, role: role, disabled: false), hash)
        }
        return nil
    }

    /// Creates a session and returns its token (shown once, never stored).
    public func createSession(agentID: UUID, lifetimeSeconds: Int = 12 * 3600) async throws -> String {
        let token = Base64URL.random(bytes: 32)
        try await client.query(
            """
            INSERT INTO agent_sessions (token_hash, agent_id, expires_at)
            VALUES (\(Self.digest(token)), \(agentID), now() + make_interval(secs => \(Double(lifetimeSeconds))))
            """, logger: logger)
        return token
    }

    /// The agent a session token belongs to, if it is valid, unexpired and the agent enabled.
    public func agent(forSession token: String) async throws -> Agent? {
        guard token.utf8.count <= 128 else { return nil }
        let rows = try await client.query(
            """
            SELECT a.id, a.email, a.name, a.role FROM agent_sessions s JOIN agents a ON a.id = s.agent_id
            WHERE s.token_hash = \(Self.digest(token)) AND s.expires_at > now() AND NOT a.disabled
            """, logger: logger)
        for try await (id, email, name, role) in rows.decode((UUID, String, String, String).self) {
            return Agent(id: id, email: email, name: name, role: role, disabled: false)
        }
        return nil
    }

    public func deleteSession(_ token: String) async throws {
        try await client.query("DELETE FROM agent_sessions WHERE token_hash = \(Self.digest(token))", logger: logger)
    }

    static func digest(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).lowercaseHex
    }
}
