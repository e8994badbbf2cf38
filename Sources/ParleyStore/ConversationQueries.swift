import Foundation
import Logging
import ParleyCore
import PostgresNIO

/// A conversation as the agent console lists it.
public struct ConversationSummary: Sendable, Hashable, Codable {
    public var id: String
    public var status: String
    public var visitorName: String
    public var visitorEmail: String
    public var topic: String
    /// The customer's user id, set only when the visitor gateway verified it.
    public var visitorUserID: String
    public var assignedAgent: AgentRef?
    public var lastSeq: Int64
    public var createdAt: String
    /// Seconds since the conversation started, while it is queued; 0 once claimed.
    public var waitingSeconds: Int64
    public var lastMessage: LastMessage?

    public struct LastMessage: Sendable, Hashable, Codable {
        public var text: String
        public var sender: String
        public var at: String
    }

    enum CodingKeys: String, CodingKey {
        case id, status, topic
        case visitorName = "visitor_name"
        case visitorEmail = "visitor_email"
        case visitorUserID = "visitor_user_id"
        case assignedAgent = "assigned_agent"
        case lastSeq = "last_seq"
        case createdAt = "created_at"
        case waitingSeconds = "waiting_seconds"
        case lastMessage = "last_message"
    }
}

/// The agent gateway's reads of conversations, straight from PostgreSQL.
public struct ConversationQueries: Sendable {
    let client: PostgresClient
    let logger: Logger

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Conversations with a status, oldest first, so that the longest-waiting visitor is served first.
    public func list(status: String, limit: Int = 200) async throws -> [ConversationSummary] {
        try await select(status: status, limit: limit)
    }

    public func summary(id: UUID) async throws -> ConversationSummary? {
        try await select(status: nil, ids: [id], limit: 1).first
    }

    /// Several conversations in one query (the agents' feed refreshes them in batches).
    public func summaries(ids: [UUID]) async throws -> [ConversationSummary] {
        ids.isEmpty ? [] : try await select(status: nil, ids: ids, limit: ids.count)
    }

    private func select(status: String?, ids: [UUID]? = nil, limit: Int) async throws -> [ConversationSummary] {
        let rows = try await client.query(
            """
            SELECT c.id, c.status, c.visitor_name, c.visitor_email, c.topic, c.assigned_agent, a.name, c.last_seq,
                   (extract(epoch FROM c.created_at) * 1000)::int8,
                   CASE WHEN c.status = 'queued' THEN extract(epoch FROM now() - c.created_at)::int8 ELSE 0 END,
                   c.last_message_text, c.last_message_sender, (extract(epoch FROM c.last_message_at) * 1000)::int8,
                   c.visitor_user_id
            FROM conversations c LEFT JOIN agents a ON a.id = c.assigned_agent
            WHERE (\(status ?? "") = '' OR c.status = \(status ?? "")) AND (\(ids == nil) OR c.id = ANY(\(ids ?? [])))
            ORDER BY c.created_at ASC, c.id
            LIMIT \(limit)
            """, logger: logger)
        var result: [ConversationSummary] = []
        for try await (id, status, name, email, topic, agentID, agentName, lastSeq, created, waiting, lastText, lastSender, lastAt, userID) in rows.decode(
            (UUID, String, String, String, String, UUID?, String?, Int64, Int64, Int64, String?, String?, Int64?, String).self)
        {
            result.append(
                ConversationSummary(
                    id: id.uuidString.lowercased(), status: status, visitorName: name, visitorEmail: email, topic: topic,
                    visitorUserID: userID, assignedAgent: agentID.map { AgentRef(id: $0.uuidString.lowercased(), name: agentName ?? "") },
                    lastSeq: lastSeq, createdAt: Timestamp.format(created), waitingSeconds: waiting,
                    lastMessage: lastText.map {
                        ConversationSummary.LastMessage(text: $0, sender: lastSender ?? "", at: Timestamp.format(lastAt ?? created))
                    }))
        }
        return result
    }

    /// History after a cursor, at most `limit` events.
    public func events(conversationID: UUID, after: Int64, limit: Int) async throws -> EventPage {
        try await EventStore.events(client: client, logger: logger, conversationID: conversationID, after: after, limit: limit, tail: false)
    }
}
