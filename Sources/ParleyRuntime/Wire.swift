import HTTPTypes
import Hummingbird
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

    /// The page's JSON, written as `ConversationEvent.json` writes events: what every long-poll
    /// and read answers.
    public var json: String {
        "{\"events\":[" + events.map(\.json).joined(separator: ",") + "],\"last_seq\":\(lastSeq),\"more\":\(more)}"
    }

    /// The page as a `200` JSON response.
    public func response(headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: json)))
    }
}
