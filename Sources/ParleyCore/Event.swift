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
        /// A supervisor moved the conversation to another agent (`agent` is the new one).
        public static let transferred = "transferred"
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

/// RFC 3339 timestamps with millisecond precision, always in UTC, computed from integer
/// milliseconds (through `Date`'s floating point, .123 can come out as .122).
public enum Timestamp {
    /// Milliseconds since the Unix epoch, now.
    public static func nowMillis() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1000).rounded())
    }

    /// `2025-11-22T08:26:40.123Z`.
    public static func format(_ millis: Int64) -> String {
        let (days, dayMillis) = millis.quotientAndRemainder(dividingBy: 86_400_000)
        let (day, ms) = dayMillis < 0 ? (days - 1, dayMillis + 86_400_000) : (days, dayMillis)
        let (year, month, dayOfMonth) = civil(fromDays: day)
        func pad(_ value: Int64, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(dayOfMonth, 2))T\(pad(ms / 3_600_000, 2)):\(pad(ms / 60_000 % 60, 2)):"
            + "\(pad(ms / 1000 % 60, 2)).\(pad(ms % 1000, 3))Z"
    }

    /// Parses what `format` writes, and other RFC 3339 times (rounded to milliseconds).
    public static func parse(_ string: String) -> Int64? {
        let utf8 = Array(string.utf8)
        if utf8.count == 24, utf8[4] == 45, utf8[7] == 45, utf8[10] == 84, utf8[13] == 58, utf8[16] == 58, utf8[19] == 46, utf8[23] == 90 {
            func number(_ range: Range<Int>) -> Int64? { Int64(String(decoding: utf8[range], as: UTF8.self)) }
            if let y = number(0..<4), let mo = number(5..<7), let d = number(8..<10), let h = number(11..<13), let mi = number(14..<16),
                let s = number(17..<19), let ms = number(20..<23)
            {
                return days(fromCivil: y, mo, d) * 86_400_000 + ((h * 60 + mi) * 60 + s) * 1000 + ms
            }
        }
        for strategy in [
            Date.ISO8601FormatStyle.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .colon), .iso8601,
        ] {
            if let date = try? Date(string, strategy: strategy) {
                return Int64((date.timeIntervalSince1970 * 1000).rounded())
            }
        }
        return nil
    }

    // Howard Hinnant's days-from-civil algorithms: exact integer calendar arithmetic.
    static func civil(fromDays z: Int64) -> (Int64, Int64, Int64) {
        let z = z + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }

    static func days(fromCivil y: Int64, _ m: Int64, _ d: Int64) -> Int64 {
        let y = m <= 2 ? y - 1 : y
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}

extension Duration {
    /// The duration in whole nanoseconds, for metrics.
    public var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}

extension ConversationEvent {
    /// The event's JSON as clients get it: the keys and values `JSONEncoder` writes for it, with
    /// the encoder's escapes (`.withoutEscapingSlashes`), without the encoder's machinery, which
    /// was the largest part of a visitor gateway's own CPU per delivered event.
    /// `ConversationEventJSONTests` holds the two together.
    public var json: String {
        var out = "{\"seq\":\(seq),\"type\":"
        out.reserveCapacity(96 + text.utf8.count)
        JSONText.append(type, to: &out)
        out += ",\"sender\":"
        JSONText.append(sender.rawValue, to: &out)
        out += ",\"text\":"
        JSONText.append(text, to: &out)
        out += ",\"client_msg_id\":"
        if let clientMsgID { JSONText.append(clientMsgID, to: &out) } else { out += "null" }
        out += ",\"created_at\":\""
        out += Timestamp.format(createdAtMillis)
        out += "\""
        if let agent {
            out += ",\"agent\":{\"id\":"
            JSONText.append(agent.id, to: &out)
            out += ",\"name\":"
            JSONText.append(agent.name, to: &out)
            out += "}"
        }
        out += "}"
        return out
    }
}

/// JSON string literals: quotes, backslashes and control characters escaped, as `JSONEncoder`
/// escapes them with `.withoutEscapingSlashes`; everything else as it is.
public enum JSONText {
    /// Appends `string` to `out` as a quoted JSON string.
    public static func append(_ string: String, to out: inout String) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(string.utf8.count + 2)
        bytes.append(0x22)
        for byte in string.utf8 {
            switch byte {
            case 0x22, 0x5C: bytes += [0x5C, byte]
            case 0x08: bytes += [0x5C, 0x62]
            case 0x0C: bytes += [0x5C, 0x66]
            case 0x0A: bytes += [0x5C, 0x6E]
            case 0x0D: bytes += [0x5C, 0x72]
            case 0x09: bytes += [0x5C, 0x74]
            case 0x00..<0x20: bytes += [0x5C, 0x75, 0x30, 0x30, byte < 0x10 ? 0x30 : 0x31, hex[Int(byte & 0x0F)]]
            default: bytes.append(byte)
            }
        }
        bytes.append(0x22)
        out += String(decoding: bytes, as: UTF8.self)
    }

    /// `string` as a quoted JSON string.
    public static func quoted(_ string: String) -> String {
        var out = ""
        append(string, to: &out)
        return out
    }

    private static let hex = Array("0123456789abcdef".utf8)
}
