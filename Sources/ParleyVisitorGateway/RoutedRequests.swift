import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import ParleyCore
import ParleyRuntime
import Synchronization

/// Serves the requests that go to the router (starts, sends, SSE, pages, the chat page, and the
/// polls `LongPollHandler` passes on), each in a task of its own that ends with its response.
///
/// Why not Hummingbird's connection loop: it keeps one task per connection for the connection's
/// whole life, and a task keeps the allocator slabs of the deepest call it ever made. Every
/// long-poll visitor's connection sat idle holding those of its start (router, middleware,
/// relay call) and of the loop itself, ~20 KB. Here an idle connection is its channel and
/// pipeline only. Requests are answered one at a time, in order; up to 64 parts pipelined
/// behind the one being answered wait, and more close the connection.
final class RoutedRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias OutboundOut = HTTPResponsePart

    private struct Pending {
        var head: HTTPRequest
        var body: ByteBuffer
        var tooLarge = false
    }

    private let responder: RoutedResponder
    private var pending: Pending?
    /// A request's task is answering; what arrives meanwhile is held.
    private var answering: (task: Task<Void, Never>, started: ResponseStarted)?
    /// The client will send nothing more: the connection closes once what it asked is answered.
    private var inputClosed = false
    private var held = PipelinedParts()
    /// What came after the held parts did not parse: answered with a 400 in its turn.
    private var malformed = false
    private var context: ChannelHandlerContext?

    init(responder: RoutedResponder) {
        self.responder = responder
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // Where a closed connection is noticed: Hummingbird's connection-state handler, ahead of
        // this one, does not pass `channelInactive` on, and the pipeline removes every handler
        // when the channel closes.
        abandon()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        guard !malformed else { return }
        guard answering == nil, held.isEmpty else {
            if !held.hold(part) { context.close(promise: nil) }
            return
        }
        process(part, context: context)
    }

    private func process(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            pending = Pending(head: head, body: context.channel.allocator.buffer(capacity: 0))
        case .body(let buffer):
            guard pending != nil, !pending!.tooLarge else { return }
            // Bodies are collected whole, up to the limit every visitor request has; the router's
            // handlers read them from memory.
            if pending!.body.readableBytes + buffer.readableBytes > Limits.requestBodyMaxBytes {
                pending!.tooLarge = true
                pending!.body = ByteBuffer()
            } else {
                pending!.body.writeImmutableBuffer(buffer)
            }
        case .end:
            guard let request = pending else { return }
            pending = nil
            answer(request, context: context)
        }
    }

    private func answer(_ request: Pending, context: ChannelHandlerContext) {
        let channel = context.channel
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        let responder = self.responder
        let keepAlive = !request.tooLarge && request.head.headerFields[.connection]?.lowercased() != "close"
        let routed = Request(head: request.head, body: RequestBody(buffer: request.body))
        let tooLarge = request.tooLarge
        let started = ResponseStarted()
        let task = Task {
            let written = await responder.answer(routed, tooLarge: tooLarge, on: channel, started: started)
            loop.execute { handler.value.answered(keepAlive: written && keepAlive) }
        }
        answering = (task, started)
    }

    private func answered(keepAlive: Bool) {
        answering = nil
        guard let context, context.channel.isActive else { return }
        guard keepAlive else {
            context.close(promise: nil)
            return
        }
        while !held.isEmpty, answering == nil {
            process(held.next(), context: context)
        }
        if malformed, answering == nil { refuseMalformed(context: context) }
        if inputClosed, answering == nil { context.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The server allows half-closed connections: a client that shuts its side after its
        // request still gets the answer; then the connection closes.
        if case .inputClosed = event as? ChannelEvent {
            inputClosed = true
            if answering == nil, held.isEmpty { context.close(promise: nil) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError else {
            context.close(promise: nil)
            return
        }
        // A request that does not parse ends the connection with a 400, after the answers to
        // the requests before it, as they were sent.
        malformed = true
        if answering == nil, held.isEmpty { refuseMalformed(context: context) }
    }

    private func refuseMalformed(context: ChannelHandlerContext) {
        let head = HTTPResponse(status: .badRequest, headerFields: [.connection: "close", .contentLength: "0"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    /// The connection is gone. A response under way (an SSE stream) is of no use to a visitor
    /// who left and stops; a request still being worked out (a send and its relay call) is left
    /// to finish, so that what it changed reaches this node's memory too.
    private func abandon() {
        if let answering, answering.started.value { answering.task.cancel() }
        answering = nil
        held.removeAll()
        pending = nil
    }
}

/// The router's answer to one request, written to the request's channel.
struct RoutedResponder: Sendable {
    let router: any HTTPResponder<VisitorRequestContext>
    let logger: Logger
    let dates = HTTPDateHeader()

    /// Answers `request`; false when the response could not be written whole.
    func answer(_ request: Request, tooLarge: Bool, on channel: any Channel, started: ResponseStarted) async -> Bool {
        var response: Response
        if tooLarge {
            response = JSONErrorMiddleware<VisitorRequestContext>.response(
                ParleyError(.payloadTooLarge, "the request body is larger than \(Limits.requestBodyMaxBytes) bytes"))
        } else {
            do {
                response = try await router.respond(to: request, context: VisitorRequestContext(source: .init(channel: channel, logger: logger)))
            } catch {
                // The JSON error middleware answers every error it sees; this is what escapes it.
                logger.debug("unanswered error", metadata: ["parley.error": "\(error)"])
                response = Response(status: .internalServerError)
            }
        }
        response.headers[.date] = dates.current
        let body = response.body
        do {
            channel.write(HTTPResponsePart.head(response.head), promise: nil)
            started.mark()
            try await body.write(ChannelBodyWriter(channel: channel))
            return true
        } catch {
            return false
        }
    }
}

/// Whether a request's response has begun (its head is written).
final class ResponseStarted: Sendable {
    private let started = Atomic<Bool>(false)

    func mark() { started.store(true, ordering: .releasing) }

    var value: Bool { started.load(ordering: .acquiring) }
}

/// Writes a response body to the channel. Each write waits until it is written, so a slow
/// reader of a stream holds back its writer instead of filling memory, and a stream whose
/// reader has gone learns it from the write that fails.
private struct ChannelBodyWriter: ResponseBodyWriter {
    let channel: any Channel

    mutating func write(_ buffer: ByteBuffer) async throws {
        let written = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(HTTPResponsePart.body(buffer), promise: written)
        try await written.futureResult.get()
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await channel.writeAndFlush(HTTPResponsePart.end(trailingHeaders)).get()
    }
}

/// The `Date` header of responses (RFC 9110, IMF-fixdate), formatted once a second.
final class HTTPDateHeader: Sendable {
    private let cached = Mutex<(second: Int, text: String)>((-1, ""))
    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    var current: String {
        let second = Int(Date().timeIntervalSince1970)
        return cached.withLock { cached in
            if cached.second != second { cached = (second, Self.format(second)) }
            return cached.text
        }
    }

    static func format(_ second: Int) -> String {
        var time = time_t(second)
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(1900 + parts.tm_year) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
