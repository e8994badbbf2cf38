import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import ParleyCore
import ParleyRuntime
import ServiceLifecycle
import Synchronization

/// The visitor gateway's connections: HTTP/1.1 requests go to Hummingbird's router through
/// `LongPollHandler` and `RoutedRequestHandler`; an upgrade to a conversation's WebSocket
/// (`/v1/conversations/{id}/ws`) becomes a `VisitorSocket`.
///
/// Why not Hummingbird's WebSocket support: it runs a task per socket for the handler, two more
/// inside it, async buffers in and out, and a ping timer, and it keeps the upgrade request. An
/// idle visitor cost ~44 KiB of gateway memory that way. A visitor socket is a NIO handler:
/// while it is idle it is its channel, its pipeline and one waiter in its conversation's log.
/// Work (a delivery, a message from the visitor) runs in a task that ends when the work does.
struct VisitorChannel: ServerChildChannel {
    enum Negotiated: Sendable {
        /// A WebSocket, or HTTP requests: NIO handlers own the channel, no task waits on it.
        case served
        /// An upgrade the checks refused: answered with the reason, then closed.
        case refused(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, ParleyError)
    }

    struct Value: ServerChildChannelValue {
        let negotiated: EventLoopFuture<Negotiated>
        let channel: any Channel
    }

    let responder: RoutedResponder
    let http1: HTTP1Channel.Configuration
    let sockets: VisitorSockets

    /// Each connection keeps its receive buffer between reads, sized by the first reads. NIO's
    /// default starts at 2 KiB, a fifth of an idle visitor; requests here are small, and the
    /// buffer still grows for a larger one.
    static let receiveBuffers = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 1024, maximum: 65_536)

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.syncOptions?.setOption(ChannelOptions.recvAllocator, value: Self.receiveBuffers)
            // What the upgrade's checks found: the socket for the pipeline the upgrade then builds,
            // or why it was refused.
            let admitted = NIOLoopBoundBox<VisitorSocket?>(nil, eventLoop: channel.eventLoop)
            let refusal = NIOLoopBoundBox<ParleyError?>(nil, eventLoop: channel.eventLoop)
            let sockets = self.sockets
            let upgrader = NIOTypedWebSocketServerUpgrader<Negotiated>(
                maxFrameSize: Limits.requestBodyMaxBytes,
                shouldUpgrade: { channel, head in
                    channel.eventLoop.makeCompletedFuture {
                        switch sockets.admit(head, peer: channel.remoteAddress) {
                        case .success(let socket):
                            admitted.value = socket
                            return HTTPHeaders()
                        case .failure(let error):
                            refusal.value = error
                            return nil
                        }
                    }
                },
                upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        guard let socket = admitted.value else { throw ChannelError.inappropriateOperationForState }
                        admitted.value = nil
                        try channel.pipeline.syncOperations.addHandler(
                            NIOWebSocketFrameAggregator(
                                minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 64, maxAccumulatedFrameSize: Limits.requestBodyMaxBytes))
                        try channel.pipeline.syncOperations.addHandler(VisitorSocketHandler(socket: socket))
                        return .served
                    }
                })
            let http1 = self.http1
            let upgrade = NIOTypedHTTPServerUpgradeConfiguration<Negotiated>(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandlers(http1.additionalChannelHandlers())
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: http1.idleTimeout.map { .init($0) }, logger: logger))
                        if let error = refusal.value {
                            let http = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                                wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                            return .refused(http, error)
                        }
                        try channel.pipeline.syncOperations.addHandler(LongPollHandler(checks: sockets.checks))
                        try channel.pipeline.syncOperations.addHandler(RoutedRequestHandler(responder: responder))
                        return .served
                    }
                })
            var pipeline = NIOUpgradableHTTPServerPipelineConfiguration<Negotiated>(upgradeConfiguration: upgrade)
            pipeline.enablePipelining = false  // NIOAsyncChannel serves one request at a time
            pipeline.enableErrorHandling = false  // Hummingbird answers malformed requests
            pipeline.enableResponseHeaderValidation = false  // HTTPTypes validates already
            pipeline.decoderConfiguration.maxHeaderFieldSize = http1.httpDecoder.maxHeaderFieldSize
            pipeline.decoderConfiguration.maxHeaderListSize = http1.httpDecoder.maxHeaderListSize
            pipeline.decoderConfiguration.maxHeaderFieldCount = http1.httpDecoder.maxHeaderFieldCount
            let negotiated = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: pipeline)
            let firstRequest = FirstRequestGuard(timeout: http1.idleTimeout ?? .seconds(30))
            try channel.pipeline.syncOperations.addHandler(firstRequest)
            let bound = NIOLoopBound(firstRequest, eventLoop: channel.eventLoop)
            negotiated.whenSuccess { _ in bound.value.negotiated() }
            return Value(negotiated: negotiated, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.negotiated.get() {
            case .served:
                // The channel's handlers own it from here: no task waits on it.
                return
            case .refused(let http, let error):
                // The request's parser stopped at the upgrade: answer, and close the connection.
                try await http.executeThenClose { _, outbound in
                    var (head, body) = error.jsonResponse
                    head.headerFields[.connection] = "close"
                    head.headerFields[.contentLength] = String(body.count)
                    try await outbound.write(contentsOf: [.head(head), .body(ByteBuffer(data: body)), .end(nil)])
                }
            }
        } catch {
            // Nothing watches the connection before its first request parses (no idle timeout
            // yet): close it, or it would stay open for as long as the client likes.
            value.channel.close(promise: nil)
            logger.debug("connection ended before its first request", metadata: ["parley.error": "\(error)"])
        }
    }
}

/// Watches a connection until its first request has been read: the idle timeout and the
/// handlers that answer malformed requests come with that request. A client that sends nothing
/// for the idle timeout, or something that does not parse, is disconnected.
private final class FirstRequestGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    init(timeout: TimeAmount) { self.timeout = timeout }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        self.context = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Not every error here is the client's: a refused upgrade leaves bytes the parser will
        // not read, and that connection still gets its answer.
        guard error is HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        context.close(promise: nil)
    }

    /// The first request is in: its handlers take over.
    func negotiated() {
        guard let context else { return }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// Every open visitor socket of this gateway: admits upgrades, pings them all from one timer,
/// and on shutdown lets them tell their visitors to move before the process ends.
final class VisitorSockets: Service, Sendable {
    private let api: VisitorAPI
    let checks: VisitorChecks
    private let pingInterval: Duration
    private let open = Mutex<[ObjectIdentifier: VisitorSocket]>([:])

    init(api: VisitorAPI, allowedOrigins: [String], pingInterval: Duration = .seconds(30)) {
        self.api = api
        self.checks = VisitorChecks(api: api, origins: OriginMiddleware(allowed: allowedOrigins))
        self.pingInterval = pingInterval
    }

    var count: Int { open.withLock { $0.count } }
    private static let pingSlices = 300

    /// A socket for an upgrade request that passes the checks every visitor request passes
    /// (path, origin, token and identity, cursor, the address's connection cap), or why not.
    func admit(_ head: HTTPRequestHead, peer: SocketAddress?) -> Result<VisitorSocket, ParleyError> {
        Result { try check(head, peer: peer) }.mapError { $0 as? ParleyError ?? ParleyError(.invalidRequest, "bad WebSocket request") }
    }

    private func check(_ head: HTTPRequestHead, peer: SocketAddress?) throws -> VisitorSocket {
        let admitted = try checks.admit(
            uri: head.uri, leaf: "ws", peer: peer, header: { head.headers.first(name: $0) }, values: { head.headers[$0] })
        let cursor = try Validate.cursor(admitted.uri.queryParameters["after"].map(String.init))
        // A look at the cap, so a refusal is a 429 before the upgrade; the slot itself is taken
        // when the socket opens (`VisitorSocket.opened`).
        guard api.connectionCaps.held(admitted.address) < api.connectionCaps.limit else {
            api.rateLimited.increment()
            throw ParleyError.rateLimited(retryAfter: .seconds(5), "too many open connections from this address")
        }
        let typing = api.hub.existing(admitted.id)?.ephemeral(after: .max).generation ?? 0
        return VisitorSocket(id: admitted.id, cursor: cursor, typing: typing, address: admitted.address, api: api, sockets: self)
    }

    func opened(_ socket: VisitorSocket) { open.withLock { $0[ObjectIdentifier(socket)] = socket } }
    func closed(_ socket: VisitorSocket) { _ = open.withLock { $0.removeValue(forKey: ObjectIdentifier(socket)) } }

    func run() async throws {
        // One timer for every socket: each interval a ping; a socket that sent nothing at all
        // since the last one (not even the pong) is taken for dead and closed. The pings go out in
        // slices, one every `pingSlices`-th of the interval (100 ms): a slice holds an event loop
        // while it writes, and a delivery due then waits. 19,000 pings at once took delivery p99
        // to seconds; 633 a second (30 slices) still put it at 32-35 ms; 64 every 100 ms, 17-18 ms.
        var sweep = PingSweep<VisitorSocket>(slices: Self.pingSlices)
        // Cancellation ends it too: the sleep then returns at once, and the loop would spin.
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.pingInterval / Self.pingSlices) }
            if Task.isShuttingDownGracefully { break }
            for socket in sweep.next(open: { open.withLock { Array($0.values) } }) { socket.keepAlive() }
        }
        // The node lifecycle, shut down before this service, has told every conversation to move,
        // and each socket is telling its visitor. Give them a moment, then close what is left.
        let deadline = ContinuousClock.now + .seconds(5)
        while count > 0, ContinuousClock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
        }
        for socket in open.withLock({ Array($0.values) }) { socket.close(code: .goingAway, reason: "shutting down") }
    }
}

/// Which sockets to ping at each slice of the ping interval: every socket open when the
/// interval began, spread evenly over its slices. A sweep takes the whole interval however few
/// sockets there are, so each is pinged once per interval, not once per slice.
struct PingSweep<Socket> {
    let slices: Int
    private var due: [Socket] = []
    private var perSlice = 1
    private var slice = 0

    init(slices: Int) { self.slices = slices }

    /// The sockets for this slice; `open` is asked for the open sockets at each interval's start.
    mutating func next(open: () -> [Socket]) -> [Socket] {
        if slice == 0 {
            due = open()
            perSlice = max(1, (due.count + slices - 1) / slices)
        }
        slice = (slice + 1) % slices
        let now = Array(due.suffix(perSlice))
        due.removeLast(now.count)
        return now
    }
}

/// One visitor's WebSocket on its conversation. Thread-safe: NIO calls it from the channel's
/// event loop, and its short tasks from wherever they run.
final class VisitorSocket: Sendable {
    let id: UUID
    let address: String
    private let api: VisitorAPI
    private let sockets: VisitorSockets
    /// At most this many frames from the visitor wait their turn; past it the socket stops reading.
    private static let inboundQueueLimit = 8

    private struct State {
        var channel: (any Channel)?
        var holdsSlot = false
        var closed = false
        var closing = false
        /// Delivery: the last seq written, the last typing signal seen, and the one pump at a time.
        var cursor: Int64
        var typing: UInt64
        var pumping = false
        var pumpAgain = false
        var waiting: (log: ConversationLog, token: UInt64)?
        /// Frames from the visitor, handled one at a time and in order.
        var inbound: [String] = []
        var working = false
        var readPending = false
        var pingOutstanding = false
    }

    private let state: Mutex<State>

    init(id: UUID, cursor: Int64, typing: UInt64, address: String, api: VisitorAPI, sockets: VisitorSockets) {
        self.id = id
        self.address = address
        self.api = api
        self.sockets = sockets
        self.state = Mutex(State(cursor: cursor, typing: typing))
    }

    // MARK: Lifecycle (from the handler, on the event loop)

    func opened(_ channel: any Channel) {
        guard api.connectionCaps.acquire(address) else {
            state.withLock { $0.channel = channel }
            close(code: .policyViolation, reason: "too many connections from this address")
            return
        }
        state.withLock { state in
            state.channel = channel
            state.holdsSlot = true
        }
        api.connections.opened(api.connected)
        sockets.opened(self)
        wake()
    }

    func closed() {
        let (heldSlot, waiting) = state.withLock { state in
            defer {
                state.closed = true
                state.holdsSlot = false
                state.waiting = nil
                state.channel = nil
                state.inbound.removeAll()
            }
            return (state.holdsSlot, state.waiting)
        }
        if let waiting { waiting.log.cancelWake(waiting.token) }
        if heldSlot {
            api.connectionCaps.release(address)
            api.connections.closed(api.connected)
            sockets.closed(self)
        }
    }

    /// The visitor sent a frame: it is alive.
    func heard() { state.withLock { $0.pingOutstanding = false } }

    /// Whether the handler may read more now; if not, the next read waits for the queue to drain.
    func acceptsInput() -> Bool {
        state.withLock { state in
            guard state.inbound.count < Self.inboundQueueLimit else {
                state.readPending = true
                return false
            }
            return true
        }
    }

    /// Whether the socket has said goodbye and only waits for the visitor's close.
    var isClosing: Bool { state.withLock { $0.closing } }

    /// Pings the visitor, or closes the socket when the last ping went unanswered.
    func keepAlive() {
        let (channel, dead) = state.withLock { state -> ((any Channel)?, Bool) in
            defer { state.pingOutstanding = true }
            return (state.channel, state.pingOutstanding)
        }
        guard let channel else { return }
        if dead {
            channel.close(promise: nil)
        } else {
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer()), promise: nil)
        }
    }

    /// Sends a close frame and closes the connection once the visitor answers, or after a
    /// moment: closing at once could reset the connection and lose the frames before it.
    func close(code: WebSocketErrorCode, reason: String) {
        let channel = state.withLock { state -> (any Channel)? in
            guard !state.closing else { return nil }
            state.closing = true
            return state.channel
        }
        guard let channel else { return }
        channel.writeAndFlush(Self.closeFrame(code, reason: reason, allocator: channel.allocator)).whenComplete { _ in
            channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
    }

    static func closeFrame(_ code: WebSocketErrorCode, reason: String = "", allocator: ByteBufferAllocator) -> WebSocketFrame {
        var data = allocator.buffer(capacity: 2 + reason.utf8.count)
        data.write(webSocketErrorCode: code)
        data.writeString(reason)
        return WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
    }

    // MARK: Delivery

    /// Starts a pump unless one runs already (which then goes round once more).
    func wake() {
        let start = state.withLock { state -> Bool in
            state.waiting = nil
            guard !state.closed, !state.closing else { return false }
            if state.pumping {
                state.pumpAgain = true
                return false
            }
            state.pumping = true
            return true
        }
        if start { Task { await self.pump() } }
    }

    /// Writes what the visitor has not seen, then leaves a waiter in the log and ends: the next
    /// change wakes the socket again.
    private func pump() async {
        while true {
            guard let (cursor, typing) = state.withLock({ $0.closed ? nil : ($0.cursor, $0.typing) }) else { return }
            var last = cursor
            do {
                let page = try await api.read(id, after: cursor, wait: .zero)
                var newTyping = typing
                var frames: [String] = []
                if let signal = api.ephemeral(id, after: &newTyping) { frames.append(signal) }
                for event in page.events {
                    frames.append(event.json)
                    last = event.seq
                }
                state.withLock { state in
                    state.cursor = last
                    state.typing = newTyping
                }
                if !frames.isEmpty { try await send(frames) }
                if page.more { continue }
            } catch let error as ParleyError {
                try? await send([#"{"type":"move","code":"\#(error.code.rawValue)"}"#])
                close(code: .goingAway, reason: "move")
                return
            } catch {
                close(code: .unexpectedServerError, reason: "")
                return
            }
            // Caught up. A log evicted meanwhile, or changed already, means another round.
            guard let log = api.hub.existing(id), let token = log.wakeOnChange(after: last, { [weak self] in self?.wake() }) else { continue }
            let idle = state.withLock { state -> Bool in
                if state.closed || state.pumpAgain {
                    state.pumpAgain = false
                    return false
                }
                state.waiting = (log, token)
                state.pumping = false
                return true
            }
            if idle { return }
            log.cancelWake(token)
        }
    }

    private func send(_ texts: [String]) async throws {
        guard let channel = state.withLock({ $0.channel }) else { throw ChannelError.ioOnClosedChannel }
        for text in texts.dropLast() {
            channel.write(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text)), promise: nil)
        }
        try await channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: texts.last!))).get()
    }

    // MARK: From the visitor

    /// Queues a text frame; frames are handled one at a time, in the order they came.
    func received(_ text: String) {
        let start = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            state.inbound.append(text)
            if state.working { return false }
            state.working = true
            return true
        }
        if start { Task { await self.work() } }
    }

    /// Answers a frame the gateway does not take.
    func refuse(_ error: ParleyError) {
        Task { try? await send([VisitorAPI.wsError(nil, error)]) }
    }

    private func work() async {
        while true {
            let (next, channelToRead) = state.withLock { state -> (String?, (any Channel)?) in
                guard !state.closed, !state.inbound.isEmpty else {
                    state.working = false
                    return (nil, nil)
                }
                let text = state.inbound.removeFirst()
                guard state.readPending else { return (text, nil) }
                state.readPending = false
                return (text, state.channel)
            }
            channelToRead?.read()
            guard let next else { return }
            await handle(next)
        }
    }

    private func handle(_ text: String) async {
        guard let frame = try? JSONDecoder().decode(VisitorAPI.Inbound.self, from: Data(text.utf8)) else {
            try? await send([VisitorAPI.wsError(nil, ParleyError(.invalidRequest, "frames must be JSON objects with a type"))])
            return
        }
        switch frame.type {
        case "typing":
            try? await api.relay.typing(conversation: id, agent: nil)
        case "message":
            let reply: String
            do {
                let ack = try await api.post(id, clientMsgID: frame.clientMsgID, text: frame.text)
                reply =
                    #"{"type":"ack","client_msg_id":\#(VisitorAPI.quote(frame.clientMsgID ?? "")),"seq":\#(ack.seq),"created_at":"\#(ack.createdAt)","duplicate":\#(ack.duplicate)}"#
            } catch let error as ParleyError {
                reply = VisitorAPI.wsError(frame.clientMsgID, error)
            } catch {
                // Not stored as far as this gateway knows: the visitor sends it again, with the same id.
                reply = VisitorAPI.wsError(frame.clientMsgID, ParleyError(.unavailable, "the message could not be stored; send it again"))
            }
            try? await send([reply])
        default:
            break
        }
    }
}

/// The NIO end of a `VisitorSocket`: frames in, pings answered, reads held while the socket's
/// queue is full.
final class VisitorSocketHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let socket: VisitorSocket

    init(socket: VisitorSocket) {
        self.socket = socket
    }

    func handlerAdded(context: ChannelHandlerContext) {
        socket.opened(context.channel)
    }

    func channelInactive(context: ChannelHandlerContext) {
        socket.closed()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        socket.heard()
        switch frame.opcode {
        case .text:
            var data = frame.unmaskedData
            socket.received(data.readString(length: data.readableBytes) ?? "")
        case .binary:
            socket.refuse(ParleyError(.invalidRequest, "frames must be JSON objects with a type"))
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            if socket.isClosing {
                // The visitor answered our close: the handshake is done.
                context.close(promise: nil)
            } else {
                var data = frame.unmaskedData
                let code = data.readWebSocketErrorCode() ?? .normalClosure
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(VisitorSocket.closeFrame(code, allocator: channel.allocator))).whenComplete { _ in
                    channel.close(promise: nil)
                }
            }
        default:
            break
        }
    }

    func read(context: ChannelHandlerContext) {
        if socket.acceptsInput() { context.read() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The visitor half-closed: nothing more can come, so the socket is done.
        if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is NIOWebSocketFrameAggregator.Error {
            socket.close(code: .messageTooLarge, reason: "messages are limited to \(Limits.requestBodyMaxBytes) bytes")
        } else {
            context.close(promise: nil)
        }
    }
}
