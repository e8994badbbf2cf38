import Foundation
import Logging
import PostgresNIO

/// One line of the audit log.
public struct AuditEntry: Sendable, Hashable, Codable {
    public var id: Int64
    /// When it was written, milliseconds since the Unix epoch.
    public var atMillis: Int64
    /// Who did it: `agent:<uuid>`, `admin:<os user>` for parleyctl, or `email:<address>` for a failed login.
    public var actor: String
    public var action: String
    /// What it was done to: a conversation, node or agent.
    public var subject: String
    /// A short human-readable detail; never a message body, token or password.
    public var detail: String

    enum CodingKeys: String, CodingKey {
        case id, actor, action, subject, detail
        case atMillis = "at_ms"
    }
}

/// The append-only record of who did what: logins, claims, transfers, closes, exports, and
/// changes to the node registry and to agent accounts.
///
/// Writes that change a conversation are recorded in the same transaction as the change, so the
/// log never says a claim happened that did not, nor misses one that did. The table refuses
/// UPDATE, DELETE and TRUNCATE (a trigger), and no service role holds those grants.
public struct AuditLog: Sendable {
    /// The actions recorded.
    public enum Action {
        public static let login = "login"
        public static let loginFailed = "login_failed"
        public static let logout = "logout"
        public static let claim = "claim"
        public static let transfer = "transfer"
        public static let close = "close"
        public static let export = "export"
        public static let nodeDrain = "node_drain"
        public static let nodeUndrain = "node_undrain"
        public static let nodeRemove = "node_remove"
        public static let agentAdd = "agent_add"
        public static let agentDisable = "agent_disable"
    }

    let client: PostgresClient
    let logger: Logger

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// The actor string for an agent.
    public static func agent(_ id: UUID) -> String { "agent:\(id.uuidString.lowercased())" }

    public func record(actor: String, action: String, subject: String = "", detail: String = "") async throws {
        try await client.withConnection { try await Self.record(actor: actor, action: action, subject: subject, detail: detail, on: $0, logger: logger) }
    }

    /// Records on a given connection, inside the caller's transaction.
    static func record(actor: String, action: String, subject: String, detail: String, on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query(
            "INSERT INTO audit_log (actor, action, subject, detail) VALUES (\(actor), \(action), \(subject), \(detail))", logger: logger)
    }

    /// The newest entries first, optionally before an id (paging) and of one action.
    public func list(before: Int64? = nil, action: String? = nil, limit: Int = 100) async throws -> [AuditEntry] {
        let rows = try await client.query(
            """
            SELECT id, (extract(epoch FROM at) * 1000)::int8, actor, action, subject, detail FROM audit_log
            WHERE id < \(before ?? Int64.max) AND (\(action ?? "") = '' OR action = \(action ?? ""))
            ORDER BY id DESC LIMIT \(limit)
            """, logger: logger)
        var entries: [AuditEntry] = []
        for try await (id, at, actor, action, subject, detail) in rows.decode((Int64, Int64, String, String, String, String).self) {
            entries.append(AuditEntry(id: id, atMillis: at, actor: actor, action: action, subject: subject, detail: detail))
        }
        return entries
    }
}
