/// The limits every input of Parley is checked against, in one place.
public enum Limits {
    /// `client_msg_id`: 1–64 characters.
    public static let clientMsgIDLength = 1...64
    /// Message text: 1–4000 characters.
    public static let textLength = 1...4000
    /// A bound on bytes too, since 4000 characters of combining marks can be arbitrarily large.
    public static let textMaxBytes = 16_000
    public static let nameMaxLength = 100
    public static let emailMaxLength = 254
    public static let topicMaxLength = 200
    /// The customer's own user id in identity verification.
    public static let userIDMaxLength = 128
    /// Largest JSON request body any endpoint accepts.
    public static let requestBodyMaxBytes = 32 * 1024
    /// Long-poll waits: default and maximum, in seconds.
    public static let defaultWaitSeconds = 25
    public static let maxWaitSeconds = 60
    /// Events returned by one read at most; the reply says when more follow.
    public static let maxEventsPerRead = 500
    /// Default rate limits (settings `rate.messages.*`, `rate.starts.*`): a visitor's messages,
    /// 5 a second in bursts of 20 per conversation; new conversations, one a second in bursts
    /// of 60 per client address (a whole office may share one).
    public static let messagesPerSecond = 5.0
    public static let messagesBurst = 20
    public static let startsPerSecond = 1.0
    public static let startsBurst = 60
}

/// Checks of client input; each throws a `ParleyError` with code `invalid_request` naming the field.
public enum Validate {
    public static func clientMsgID(_ value: String?) throws -> String {
        guard let value else { throw ParleyError(.invalidRequest, "client_msg_id is required") }
        guard Limits.clientMsgIDLength.contains(value.count) else {
            throw ParleyError(.invalidRequest, "client_msg_id must be 1 to 64 characters")
        }
        guard value.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F }) else {
            throw ParleyError(.invalidRequest, "client_msg_id must not contain spaces or control characters")
        }
        return value
    }

    public static func text(_ value: String?) throws -> String {
        guard let value else { throw ParleyError(.invalidRequest, "text is required") }
        guard Limits.textLength.contains(value.count), value.utf8.count <= Limits.textMaxBytes else {
            throw ParleyError(.invalidRequest, "text must be 1 to 4000 characters")
        }
        guard !value.allSatisfy(\.isWhitespace) else {
            throw ParleyError(.invalidRequest, "text must not be blank")
        }
        guard !value.unicodeScalars.contains(where: { $0.value == 0 }) else {
            throw ParleyError(.invalidRequest, "text must not contain NUL characters")
        }
        return value
    }

    /// An optional free-text field (name, topic): length-capped, no control characters, kept verbatim.
    public static func optionalField(_ value: String?, name: String, maxLength: Int) throws -> String {
        guard let value else { return "" }
        guard value.count <= maxLength else {
            throw ParleyError(.invalidRequest, "\(name) must be at most \(maxLength) characters")
        }
        guard !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw ParleyError(.invalidRequest, "\(name) must not contain control characters")
        }
        return value
    }

    public static func email(_ value: String?) throws -> String {
        let value = try optionalField(value, name: "email", maxLength: Limits.emailMaxLength)
        if !value.isEmpty {
            let parts = value.split(separator: "@", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, parts[1].contains("."), !value.contains(" ") else {
                throw ParleyError(.invalidRequest, "email is not an email address")
            }
        }
        return value
    }

    /// A cursor: a non-negative sequence number.
    public static func cursor(_ value: String?, name: String = "after") throws -> Int64 {
        guard let value, !value.isEmpty else { return 0 }
        guard let cursor = Int64(value), cursor >= 0 else {
            throw ParleyError(.invalidRequest, "\(name) must be a non-negative integer")
        }
        return cursor
    }

    /// A long-poll wait in seconds, defaulting to 25 and capped at 60.
    public static func waitSeconds(_ value: String?) throws -> Int {
        guard let value, !value.isEmpty else { return Limits.defaultWaitSeconds }
        guard let seconds = Int(value), (0...Limits.maxWaitSeconds).contains(seconds) else {
            throw ParleyError(.invalidRequest, "wait must be an integer from 0 to \(Limits.maxWaitSeconds)")
        }
        return seconds
    }
}

/// A message as both the visitor and the agent API take it.
public struct MessageBody: Decodable, Sendable {
    public var clientMsgID: String?
    public var text: String?

    enum CodingKeys: String, CodingKey {
        case clientMsgID = "client_msg_id"
        case text
    }
}

extension Sequence<UInt8> {
    /// Lowercase hex, two digits a byte. `String(format: "%02x")` per byte was a twentieth of the
    /// agent gateway's CPU under load, in the session lookup every request makes.
    public var lowercaseHex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(underestimatedCount * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
