import ParleyCore

/// A page of a conversation's events, as both APIs return it: `more` says another page follows.
public struct EventsPage: Encodable, Sendable {
    public var events: [ConversationEvent]
    public var lastSeq: Int64
    public var more: Bool

    public init(events: [ConversationEvent], lastSeq: Int64, more: Bool) {
        self.events = events
        self.lastSeq = lastSeq
        self.more = more
    }

    enum CodingKeys: String, CodingKey {
        case events, more
        case lastSeq = "last_seq"
    }
}
