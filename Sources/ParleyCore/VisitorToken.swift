import Crypto
import Foundation

/// Signs and verifies visitor tokens: HMAC-SHA256 over the conversation id and expiry,
/// with a key id so keys can rotate without logging visitors out.
///
/// Format: `pv1.<kid>.<conversation-uuid>.<expires-unix-seconds>.<base64url-mac>`.
/// Any visitor gateway holding the keyring verifies a token without asking anyone, which is
/// what lets a visitor resume on another node.
public struct VisitorTokenSigner: Sendable {
    public let currentKeyID: String
    private let keys: [String: [UInt8]]
    public let lifetimeSeconds: Int64

    /// - Parameters:
    ///   - keys: every key still accepted, by key id; each at least 32 bytes.
    ///   - currentKeyID: the key new tokens are signed with.
    public init(keys: [String: [UInt8]], currentKeyID: String, lifetimeSeconds: Int64 = 7 * 24 * 3600) throws {
        guard keys[currentKeyID] != nil else {
            throw ParleyError(.invalidRequest, "the current visitor token key id \(currentKeyID) has no key")
        }
        for (kid, key) in keys {
            guard key.count >= 32 else { throw ParleyError(.invalidRequest, "visitor token key \(kid) is shorter than 32 bytes") }
            guard !kid.isEmpty, !kid.contains(".") else { throw ParleyError(.invalidRequest, "a key id must be non-empty and contain no dot") }
        }
        self.keys = keys
        self.currentKeyID = currentKeyID
        self.lifetimeSeconds = lifetimeSeconds
    }

    /// Parses `kid:base64key,kid2:base64key` (the `PARLEY_VISITOR_TOKEN_KEYS` format).
    public static func parseKeys(_ spec: String) throws -> [String: [UInt8]] {
        var keys: [String: [UInt8]] = [:]
        for entry in spec.split(separator: ",") {
            let parts = entry.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let data = Data(base64Encoded: String(parts[1])) else {
                throw ParleyError(.invalidRequest, "visitor token keys must look like kid:base64key[,kid:base64key]")
            }
            keys[String(parts[0])] = Array(data)
        }
        return keys
    }

    /// A token for one conversation, valid for `lifetimeSeconds` from `now`.
    ///
    /// With a verified `userID` the MAC covers it too (the token does not carry it): the token
    /// then verifies only when the same user id is presented again, so a token taken from one
    /// customer's user is useless without that user's id and hash.
    public func sign(conversationID: UUID, userID: String? = nil, now: Date = Date()) -> String {
        let expires = Int64(now.timeIntervalSince1970) + lifetimeSeconds
        let body = "pv1.\(currentKeyID).\(conversationID.uuidString.lowercased()).\(expires)"
        let mac = HMAC<SHA256>.authenticationCode(for: Self.signed(body, userID), using: SymmetricKey(data: keys[currentKeyID]!))
        return body + "." + Base64URL.encode(Data(mac))
    }

    private static func signed(_ body: String, _ userID: String?) -> Data {
        // A newline cannot occur in the body, so the two parts cannot be re-split differently.
        Data((userID.map { body + "\n" + $0 } ?? body).utf8)
    }

    /// Checks a token for `conversationID`; throws `unauthorized` for anything else.
    ///
    /// The MAC comparison is constant-time; the error never says which part failed.
    public func verify(_ token: String, conversationID: UUID, userID: String? = nil, now: Date = Date()) throws {
        let refused = ParleyError(.unauthorized, "the visitor token is missing, invalid or expired")
        guard token.utf8.count <= 256 else { throw refused }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "pv1", let key = keys[String(parts[1])],
            let expires = Int64(parts[3]), let mac = Base64URL.decode(String(parts[4]))
        else { throw refused }
        let body = parts[0..<4].joined(separator: ".")
        guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: Self.signed(body, userID), using: SymmetricKey(data: key)) else {
            throw refused
        }
        guard UUID(uuidString: String(parts[2])) == conversationID, expires > Int64(now.timeIntervalSince1970) else { throw refused }
    }
}

/// Identity verification as Intercom does it: the customer's backend computes
/// `hex(HMAC-SHA256(secret, user_id))` for its logged-in user and the page passes both to the
/// chat; Parley checks the pair on every request, so a visitor cannot claim to be another user.
public struct IdentityVerifier: Sendable {
    private let secret: [UInt8]
    /// When true, every conversation must come with a verified user id.
    public let required: Bool

    /// - Parameter secret: the shared secret, at least 32 bytes.
    public init(secret: [UInt8], required: Bool) throws {
        guard secret.count >= 32 else { throw ParleyError(.invalidRequest, "the identity verification secret is shorter than 32 bytes") }
        self.secret = secret
        self.required = required
    }

    /// What the customer's backend computes: the lowercase hex HMAC of the user id.
    public func hash(userID: String) -> String {
        HMAC<SHA256>.authenticationCode(for: Data(userID.utf8), using: SymmetricKey(data: secret)).lowercaseHex
    }

    /// Checks a user id and its hash in constant time; throws `unauthorized` otherwise.
    public func verify(userID: String, hash: String) throws {
        let refused = ParleyError(.unauthorized, "the user id and user hash do not match")
        guard !userID.isEmpty, userID.utf8.count <= Limits.userIDMaxLength, hash.utf8.count == 64,
            let mac = Self.hexBytes(hash)
        else { throw refused }
        guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: Data(userID.utf8), using: SymmetricKey(data: secret)) else { throw refused }
    }

    static func hexBytes(_ hex: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next() {
            guard let low = iterator.next(), let h = nibble(high), let l = nibble(low) else { return nil }
            bytes.append(h << 4 | l)
        }
        return bytes
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// Base64url without padding (RFC 4648 §5).
public enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    /// Each ASCII byte's 6-bit value, or 0xff for a byte outside the alphabet.
    private static let values: [UInt8] = {
        var values = [UInt8](repeating: 0xff, count: 256)
        for (value, byte) in alphabet.enumerated() { values[Int(byte)] = UInt8(value) }
        return values
    }()

    // Byte by byte, not base64 and string replacements: every visitor request verifies a token,
    // and the Foundation way was a tenth of a busy gateway's CPU.
    public static func encode<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = bytes.startIndex
        while index != bytes.endIndex {
            let first = UInt32(bytes[index])
            index = bytes.index(after: index)
            let second = index == bytes.endIndex ? nil : UInt32(bytes[index])
            if second != nil { index = bytes.index(after: index) }
            let third = second == nil || index == bytes.endIndex ? nil : UInt32(bytes[index])
            if third != nil { index = bytes.index(after: index) }
            let group = first << 16 | (second ?? 0) << 8 | (third ?? 0)
            out.append(alphabet[Int(group >> 18 & 63)])
            out.append(alphabet[Int(group >> 12 & 63)])
            if second != nil { out.append(alphabet[Int(group >> 6 & 63)]) }
            if third != nil { out.append(alphabet[Int(group & 63)]) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes canonical base64url (no padding), or returns nil.
    public static func decode(_ string: String) -> Data? {
        let chars = Array(string.utf8)
        guard chars.count % 4 != 1 else { return nil }
        var out = Data()
        out.reserveCapacity(chars.count * 3 / 4)
        var index = 0
        while index < chars.count {
            let count = min(4, chars.count - index)
            var group: UInt32 = 0
            for offset in 0..<4 {
                var value: UInt8 = 0
                if offset < count {
                    value = values[Int(chars[index + offset])]
                    guard value != 0xff else { return nil }
                }
                group = group << 6 | UInt32(value)
            }
            // Only the canonical encoding: the unused low bits of the last character must be
            // zero, so that one value has one spelling (a token cannot be altered and still verify).
            if count == 2, group & 0xffff != 0 { return nil }
            if count == 3, group & 0xff != 0 { return nil }
            out.append(UInt8(group >> 16 & 0xff))
            if count > 2 { out.append(UInt8(group >> 8 & 0xff)) }
            if count > 3 { out.append(UInt8(group & 0xff)) }
            index += count
        }
        return out
    }

    /// `count` random bytes, base64url-encoded: session tokens and generated keys.
    public static func random(bytes count: Int = 32) -> String {
        var generator = SystemRandomNumberGenerator()
        return encode(Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }))
    }
}
