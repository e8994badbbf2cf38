import Foundation

/// Who produced an event.
public enum Sender: String, Sendable, Codable, Hashable {
    case visitor, agent, system
}

/// The agent attached to an event, as clients see it.
public struct AgentRef: Sendable, Hashable, Codable {
    public var id: String
    public var name: String
    public init(id: String, name: String) {
        self.id = id
        self.name = name
    }
}

/// One event of a conversation, as every reader sees it.
///
/// Persisted events (messages, an agent joining, closing) carry the conversation's sequence
/// number, assigned by the relay in the transaction that stores them; ephemeral events carry 0.
public struct ConversationEvent: Sendable, Hashable, Codable {
    /// The kinds of persisted events.
    public enum Kind {
        public static let message = "message"
        public static let agentJoined = "agent_joined"
        public static let closed = "closed"
        public static let typing = "typing"
    }

    public var seq: Int64
    public var type: String
    public var sender: Sender
    public var text: String
    public var clientMsgID: String?
    /// Commit time in milliseconds since the Unix epoch.
    public var createdAtMillis: Int64
    public var agent: AgentRef?

    public init(
        seq: Int64, type: String, sender: Sender, text: String, clientMsgID: String?,
        createdAtMillis: Int64, agent: AgentRef? = nil
    ) {
        self.seq = seq
        self.type = type
        self.sender = sender
        self.text = text
        self.clientMsgID = clientMsgID
        self.createdAtMillis = createdAtMillis
        self.agent = agent
    }

    enum CodingKeys: String, CodingKey {
        case seq, type, sender, text
        case clientMsgID = "client_msg_id"
        case createdAt = "created_at"
        case agent
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        seq = try c.decode(Int64.self, forKey: .seq)
        type = try c.decode(String.self, forKey: .type)
        sender = try c.decode(Sender.self, forKey: .sender)
        text = try c.decode(String.self, forKey: .text)
        clientMsgID = try c.decodeIfPresent(String.self, forKey: .clientMsgID)
        let stamp = try c.decode(String.self, forKey: .createdAt)
        guard let millis = Timestamp.parse(stamp) else {
            throw DecodingError.dataCorruptedError(forKey: .createdAt, in: c, debugDescription: "not an RFC 3339 time")
        }
        createdAtMillis = millis
        agent = try c.decodeIfPresent(AgentRef.self, forKey: .agent)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(seq, forKey: .seq)
        try c.encode(type, forKey: .type)
        try c.encode(sender, forKey: .sender)
        try c.encode(text, forKey: .text)
        try c.encode(clientMsgID, forKey: .clientMsgID)
        try c.encode(Timestamp.format(createdAtMillis), forKey: .createdAt)
        try c.encodeIfPresent(agent, forKey: .agent)
    }
}

/// RFC 3339 timestamps with millisecond precision, always in UTC.
public enum Timestamp {
    /// Milliseconds since the Unix epoch, now.
    public static func nowMillis() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1000).rounded())
    }

    public static func format(_ millis: Int64) -> String {
        Date(timeIntervalSince1970: Double(millis) / 1000)
            .formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    public static func parse(_ string: String) -> Int64? {
        let strategies: [Date.ISO8601FormatStyle] = [
            .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted),
            .iso8601,
        ]
        for strategy in strategies {
            if let date = try? Date(string, strategy: strategy) {
                return Int64((date.timeIntervalSince1970 * 1000).rounded())
            }
        }
        return nil
    }
}

extension Duration {
    /// The duration in whole nanoseconds, for metrics.
    public var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}
