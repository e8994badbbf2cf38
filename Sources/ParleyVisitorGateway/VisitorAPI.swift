import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import ParleyCore
import ParleyRPC
import ParleyRuntime
import Synchronization

/// The public visitor API of one visitor gateway.
struct VisitorAPI: Sendable {
    typealias Context = VisitorRequestContext

    let nodeID: String
    let hub: ConversationHub
    let relay: RelayLink
    let tokens: VisitorTokenSigner
    /// Identity verification, when the deployment has a shared secret (`identity.secret`).
    let identity: IdentityVerifier?
    let health: NodeHealth
    let secureCookies: Bool
    let clients: ClientAddress
    /// Messages per conversation, and new conversations per client address.
    let messageLimiter: RateLimiter
    let startLimiter: RateLimiter
    let connectionCaps: AddressConnectionCaps
    let rateLimited = Counter(label: "parley_gateway_rate_limited_total")
    let connected = Gauge(label: "parley_gateway_connected_visitors")
    let connections = ConnectionCounter()

    struct StartBody: Decodable {
        var name: String?
        var email: String?
        var topic: String?
        var userID: String?
        var userHash: String?
        enum CodingKeys: String, CodingKey {
            case name, email, topic
            case userID = "user_id"
            case userHash = "user_hash"
        }
    }

    struct Started: Encodable {
        var conversationID: String
        var visitorToken: String
        var nodeID: String
        var lastSeq: Int64
        enum CodingKeys: String, CodingKey {
            case conversationID = "conversation_id"
            case visitorToken = "visitor_token"
            case nodeID = "node_id"
            case lastSeq = "last_seq"
        }
    }

    struct Ack: Encodable {
        var seq: Int64
        var createdAt: String
        var duplicate: Bool
        enum CodingKeys: String, CodingKey {
            case seq, duplicate
            case createdAt = "created_at"
        }
    }

    func register(on router: Router<Context>) {
        let conversations = router.group("v1/conversations")
        conversations.post { request, context in try await start(request, context) }
        conversations.post(":id/messages") { request, context in try await send(request, context) }
        conversations.post(":id/close") { request, context in try await close(request, context) }
        conversations.post(":id/typing") { request, context in
            try await relay.typing(conversation: try authorize(request, context), agent: nil)
            return Response(status: .noContent, headers: nodeCookie())
        }
        conversations.get(":id/events") { request, context in try await longPoll(request, context) }
        conversations.get(":id/stream") { request, context in try await stream(request, context) }
        // Upgrades are taken, or refused with a JSON error, before the router (`VisitorChannel`):
        // what gets here is a plain GET.
        conversations.get(":id/ws") { request, context -> Response in
            _ = try authorize(request, context)
            throw ParleyError(.invalidRequest, "this endpoint speaks WebSocket only: send an Upgrade: websocket request (version 13)")
        }
    }

    // MARK: Endpoints

    func start(_ request: Request, _ context: Context) async throws -> Response {
        guard health.current == .ready else { throw ParleyError(.draining, "this node takes no new conversations; retry") }
        if let wait = startLimiter.take(clients.of(request, context)) {
            rateLimited.increment()
            throw ParleyError.rateLimited(retryAfter: wait, "too many new conversations from this address; retry later")
        }
        let body = try await JSONBody.decode(StartBody.self, from: request)
        var call = Parley_V1_StartConversationRequest()
        call.nodeID = nodeID
        call.visitorName = try Validate.optionalField(body.name, name: "name", maxLength: Limits.nameMaxLength)
        call.visitorEmail = try Validate.email(body.email)
        call.topic = try Validate.optionalField(body.topic, name: "topic", maxLength: Limits.topicMaxLength)
        let userID = try verifiedUser(body.userID, body.userHash)
        call.visitorUserID = userID ?? ""
        // Hold the conversation before it exists anywhere: an agent may claim it the moment it
        // is committed, and that delivery must find it here.
        let id = UUID()
        call.conversationID = id.uuidString.lowercased()
        _ = hub.started(id)
        let started: Parley_V1_StartConversationResponse
        do {
            started = try await relay.start(call)
        } catch {
            hub.evict(id)
            throw error
        }
        let token = tokens.sign(conversationID: id, userID: userID)
        var headers = nodeCookie()
        headers.append(HTTPField(name: .setCookie, value: tokenCookie(token, id)))
        return try JSONBody.response(
            Started(conversationID: started.conversationID, visitorToken: token, nodeID: nodeID, lastSeq: 0), status: .created, headers: headers)
    }

    func send(_ request: Request, _ context: Context) async throws -> Response {
        let id = try authorize(request, context)
        let body = try await JSONBody.decode(MessageBody.self, from: request)
        let ack = try await post(id, clientMsgID: body.clientMsgID, text: body.text)
        return try JSONBody.response(ack, status: ack.duplicate ? .ok : .created, headers: nodeCookie())
    }

    /// Validates, stores through the relay, and adds the stored message to the conversation's memory.
    func post(_ id: UUID, clientMsgID: String?, text: String?) async throws -> Ack {
        if let wait = messageLimiter.take(id.uuidString) {
            rateLimited.increment()
            throw ParleyError.rateLimited(retryAfter: wait, "too many messages in this conversation; retry later")
        }
        var call = Parley_V1_AppendMessageRequest()
        call.conversationID = id.uuidString.lowercased()
        call.sender = Sender.visitor.rawValue
        call.clientMsgID = try Validate.clientMsgID(clientMsgID)
        call.text = try Validate.text(text)
        call.originNodeID = nodeID
        let log = try await hub.open(id, cursor: 0)
        let stored = try await relay.append(call)
        let event = ConversationEvent(
            seq: stored.seq, type: ConversationEvent.Kind.message, sender: .visitor, text: call.text, clientMsgID: call.clientMsgID,
            createdAtMillis: stored.createdAtMs)
        if case .gap = log.apply([event]) { await hub.fill(id, log) }
        return Ack(seq: stored.seq, createdAt: Timestamp.format(stored.createdAtMs), duplicate: stored.duplicate)
    }

    func close(_ request: Request, _ context: Context) async throws -> Response {
        let id = try authorize(request, context)
        let seq = try await relay.close(conversation: id)
        if let log = hub.existing(id) { await hub.fill(id, log) }
        return try JSONBody.response(["seq": seq], headers: nodeCookie())
    }

    func longPoll(_ request: Request, _ context: Context) async throws -> Response {
        let id = try authorize(request, context)
        let after = try Validate.cursor(request.uri.queryParameters["after"].map(String.init))
        let wait = try Validate.waitSeconds(request.uri.queryParameters["wait"].map(String.init))
        let address = try holdConnection(request, context)
        defer { connectionCaps.release(address) }
        connections.opened(connected)
        defer { connections.closed(connected) }
        let page = try await read(id, after: after, wait: .seconds(wait))
        return page.response(headers: nodeCookie())
    }

    /// Reads after a cursor from memory, waiting up to `wait`; older history comes from the relay.
    func read(_ id: UUID, after: Int64, wait: Duration) async throws -> EventsPage {
        for attempt in 0..<3 {
            // A draining node keeps no reader, not even one connected before the drain began.
            guard health.current == .ready else { throw ParleyError(.draining, "this node is draining; reconnect to continue") }
            let log = try await hub.open(id, cursor: after)
            switch await log.wait(after: after, timeout: wait) {
            case .events(let events, let lastSeq, let more):
                return EventsPage(events: events, lastSeq: lastSeq, more: more)
            case .notCovered:
                let page = try await relay.history(conversation: id, after: after)
                return EventsPage(events: page.events.map(\.domain), lastSeq: page.lastSeq, more: page.more)
            case .cursorAhead(let lastSeq):
                // Memory may be stale (the conversation lived on another node meanwhile): reload once.
                if attempt == 0 {
                    hub.evict(id)
                    continue
                }
                throw ParleyError(.cursorAhead, "after=\(after) is beyond the conversation's last event \(lastSeq)")
            case .moved:
                if health.current != .ready { throw ParleyError(.draining, "this node is draining; reconnect to continue") }
                continue
            }
        }
        throw ParleyError(.unavailable, "the conversation keeps moving; retry")
    }

    func stream(_ request: Request, _ context: Context) async throws -> Response {
        let id = try authorize(request, context)
        let cursor = try Validate.cursor(
            request.headers[HTTPField.Name("Last-Event-ID")!] ?? request.uri.queryParameters["after"].map(String.init),
            name: "the cursor (Last-Event-ID or after)")
        _ = try await read(id, after: cursor, wait: .zero)  // fail fast with a JSON error before streaming
        let address = try holdConnection(request, context)
        var headers = nodeCookie()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-store"
        headers[HTTPField.Name("X-Accel-Buffering")!] = "no"
        let api = self
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                defer { api.connectionCaps.release(address) }
                api.connections.opened(api.connected)
                defer { api.connections.closed(api.connected) }
                var after = cursor
                var typing = api.hub.existing(id)?.ephemeral(after: .max).generation ?? 0
                try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
                while !Task.isCancelled {
                    let page: EventsPage
                    do {
                        page = try await api.read(id, after: after, wait: .seconds(15))
                    } catch let error as ParleyError {
                        let data = #"{"code":"\#(error.code.rawValue)"}"#
                        try await writer.write(ByteBuffer(string: "event: move\ndata: \(data)\n\n"))
                        break
                    }
                    if let signal = api.ephemeral(id, after: &typing) {
                        // Ephemeral events have no seq, so no id: a reconnect never replays them.
                        try await writer.write(ByteBuffer(string: "data: \(signal)\n\n"))
                    }
                    if page.events.isEmpty {
                        try await writer.write(ByteBuffer(string: ": keepalive\n\n"))
                        continue
                    }
                    var chunk = ""
                    for event in page.events {
                        chunk += "id: \(event.seq)\ndata: \(event.json)\n\n"
                        after = event.seq
                    }
                    try await writer.write(ByteBuffer(string: chunk))
                }
                try await writer.finish(nil)
            })
    }

    struct Inbound: Decodable {
        var type: String
        var clientMsgID: String?
        var text: String?
        enum CodingKeys: String, CodingKey {
            case type, text
            case clientMsgID = "client_msg_id"
        }
    }

    /// The JSON of an ephemeral event (typing) newer than `generation`, if any.
    func ephemeral(_ id: UUID, after generation: inout UInt64) -> String? {
        guard let log = hub.existing(id) else { return nil }
        let (latest, event) = log.ephemeral(after: generation)
        generation = latest
        return event?.json
    }

    static func quote(_ string: String) -> String {
        String(decoding: (try? JSONEncoder().encode(string)) ?? Data("\"\"".utf8), as: UTF8.self)
    }

    static func wsError(_ clientMsgID: String?, _ error: ParleyError) -> String {
        #"{"type":"error","client_msg_id":\#(quote(clientMsgID ?? "")),"error":{"code":"\#(error.code.rawValue)","message":\#(quote(error.message))}}"#
    }

    // MARK: Auth and cookies

    static let tokenCookieName = "parley_visitor_token"

    /// The conversation in the path, after checking the visitor token (header first, then cookie).
    /// A node that is not ready (draining, removed, stopping) sends every visitor elsewhere.
    func authorize(_ request: Request, _ context: Context) throws -> UUID {
        var bearer: String?
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            bearer = String(header.dropFirst(7))
        }
        let query = request.uri.queryParameters
        return try authorize(
            id: context.parameters.get("id"), token: bearer ?? request.cookies[Self.tokenCookieName]?.value,
            userID: request.headers[Self.userIDHeader] ?? query["user_id"].map(String.init),
            userHash: request.headers[Self.userHashHeader] ?? query["user_hash"].map(String.init))
    }

    /// The conversation `id` names, once `token` (and the user's identity, where it is verified)
    /// shows the caller may read and write it. Refuses everyone while the node is not ready.
    func authorize(id raw: String?, token: String?, userID: String?, userHash: String?) throws -> UUID {
        guard health.current == .ready else {
            throw ParleyError(.draining, "this node is draining; reconnect to continue on another node")
        }
        guard let raw, let id = UUID(uuidString: raw) else {
            throw ParleyError(.notFound, "no such conversation")
        }
        try tokens.verify(token ?? "", conversationID: id, userID: try verifiedUser(userID, userHash))
        return id
    }

    static let userIDHeader = HTTPField.Name("X-Parley-User-Id")!
    static let userHashHeader = HTTPField.Name("X-Parley-User-Hash")!

    /// The user id when it comes with a valid hash; nil for an anonymous visitor where that is
    /// allowed. Checked on every request, so a visitor cannot claim to be another user.
    func verifiedUser(_ userID: String?, _ userHash: String?) throws -> String? {
        let userID = userID.flatMap { $0.isEmpty ? nil : $0 }
        guard let identity else {
            if userID != nil || userHash != nil {
                throw ParleyError(.invalidRequest, "user_id and user_hash were given, but identity verification is not configured")
            }
            return nil
        }
        guard let userID else {
            if identity.required { throw ParleyError(.unauthorized, "this site requires a verified user id and user hash") }
            return nil
        }
        try identity.verify(userID: userID, hash: userHash ?? "")
        return userID
    }

    /// Takes one of the client address's long-lived connection slots, or refuses with 429.
    func holdConnection(_ request: Request, _ context: Context) throws -> String {
        let address = clients.of(request, context)
        guard connectionCaps.acquire(address) else {
            rateLimited.increment()
            throw ParleyError.rateLimited(retryAfter: .seconds(5), "too many open connections from this address")
        }
        return address
    }

    func nodeCookie() -> HTTPFields {
        [.setCookie: "parley_node=\(nodeID); Path=/; HttpOnly; SameSite=Lax\(secureCookies ? "; Secure" : "")"]
    }

    func tokenCookie(_ token: String, _ id: UUID) -> String {
        "\(Self.tokenCookieName)=\(token); Path=/v1/conversations/\(id.uuidString.lowercased()); HttpOnly; SameSite=Strict\(secureCookies ? "; Secure" : "")"
    }
}

/// Counts open visitor connections for the gauge and the registry's view.
final class ConnectionCounter: Sendable {
    private let count = Mutex(0)
    var current: Int { count.withLock { $0 } }
    func opened(_ gauge: Gauge) { gauge.record(count.withLock { $0 += 1; return $0 }) }
    func closed(_ gauge: Gauge) { gauge.record(count.withLock { $0 -= 1; return $0 }) }
}
