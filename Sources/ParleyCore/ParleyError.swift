/// An error a client of Parley can act on: an opaque, growable code plus a message safe to show.
///
/// The HTTP status and the gRPC status are derived from the code at the edges only.
public struct ParleyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable machine-readable string (`"invalid_request"`, ...).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        private init(_ rawValue: String) { self.rawValue = rawValue }
        /// Recreates a code received over the wire; unknown codes stay distinct values.
        public init(wireValue: String) { self.rawValue = wireValue }
        public var description: String { rawValue }

        public static let invalidRequest = Code("invalid_request")
        public static let unauthorized = Code("unauthorized")
        public static let forbidden = Code("forbidden")
        public static let notFound = Code("not_found")
        public static let alreadyClaimed = Code("already_claimed")
        public static let conversationClosed = Code("conversation_closed")
        public static let notAssigned = Code("not_assigned")
        public static let cursorAhead = Code("cursor_ahead")
        public static let payloadTooLarge = Code("payload_too_large")
        public static let rateLimited = Code("rate_limited")
        public static let unavailable = Code("unavailable")
        public static let draining = Code("draining")
        public static let internalError = Code("internal")
    }

    public var code: Code
    public var message: String
    /// For `rate_limited`: when to try again (the HTTP `Retry-After` header).
    public var retryAfterSeconds: Int?

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }

    /// The HTTP status an edge answers with for this error.
    public var httpStatus: Int {
        switch code {
        case .invalidRequest, .cursorAhead: 400
        case .unauthorized: 401
        case .forbidden, .notAssigned: 403
        case .notFound: 404
        case .alreadyClaimed, .conversationClosed: 409
        case .payloadTooLarge: 413
        case .rateLimited: 429
        case .unavailable, .draining: 503
        default: 500
        }
    }
}
