import AsyncHTTPClient
import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// How a benchmark visitor receives.
public enum VisitorTransport: String, Sendable, Codable, CaseIterable {
    case webSocket = "ws"
    case longPoll = "longpoll"
    case sse
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The JSON shapes the benchmark reads; every field optional, so one type decodes them all.
struct WireFrame: Decodable {
    var type: String?
    var seq: Int64?
    var text: String?
    var sender: String?
    var clientMsgID: String?
    var conversationID: String?
    var visitorToken: String?
    var nodeID: String?
    var token: String?
    var code: String?
    var event: WireEvent?
    var events: [WireEvent]?
    var lastSeq: Int64?
    var error: WireError?
    enum CodingKeys: String, CodingKey {
        case type, seq, text, sender, event, events, token, code, error
        case clientMsgID = "client_msg_id"
        case conversationID = "conversation_id"
        case visitorToken = "visitor_token"
        case nodeID = "node_id"
        case lastSeq = "last_seq"
    }
}

struct WireError: Decodable {
    var code: String?
}

struct WireEvent: Decodable {
    var seq: Int64
    var type: String
    var sender: String?
    var text: String?
    var clientMsgID: String?
    enum CodingKeys: String, CodingKey {
        case seq, type, sender, text
        case clientMsgID = "client_msg_id"
    }
}

/// The HTTP side shared by every benchmark client.
public struct HTTP: Sendable {
    public let client: HTTPClient

    public init(connectionsPerHost: Int) {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(120), concurrentHTTP1ConnectionsPerHostSoftLimit: connectionsPerHost)
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(90))
        configuration.httpVersion = .http1Only
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    func call(
        _ method: HTTPMethod, _ url: String, json: String? = nil, headers: [(String, String)] = [], timeout: TimeAmount = .seconds(30)
    ) async throws -> (status: Int, body: ByteBuffer, headers: HTTPHeaders) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await client.execute(request, timeout: timeout)
        let body = try await response.body.collect(upTo: 16 << 20)
        return (Int(response.status.code), body, response.headers)
    }

    /// POSTs a message until it is acknowledged (200/201), refused (a 4xx not in `retrying`), or
    /// `deadline` passes; retries keep the same `client_msg_id`, as a real client's do.
    func sendMessage(
        _ url: String, body: String, headers: () -> [(String, String)], retrying: Set<Int>, clientMsgID: String,
        tracker: DeliveryTracker, deadline: ContinuousClock.Instant, onResponse: (HTTPHeaders) -> Void = { _ in }
    ) async {
        var attempt = 0
        while ContinuousClock.now < deadline {
            if let response = try? await call(.POST, url, json: body, headers: headers()) {
                onResponse(response.headers)
                if response.status == 200 || response.status == 201 {
                    tracker.acked(clientMsgID)
                    return
                }
                if (400..<500).contains(response.status) && !retrying.contains(response.status) {
                    tracker.sendFailed()
                    return
                }
            }
            attempt += 1
            try? await Task.sleep(for: .milliseconds(min(500, 20 * attempt)))
        }
        tracker.sendFailed()
    }

    static func decode(_ body: ByteBuffer) -> WireFrame? {
        try? JSONDecoder().decode(WireFrame.self, from: Data(buffer: body))
    }

    public func shutdown() async throws { try await client.shutdown() }
}

func quoteJSON(_ string: String) -> String {
    String(decoding: (try? JSONEncoder().encode(string)) ?? Data("\"\"".utf8), as: UTF8.self)
}

/// Frames sent over a WebSocket and not answered yet, and the socket's writer while it is open:
/// what a reconnect sends again.
struct Unanswered {
    var writer: WebSocketOutboundWriter?
    var pending: [String: String] = [:]
    var connected = false

    /// The socket is open: the frames to send again on it.
    mutating func opened(_ outbound: WebSocketOutboundWriter) -> [String] {
        connected = true
        writer = outbound
        return Array(pending.values)
    }

    mutating func closed() {
        connected = false
        writer = nil
    }
}

/// One visitor: started through the load balancer (or straight at a gateway), pinned by the
/// `parley_node` cookie as a browser is, receiving over one transport and resuming from its
/// cursor on any node after a failure.
public final class BenchVisitor: Sendable {
    public let conversation: String
    let token: String
    let base: String
    let transport: VisitorTransport
    let tracker: DeliveryTracker
    let http: HTTP
    private let state: Mutex<State>

    struct State {
        var node: String
        var cursor: Int64 = 0
        /// Messages sent over the WebSocket and not acknowledged yet, resent after a reconnect;
        /// `connected` is set by every transport.
        var socket = Unanswered()
        var firstReceiveAfter: (UInt64, UInt64?)? = nil
    }

    public var node: String { state.withLock { $0.node } }
    public var connected: Bool { state.withLock { $0.socket.connected } }

    /// Starts a conversation at `base` (the load balancer or a gateway).
    public static func start(base: String, transport: VisitorTransport, tracker: DeliveryTracker, http: HTTP) async throws -> BenchVisitor {
        for attempt in 0..<20 {
            let response = try await http.call(.POST, "\(base)/v1/conversations", json: "{}")
            if response.status == 201, let frame = HTTP.decode(response.body), let id = frame.conversationID, let token = frame.visitorToken {
                return BenchVisitor(
                    conversation: id, token: token, node: frame.nodeID ?? "", base: base, transport: transport, tracker: tracker, http: http)
            }
            if response.status == 429 || response.status >= 500 {
                try await Task.sleep(for: .milliseconds(50 * (attempt + 1)))
                continue
            }
            throw BenchError("starting a conversation: HTTP \(response.status) \(String(buffer: response.body))")
        }
        throw BenchError("starting a conversation kept failing")
    }

    init(conversation: String, token: String, node: String, base: String, transport: VisitorTransport, tracker: DeliveryTracker, http: HTTP) {
        self.conversation = conversation
        self.token = token
        self.base = base
        self.transport = transport
        self.tracker = tracker
        self.http = http
        state = Mutex(State(node: node))
    }

    var headers: [(String, String)] {
        [("Authorization", "Bearer \(token)"), ("Cookie", "parley_node=\(state.withLock { $0.node })")]
    }

    /// After a failover: remember when this visitor's node was killed, to time its recovery.
    public func watchRecovery(killedAt: UInt64) { state.withLock { $0.firstReceiveAfter = (killedAt, nil) } }

    /// Nanoseconds from the kill to the first event received after it, once it happened.
    public var recoveryNanos: UInt64? {
        state.withLock { s in s.firstReceiveAfter.flatMap { kill, first in first.map { $0 - kill } } }
    }

    func deliver(_ event: WireEvent, at now: UInt64) {
        state.withLock { s in
            s.cursor = max(s.cursor, event.seq)
            if let (kill, first) = s.firstReceiveAfter, first == nil, now > kill { s.firstReceiveAfter = (kill, now) }
        }
        tracker.received(conversation: conversation, reader: .visitor, seq: event.seq, clientMsgID: event.clientMsgID, text: event.text ?? "", at: now)
    }

    func noteCookie(_ headers: HTTPHeaders) {
        for value in headers["set-cookie"] where value.hasPrefix("parley_node=") {
            let node = value.dropFirst(12).prefix { $0 != ";" }
            state.withLock { $0.node = String(node) }
        }
    }

    // MARK: Receiving

    /// Receives until cancelled, reconnecting after any failure.
    public func receive(logger: Logger) async {
        var failures = 0
        while !Task.isCancelled {
            do {
                switch transport {
                case .webSocket: try await receiveWebSocket(logger: logger)
                case .longPoll: try await receiveLongPoll()
                case .sse: try await receiveSSE()
                }
                failures = 0
            } catch {
                failures += 1
            }
            state.withLock { $0.socket.closed() }
            if Task.isCancelled { return }
            try? await Task.sleep(for: .milliseconds(min(500, 20 * failures)))
        }
    }

    private func receiveLongPoll() async throws {
        while !Task.isCancelled {
            let cursor = state.withLock { $0.cursor }
            let response = try await http.call(.GET, "\(base)/v1/conversations/\(conversation)/events?after=\(cursor)&wait=25", headers: headers)
            noteCookie(response.headers)
            guard response.status == 200, let page = HTTP.decode(response.body) else { throw BenchError("poll: HTTP \(response.status)") }
            state.withLock { $0.socket.connected = true }
            let now = wallNanos()
            for event in page.events ?? [] { deliver(event, at: now) }
        }
    }

    private func receiveSSE() async throws {
        let cursor = state.withLock { $0.cursor }
        var request = HTTPClientRequest(url: "\(base)/v1/conversations/\(conversation)/stream?after=\(cursor)")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        let response = try await http.client.execute(request, timeout: .hours(1))
        noteCookie(response.headers)
        guard response.status == .ok else { throw BenchError("stream: HTTP \(response.status.code)") }
        state.withLock { $0.socket.connected = true }
        var pending = ""
        for try await chunk in response.body {
            pending += String(buffer: chunk)
            while let end = pending.range(of: "\n\n") {
                let block = pending[..<end.lowerBound]
                pending.removeSubrange(..<end.upperBound)
                for line in block.split(separator: "\n") where line.hasPrefix("data: ") {
                    guard let event = try? JSONDecoder().decode(WireEvent.self, from: Data(line.dropFirst(6).utf8)) else { continue }
                    deliver(event, at: wallNanos())
                }
                if block.hasPrefix("event: move") { return }
            }
        }
    }

    private func receiveWebSocket(logger: Logger) async throws {
        let cursor = state.withLock { $0.cursor }
        var fields = HTTPFields()
        for (name, value) in headers { fields[HTTPField.Name(name)!] = value }
        let url = base.replacingOccurrences(of: "http://", with: "ws://") + "/v1/conversations/\(conversation)/ws?after=\(cursor)"
        try await WebSocketClient.connect(
            url: url, configuration: .init(maxFrameSize: 1 << 16, additionalHeaders: fields), logger: logger
        ) { inbound, outbound, _ in
            for frame in self.state.withLock({ $0.socket.opened(outbound) }) { try await outbound.write(.text(frame)) }
            for try await message in inbound.messages(maxSize: 1 << 20) {
                guard case .text(let text) = message else { continue }
                let now = wallNanos()
                guard let frame = try? JSONDecoder().decode(WireFrame.self, from: Data(text.utf8)) else { continue }
                switch frame.type {
                case "ack":
                    if let id = frame.clientMsgID {
                        self.state.withLock { _ = $0.socket.pending.removeValue(forKey: id) }
                        self.tracker.acked(id)
                    }
                case "error":
                    if let id = frame.clientMsgID, !id.isEmpty {
                        self.state.withLock { _ = $0.socket.pending.removeValue(forKey: id) }
                        self.tracker.sendFailed()
                    }
                case "move":
                    return
                default:
                    if let seq = frame.seq, let type = frame.type {
                        self.deliver(WireEvent(seq: seq, type: type, sender: frame.sender, text: frame.text, clientMsgID: frame.clientMsgID), at: now)
                    }
                }
            }
        }
    }

    // MARK: Sending

    /// Sends one message: over the WebSocket when that is the transport (queued while it
    /// reconnects), else by POST, retried with the same id until acknowledged or `deadline`.
    public func send(text: String, clientMsgID: String, deadline: ContinuousClock.Instant) async {
        if transport == .webSocket {
            let frame = #"{"type":"message","client_msg_id":"\#(clientMsgID)","text":\#(quoteJSON(text))}"#
            let writer: WebSocketOutboundWriter? = state.withLock { s in
                s.socket.pending[clientMsgID] = frame
                return s.socket.writer
            }
            // Not connected: the frame goes out with the others when the socket is back.
            try? await writer?.write(.text(frame))
            return
        }
        let body = #"{"client_msg_id":"\#(clientMsgID)","text":\#(quoteJSON(text))}"#
        await http.sendMessage(
            "\(base)/v1/conversations/\(conversation)/messages", body: body, headers: { self.headers }, retrying: [409, 429],
            clientMsgID: clientMsgID, tracker: tracker, deadline: deadline, onResponse: noteCookie)
    }
}

/// An agent's replies over its WebSocket (`/v1/agent/ws?events=none`): each reply a frame,
/// answered by an `ack` or an `error` frame; frames not answered yet are sent again, with the
/// same `client_msg_id`, after a reconnect, and those refused as `rate_limited` or
/// `unavailable` a moment later.
public final class BenchReplySocket: Sendable {
    let agent: BenchAgent
    let tracker: DeliveryTracker
    private let state = Mutex(Unanswered())

    init(agent: BenchAgent, tracker: DeliveryTracker) {
        self.agent = agent
        self.tracker = tracker
    }

    public var connected: Bool { state.withLock { $0.connected } }

    /// Keeps the socket open until cancelled.
    func run(logger: Logger) async {
        var fields = HTTPFields()
        fields[.authorization] = "Bearer \(agent.token)"
        let url = agent.base.replacingOccurrences(of: "http://", with: "ws://") + "/v1/agent/ws?events=none"
        while !Task.isCancelled {
            _ = try? await WebSocketClient.connect(url: url, configuration: .init(maxFrameSize: 1 << 20, additionalHeaders: fields), logger: logger) {
                inbound, outbound, _ in
                for frame in self.state.withLock({ $0.opened(outbound) }) { try await outbound.write(.text(frame)) }
                for try await message in inbound.messages(maxSize: 1 << 20) {
                    guard case .text(let text) = message, let frame = try? JSONDecoder().decode(WireFrame.self, from: Data(text.utf8)),
                        let id = frame.clientMsgID
                    else { continue }
                    if frame.type == "ack" {
                        self.state.withLock { _ = $0.pending.removeValue(forKey: id) }
                        self.tracker.acked(id)
                    } else if frame.type == "error" {
                        if frame.error?.code == "rate_limited" || frame.error?.code == "unavailable" {
                            let again = self.state.withLock { $0.pending[id] }
                            if let again {
                                Task {
                                    try? await Task.sleep(for: .milliseconds(50))
                                    try? await outbound.write(.text(again))
                                }
                            }
                        } else if self.state.withLock({ $0.pending.removeValue(forKey: id) }) != nil {
                            self.tracker.sendFailed()
                        }
                    }
                }
            }
            state.withLock { $0.closed() }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Sends one reply; it goes out again after a reconnect until it is answered.
    func send(conversation: String, text: String, clientMsgID: String) async {
        let frame = #"{"type":"message","conversation_id":"\#(conversation)","client_msg_id":"\#(clientMsgID)","text":\#(quoteJSON(text))}"#
        let writer: WebSocketOutboundWriter? = state.withLock { s in
            s.pending[clientMsgID] = frame
            return s.writer
        }
        try? await writer?.write(.text(frame))
    }
}

/// An agent account: logs in, claims, replies by POST (or through a `BenchReplySocket`), and
/// (one per run) reads the feed.
public struct BenchAgent: Sendable {
    public let id: String
    let token: String
    let base: String
    let http: HTTP

    public static func login(base: String, email: String, password: String, http: HTTP) async throws -> BenchAgent {
        let response = try await http.call(.POST, "\(base)/v1/agent/session", json: #"{"email":\#(quoteJSON(email)),"password":\#(quoteJSON(password))}"#)
        guard response.status == 200, let token = HTTP.decode(response.body)?.token else {
            throw BenchError("agent login: HTTP \(response.status) \(String(buffer: response.body))")
        }
        return BenchAgent(id: email, token: token, base: base, http: http)
    }

    func on(_ base: String) -> BenchAgent { BenchAgent(id: id, token: token, base: base, http: http) }

    var headers: [(String, String)] { [("Authorization", "Bearer \(token)")] }

    public func claim(_ conversation: String) async throws {
        let response = try await http.call(.POST, "\(base)/v1/agent/conversations/\(conversation)/claim", json: "{}", headers: headers)
        guard response.status == 200 else { throw BenchError("claim: HTTP \(response.status) \(String(buffer: response.body))") }
    }

    /// Replies, retried with the same id until acknowledged or `deadline`.
    public func send(conversation: String, text: String, clientMsgID: String, tracker: DeliveryTracker, deadline: ContinuousClock.Instant) async {
        let body = #"{"client_msg_id":"\#(clientMsgID)","text":\#(quoteJSON(text))}"#
        await http.sendMessage(
            "\(base)/v1/agent/conversations/\(conversation)/messages", body: body, headers: { headers }, retrying: [429],
            clientMsgID: clientMsgID, tracker: tracker, deadline: deadline)
    }

    /// Reads the agents' event feed until cancelled; `ready` is called once it is connected.
    public func feed(tracker: DeliveryTracker, logger: Logger, ready: @escaping @Sendable () -> Void) async {
        var fields = HTTPFields()
        fields[.authorization] = "Bearer \(token)"
        let url = base.replacingOccurrences(of: "http://", with: "ws://") + "/v1/agent/ws"
        while !Task.isCancelled {
            _ = try? await WebSocketClient.connect(url: url, configuration: .init(maxFrameSize: 1 << 20, additionalHeaders: fields), logger: logger) {
                inbound, _, _ in
                ready()
                for try await message in inbound.messages(maxSize: 1 << 20) {
                    guard case .text(let text) = message, text.hasPrefix(#"{"type":"event""#) else { continue }
                    let now = wallNanos()
                    guard let frame = try? JSONDecoder().decode(WireFrame.self, from: Data(text.utf8)), let event = frame.event,
                        let conversation = frame.conversationID
                    else { continue }
                    tracker.received(
                        conversation: conversation, reader: .agent, seq: event.seq, clientMsgID: event.clientMsgID, text: event.text ?? "", at: now)
                }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}
