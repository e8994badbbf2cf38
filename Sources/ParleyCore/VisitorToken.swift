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
    public static func encode(_ data: Data) -> String {
        data.base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Decodes canonical base64url, or returns nil.
    public static func decode(_ string: String) -> Data? {
        guard string.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else { return nil }
        var s = string.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        // Only the canonical encoding: the unused low bits of the last character must be zero,
        // so that one value has one spelling (a token cannot be altered and still verify).
        guard let data = Data(base64Encoded: s), encode(data) == string else { return nil }
        return data
    }

    /// `count` random bytes, base64url-encoded: session tokens and generated keys.
    public static func random(bytes count: Int = 32) -> String {
        var generator = SystemRandomNumberGenerator()
        return encode(Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }))
    }
}
