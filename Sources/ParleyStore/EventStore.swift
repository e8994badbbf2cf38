import Foundation
import Logging
import ParleyCore
import PostgresNIO

/// One message to store, as handed to the relay.
public struct AppendItem: Sendable, Hashable {
    public var conversationID: UUID
    public var sender: Sender
    public var clientMsgID: String
    public var text: String
    /// Required when `sender` is `.agent`: the agent must be the one the conversation is assigned to.
    public var agentID: UUID?

    public init(conversationID: UUID, sender: Sender, clientMsgID: String, text: String, agentID: UUID? = nil) {
        self.conversationID = conversationID
        self.sender = sender
        self.clientMsgID = clientMsgID
        self.text = text
        self.agentID = agentID
    }
}

/// What became of one `AppendItem`.
public enum AppendOutcome: Sendable, Hashable {
    /// Stored now, with the node the conversation is pinned to (where the relay delivers it).
    case stored(ConversationEvent, pinnedNode: String?)
    /// The same `client_msg_id` was stored before: its original sequence number and time.
    case duplicate(seq: Int64, createdAtMillis: Int64)
    case failed(ParleyError)
}

/// The result of writing a system event (claim, close): the event and where to deliver it.
public struct WrittenEvent: Sendable, Hashable {
    public var event: ConversationEvent
    public var pinnedNode: String?
}

/// A page of a conversation's persisted events.
public struct EventPage: Sendable, Hashable {
    public var events: [ConversationEvent]
    public var lastSeq: Int64
    public var status: String
    /// The cursor this page starts after.
    public var floor: Int64
    public var more: Bool
}

/// The relay's side of PostgreSQL: every write of conversation events, each committed before
/// it is acknowledged, with sequence numbers assigned under the conversation's row lock.
public struct EventStore: Sendable {
    /// The NOTIFY channel agent gateways LISTEN on.
    public static let notifyChannel = "parley_events"

    let client: PostgresClient
    let logger: Logger

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Creates a conversation pinned to `node`.
    public func startConversation(
        id: UUID = UUID(), pinnedNode: String, visitorName: String, visitorEmail: String, topic: String, visitorUserID: String = ""
    ) async throws -> (id: UUID, createdAtMillis: Int64) {
        let rows = try await transaction { tx in
            let rows = try await tx.query(
                """
                INSERT INTO conversations (id, pinned_node, visitor_name, visitor_email, topic, visitor_user_id)
                VALUES (\(id), \(pinnedNode), \(visitorName), \(visitorEmail), \(topic), \(visitorUserID))
                ON CONFLICT (id) DO NOTHING
                RETURNING (extract(epoch FROM created_at) * 1000)::int8
                """, logger: logger)
            for try await millis in rows.decode(Int64.self) {
                try await tx.query("SELECT pg_notify(\(Self.notifyChannel), \("c \(id.uuidString.lowercased())"))", logger: logger)
                return millis
            }
            // A retry of a start that committed (its answer was lost, or it went to another
            // relay): the same gateway gets the same conversation; anyone else a refusal.
            let existing = try await tx.query(
                "SELECT (extract(epoch FROM created_at) * 1000)::int8 FROM conversations WHERE id = \(id) AND pinned_node = \(pinnedNode)",
                logger: logger)
            for try await millis in existing.decode(Int64.self) { return millis }
            throw ParleyError(.invalidRequest, "conversation id \(id.uuidString.lowercased()) is already taken")
        }
        return (id, rows)
    }

    /// Stores a batch of messages in one transaction (group commit), in one round trip.
    ///
    /// Rows of the touched conversations are locked in id order, so concurrent relays never
    /// deadlock and sequence numbers are handed out without gaps. A `client_msg_id` already
    /// stored (or earlier in the batch) answers with its original seq. Items that fail a check
    /// (unknown conversation, closed, wrong agent) get `.failed` and do not abort the batch; a
    /// database error throws, and then nothing of the batch was committed. The agent gateways
    /// are notified in the same transaction (`parley_append`, migration 4; a batch of one message
    /// goes to `parley_append_one`, migration 6, which answers the same for less).
    public func append(_ items: [AppendItem]) async throws -> [AppendOutcome] {
        guard !items.isEmpty else { return [] }
        let rows: PostgresRowSequence
        if items.count == 1, let item = items.first {
            rows = try await client.query(
                """
                SELECT o_outcome, o_seq, o_created_ms, o_pinned_node, o_agent_name
                FROM parley_append_one(\(item.conversationID), \(item.sender.rawValue), \(item.text), \(item.clientMsgID),
                                       \(item.agentID?.uuidString ?? ""))
                """, logger: logger)
        } else {
            rows = try await client.query(
                """
                SELECT o_outcome, o_seq, o_created_ms, o_pinned_node, o_agent_name
                FROM parley_append(\(items.map(\.conversationID)), \(items.map(\.sender.rawValue)), \(items.map(\.text)),
                                   \(items.map(\.clientMsgID)), \(items.map { $0.agentID?.uuidString ?? "" }))
                """, logger: logger)
        }
        var outcomes: [AppendOutcome] = []
        outcomes.reserveCapacity(items.count)
        for try await (outcome, seq, millis, node, agentName) in rows.decode((String, Int64?, Int64?, String?, String?).self) {
            guard outcomes.count < items.count else { break }
            let item = items[outcomes.count]
            switch (outcome, seq, millis) {
            case ("stored", .some(let seq), .some(let millis)):
                outcomes.append(.stored(
                    ConversationEvent(
                        seq: seq, type: ConversationEvent.Kind.message, sender: item.sender, text: item.text,
                        clientMsgID: item.clientMsgID, createdAtMillis: millis,
                        agent: item.agentID.map { AgentRef(id: $0.uuidString.lowercased(), name: agentName ?? "") }),
                    pinnedNode: node))
            case ("duplicate", .some(let seq), .some(let millis)):
                outcomes.append(.duplicate(seq: seq, createdAtMillis: millis))
            case ("not_found", _, _):
                outcomes.append(.failed(ParleyError(.notFound, "no such conversation")))
            case ("conversation_closed", _, _):
                outcomes.append(.failed(ParleyError(.conversationClosed, "the conversation is closed")))
            case ("not_assigned", _, _):
                outcomes.append(.failed(ParleyError(.notAssigned, "only the agent assigned to the conversation may write to it")))
            default:
                throw ParleyError(.unavailable, "unexpected append outcome \(outcome)")
            }
        }
        // Committed, but unanswerable: the senders retry and their client_msg_ids answer then.
        guard outcomes.count == items.count else { throw ParleyError(.unavailable, "the append answered \(outcomes.count) of \(items.count) messages") }
        return outcomes
    }

    /// A transaction whose domain errors come out as themselves, not wrapped by PostgresNIO.
    private func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> sending T) async throws -> T {
        do {
            return try await client.withTransaction(logger: logger) { try await body($0) }
        } catch let error as PostgresTransactionError {
            if let domain = error.closureError as? ParleyError { throw domain }
            throw error
        }
    }

    /// NOTIFY payloads are capped at 8000 bytes by PostgreSQL: lines go in chunks below that.
    static func chunks(_ lines: [String]) -> [String] {
        var chunks: [String] = []
        var chunk = ""
        for line in lines {
            if !chunk.isEmpty && chunk.utf8.count + line.utf8.count + 1 > 7000 {
                chunks.append(chunk)
                chunk = ""
            }
            chunk += chunk.isEmpty ? line : "\n" + line
        }
        if !chunk.isEmpty { chunks.append(chunk) }
        return chunks
    }

    static func notify(_ lines: [String], on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query("SELECT pg_notify(\(notifyChannel), chunk) FROM unnest(\(chunks(lines))) AS chunk", logger: logger)
    }

    /// Assigns a queued conversation to an agent and appends an `agent_joined` event.
    /// Exactly one concurrent caller wins; the others get `already_claimed`.
    public func claim(conversationID: UUID, agentID: UUID) async throws -> WrittenEvent {
        try await transaction { tx in
            let (status, lastSeq, node, _) = try await Self.lock(conversationID, on: tx, logger: logger)
            guard status == "queued" else {
                throw status == "closed"
                    ? ParleyError(.conversationClosed, "the conversation is closed")
                    : ParleyError(.alreadyClaimed, "another agent has already claimed this conversation")
            }
            var name: String?
            for try await n in try await tx.query("SELECT name FROM agents WHERE id = \(agentID) AND NOT disabled", logger: logger).decode(String.self) {
                name = n
            }
            guard let name else { throw ParleyError(.forbidden, "no such active agent") }
            let event = try await Self.insertSystemEvent(
                conversationID, seq: lastSeq + 1, type: ConversationEvent.Kind.agentJoined, sender: .system,
                text: "\(name) joined the conversation", agent: AgentRef(id: agentID.uuidString.lowercased(), name: name), on: tx, logger: logger)
            try await tx.query(
                """
                UPDATE conversations SET status = 'open', assigned_agent = \(agentID), claimed_at = now(), updated_at = now(),
                       last_seq = \(event.seq)
                WHERE id = \(conversationID)
                """, logger: logger)
            try await Self.notify(["e \(conversationID.uuidString.lowercased()) \(event.seq) \(event.seq)"], on: tx, logger: logger)
            try await AuditLog.record(
                actor: AuditLog.agent(agentID), action: AuditLog.Action.claim, subject: conversationID.uuidString.lowercased(), detail: "",
                on: tx, logger: logger)
            return WrittenEvent(event: event, pinnedNode: node)
        }
    }

    /// Moves a queued or open conversation to another agent with a `transferred` event. Only a
    /// supervisor or admin may; the role is read here, in the transaction, not taken on trust.
    public func transfer(conversationID: UUID, by supervisorID: UUID, to agentID: UUID) async throws -> WrittenEvent {
        try await transaction { tx in
            let (status, lastSeq, node, assigned) = try await Self.lock(conversationID, on: tx, logger: logger)
            guard status != "closed" else { throw ParleyError(.conversationClosed, "the conversation is closed") }
            guard let supervisor = try await Self.activeAgent(supervisorID, on: tx, logger: logger),
                AgentStore.supervisorRoles.contains(supervisor.role)
            else { throw ParleyError(.forbidden, "only supervisors and admins may transfer conversations") }
            guard let target = try await Self.activeAgent(agentID, on: tx, logger: logger) else {
                throw ParleyError(.invalidRequest, "no such active agent to transfer to")
            }
            guard assigned != agentID else { throw ParleyError(.invalidRequest, "the conversation is already assigned to that agent") }
            let event = try await Self.insertSystemEvent(
                conversationID, seq: lastSeq + 1, type: ConversationEvent.Kind.transferred, sender: .system,
                text: "\(supervisor.name) transferred the conversation to \(target.name)",
                agent: AgentRef(id: agentID.uuidString.lowercased(), name: target.name), on: tx, logger: logger)
            try await tx.query(
                """
                UPDATE conversations SET status = 'open', assigned_agent = \(agentID), claimed_at = coalesce(claimed_at, now()),
                       updated_at = now(), last_seq = \(event.seq)
                WHERE id = \(conversationID)
                """, logger: logger)
            try await Self.notify(["e \(conversationID.uuidString.lowercased()) \(event.seq) \(event.seq)"], on: tx, logger: logger)
            try await AuditLog.record(
                actor: AuditLog.agent(supervisorID), action: AuditLog.Action.transfer, subject: conversationID.uuidString.lowercased(),
                detail: "from \(assigned.map { $0.uuidString.lowercased() } ?? "queue") to \(agentID.uuidString.lowercased())",
                on: tx, logger: logger)
            return WrittenEvent(event: event, pinnedNode: node)
        }
    }

    private static func activeAgent(_ id: UUID, on tx: PostgresConnection, logger: Logger) async throws -> (name: String, role: String)? {
        let rows = try await tx.query("SELECT name, role FROM agents WHERE id = \(id) AND NOT disabled", logger: logger)
        for try await row in rows.decode((String, String).self) { return row }
        return nil
    }

    /// Closes a conversation with a `closed` event. An agent may close a queued conversation or
    /// one assigned to them, a supervisor or admin any; `agentID == nil` means the visitor closes it.
    public func close(conversationID: UUID, agentID: UUID?) async throws -> WrittenEvent {
        try await transaction { tx in
            let (status, lastSeq, node, assigned) = try await Self.lock(conversationID, on: tx, logger: logger)
            guard status != "closed" else { throw ParleyError(.conversationClosed, "the conversation is already closed") }
            var agent: AgentRef?
            if let agentID {
                guard let (name, role) = try await Self.activeAgent(agentID, on: tx, logger: logger) else {
                    throw ParleyError(.forbidden, "no such active agent")
                }
                if let assigned, assigned != agentID, !AgentStore.supervisorRoles.contains(role) {
                    throw ParleyError(.notAssigned, "only the agent assigned to the conversation may close it")
                }
                agent = AgentRef(id: agentID.uuidString.lowercased(), name: name)
            }
            let text = agent.map { "\($0.name) closed the conversation" } ?? "The visitor closed the conversation"
            let event = try await Self.insertSystemEvent(
                conversationID, seq: lastSeq + 1, type: ConversationEvent.Kind.closed, sender: .system, text: text, agent: agent,
                on: tx, logger: logger)
            try await tx.query(
                "UPDATE conversations SET status = 'closed', closed_at = now(), updated_at = now(), last_seq = \(event.seq) WHERE id = \(conversationID)",
                logger: logger)
            try await Self.notify(["e \(conversationID.uuidString.lowercased()) \(event.seq) \(event.seq)"], on: tx, logger: logger)
            try await AuditLog.record(
                actor: agentID.map(AuditLog.agent) ?? "visitor", action: AuditLog.Action.close, subject: conversationID.uuidString.lowercased(),
                detail: "", on: tx, logger: logger)
            return WrittenEvent(event: event, pinnedNode: node)
        }
    }

    private static func lock(
        _ id: UUID, on tx: PostgresConnection, logger: Logger
    ) async throws -> (status: String, lastSeq: Int64, node: String?, assigned: UUID?) {
        let rows = try await tx.query(
            "SELECT status, last_seq, pinned_node, assigned_agent FROM conversations WHERE id = \(id) FOR UPDATE", logger: logger)
        for try await row in rows.decode((String, Int64, String?, UUID?).self) { return row }
        throw ParleyError(.notFound, "no such conversation")
    }

    private static func insertSystemEvent(
        _ conversationID: UUID, seq: Int64, type: String, sender: Sender, text: String, agent: AgentRef?,
        on tx: PostgresConnection, logger: Logger
    ) async throws -> ConversationEvent {
        let rows = try await tx.query(
            """
            INSERT INTO events (conversation_id, seq, type, sender, text, agent_id)
            VALUES (\(conversationID), \(seq), \(type), \(sender.rawValue), \(text), \(agent.flatMap { UUID(uuidString: $0.id) }))
            RETURNING (extract(epoch FROM created_at) * 1000)::int8
            """, logger: logger)
        var created: Int64 = 0
        for try await millis in rows.decode(Int64.self) { created = millis }
        return ConversationEvent(seq: seq, type: type, sender: sender, text: text, clientMsgID: nil, createdAtMillis: created, agent: agent)
    }

    /// Of the given conversations and cursors, those with newer events (at most 1000 asked).
    public func stale(_ cursors: [(UUID, Int64)]) async throws -> [UUID] {
        guard !cursors.isEmpty else { return [] }
        let rows = try await client.query(
            """
            SELECT c.id FROM conversations c JOIN unnest(\(cursors.map(\.0)), \(cursors.map(\.1))) AS u(id, seq) ON c.id = u.id
            WHERE c.last_seq > u.seq
            """, logger: logger)
        var stale: [UUID] = []
        for try await id in rows.decode(UUID.self) { stale.append(id) }
        return stale
    }

    /// Where an agent's typing signal goes: the pinned node and the agent's name, if the agent
    /// is the one assigned to the open conversation.
    public func typingTarget(conversationID: UUID, agentID: UUID) async throws -> (node: String, agentName: String)? {
        let rows = try await client.query(
            """
            SELECT c.pinned_node, a.name FROM conversations c JOIN agents a ON a.id = c.assigned_agent
            WHERE c.id = \(conversationID) AND c.assigned_agent = \(agentID) AND c.status = 'open' AND c.pinned_node IS NOT NULL
            """, logger: logger)
        for try await (node, name) in rows.decode((String, String).self) { return (node, name) }
        return nil
    }

    /// Tells the agent gateways that the visitor is typing.
    public func notifyVisitorTyping(conversationID: UUID) async throws {
        try await client.query(
            "SELECT pg_notify(\(Self.notifyChannel), \("t \(conversationID.uuidString.lowercased()) visitor"))", logger: logger)
    }

    /// Pins the conversation to `node` and returns the previous pin (to evict it there).
    public func repin(conversationID: UUID, to node: String) async throws -> String? {
        let rows = try await client.query(
            """
            UPDATE conversations c SET pinned_node = \(node)
            FROM (SELECT id, pinned_node FROM conversations WHERE id = \(conversationID) FOR UPDATE) old
            WHERE c.id = old.id
            RETURNING old.pinned_node
            """, logger: logger)
        var found = false
        var previous: String?
        for try await old in rows.decode(String?.self) {
            found = true
            previous = old
        }
        guard found else { throw ParleyError(.notFound, "no such conversation") }
        return previous == node ? nil : previous
    }

    /// Events after `after`. With `tail`, a cursor far behind is moved up so that at most
    /// `limit` of the newest events come back (the page's `floor` says where it starts).
    public func events(conversationID: UUID, after: Int64, limit: Int, tail: Bool = false) async throws -> EventPage {
        try await Self.events(client: client, logger: logger, conversationID: conversationID, after: after, limit: limit, tail: tail)
    }

    /// Shared by the relay and the agent gateway, which both read history.
    public static func events(
        client: PostgresClient, logger: Logger, conversationID: UUID, after: Int64, limit: Int, tail: Bool
    ) async throws -> EventPage {
        var status: String?
        var lastSeq: Int64 = 0
        for try await (s, l) in try await client.query("SELECT status, last_seq FROM conversations WHERE id = \(conversationID)", logger: logger)
            .decode((String, Int64).self)
        {
            status = s
            lastSeq = l
        }
        guard let status else { throw ParleyError(.notFound, "no such conversation") }
        if after > lastSeq { throw ParleyError(.cursorAhead, "the cursor \(after) is beyond the last event \(lastSeq)") }
        let floor = tail ? max(after, lastSeq - Int64(limit)) : after
        let rows = try await client.query(
            """
            SELECT e.seq, e.type, e.sender, e.text, e.client_msg_id, (extract(epoch FROM e.created_at) * 1000)::int8, e.agent_id, a.name
            FROM events e LEFT JOIN agents a ON a.id = e.agent_id
            WHERE e.conversation_id = \(conversationID) AND e.seq > \(floor)
            ORDER BY e.seq LIMIT \(limit + 1)
            """, logger: logger)
        var events: [ConversationEvent] = []
        for try await (seq, type, sender, text, msgID, created, agentID, agentName) in rows.decode(
            (Int64, String, String, String, String?, Int64, UUID?, String?).self)
        {
            events.append(
                ConversationEvent(
                    seq: seq, type: type, sender: Sender(rawValue: sender) ?? .system, text: text, clientMsgID: msgID,
                    createdAtMillis: created, agent: agentID.map { AgentRef(id: $0.uuidString.lowercased(), name: agentName ?? "") }))
        }
        let more = events.count > limit
        if more { events.removeLast() }
        // Events committed between the two reads are returned too; the page's last_seq covers them.
        if let newest = events.last?.seq, newest > lastSeq { lastSeq = newest }
        return EventPage(events: events, lastSeq: lastSeq, status: status, floor: floor, more: more)
    }
}
