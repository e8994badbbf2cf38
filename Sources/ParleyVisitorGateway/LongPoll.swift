import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import NIOCore
import NIOHTTPTypes
import ParleyCore
import ParleyRuntime
import Synchronization

/// Serves a visitor's waiting long-poll (`GET /v1/conversations/{id}/events?wait=N`, N > 0)
/// below the router, without a task while it waits: a waiter in the conversation's log and a
/// timer on the event loop, like `VisitorSocket`. Everything else, and every poll the checks
/// refuse, goes on to Hummingbird, which answers it as before (refusals with their JSON error).
///
/// It sits after Hummingbird's connection-state handler, which so counts these requests like
/// any other: keep-alive, idle timeout and graceful shutdown work the same for both.
final class LongPollHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let checks: VisitorChecks
    /// Requests passed on to Hummingbird and not yet answered: a poll is taken here only when
    /// none is, so that responses leave in request order.
    private var forwarded = 0
    /// The poll served here, from its head until its response is written.
    private var poll: LongPoll?
    private var pollRequestComplete = false
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?
    /// Requests that came behind the poll (pipelined), handled after it. Bounded.
    private var held = PipelinedParts()

    init(checks: VisitorChecks) {
        self.checks = checks
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        guard held.isEmpty, poll == nil || !pollRequestComplete else {
            if !held.hold(part) { context.close(promise: nil) }
            return
        }
        process(part, context: context)
    }

    private func process(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        if let poll, !pollRequestComplete {
            // The poll's own body (a GET has none worth reading) and end.
            if case .end = part {
                pollRequestComplete = true
                start(poll, context: context)
            }
            return
        }
        handle(part, context: context)
    }

    private func handle(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        if case .head(let request) = part {
            if forwarded == 0, let poll = admit(request, peer: context.channel.remoteAddress) {
                self.poll = poll
                pollRequestComplete = false
                return
            }
            forwarded += 1
        }
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// A poll for a request these checks take; nil sends the request on to the router.
    private func admit(_ request: HTTPRequest, peer: SocketAddress?) -> LongPoll? {
        guard request.method == .get, let path = request.path, path.hasPrefix("/v1/conversations/") else { return nil }
        guard
            let admitted = try? checks.admit(
                uri: path, leaf: "events", peer: peer,
                header: { name in HTTPField.Name(name).flatMap { request.headerFields[$0] } },
                values: { name in HTTPField.Name(name).map { request.headerFields[values: $0] } ?? [] }),
            let after = try? Validate.cursor(admitted.uri.queryParameters["after"].map(String.init)),
            let wait = try? Validate.waitSeconds(admitted.uri.queryParameters["wait"].map(String.init)), wait > 0,
            checks.api.connectionCaps.acquire(admitted.address)
        else { return nil }
        return LongPoll(id: admitted.id, after: after, address: admitted.address, wait: .seconds(wait), api: checks.api)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    private func start(_ poll: LongPoll, context: ChannelHandlerContext) {
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        timer = context.eventLoop.scheduleTask(in: .seconds(Int64(poll.wait.components.seconds))) { poll.expire() }
        poll.start { result in
            loop.execute { handler.value.respond(poll, result) }
        }
    }

    private func respond(_ poll: LongPoll, _ result: Result<EventsPage, ParleyError>) {
        guard poll === self.poll, let context, context.channel.isActive else { return }
        timer?.cancel()
        timer = nil
        self.poll = nil
        var head: HTTPResponse
        var body: Data
        switch result {
        case .success(let page):
            body = Data(page.json.utf8)
            head = HTTPResponse(status: .ok, headerFields: SecurityHeadersMiddleware<VisitorRequestContext>.fields)
            head.headerFields[.contentType] = "application/json"
            head.headerFields[.cacheControl] = "no-store"
            head.headerFields[.setCookie] = checks.api.nodeCookie()[.setCookie]
        case .failure(let error):
            (head, body) = error.jsonResponse
        }
        head.headerFields[.contentLength] = String(body.count)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(ByteBuffer(data: body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        // What came behind the poll, in order; it may hold another poll. The read-complete
        // hands what was passed on to Hummingbird, which collects parts until one comes.
        guard !held.isEmpty else { return }
        while !held.isEmpty, self.poll == nil || !pollRequestComplete {
            process(held.next(), context: context)
        }
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { forwarded -= 1 }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        drop()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        drop()
        self.context = nil
    }

    /// The connection is gone: no answer, and the poll's slot is free again.
    private func drop() {
        timer?.cancel()
        timer = nil
        poll?.abandon()
        poll = nil
        held.removeAll()
    }
}

/// One waiting long-poll: answered once, with what came after its cursor, or with an empty page
/// at its deadline. Holds one of its address's connection slots until then.
final class LongPoll: Sendable {
    typealias Respond = @Sendable (Result<EventsPage, ParleyError>) -> Void

    let id: UUID
    let after: Int64
    let address: String
    let wait: Duration
    private let api: VisitorAPI

    private struct State {
        var respond: Respond?
        var waiting: (log: ConversationLog, token: UInt64)?
        var reading = false
        /// A change or the deadline came: the next read answers, even with nothing.
        var answerNow = false
        var done = false
    }

    private let state = Mutex(State())

    init(id: UUID, after: Int64, address: String, wait: Duration, api: VisitorAPI) {
        self.id = id
        self.after = after
        self.address = address
        self.wait = wait
        self.api = api
        api.connections.opened(api.connected)
    }

    /// Reads, and waits for the next change if there is nothing yet; `respond` runs once.
    func start(respond: @escaping Respond) {
        state.withLock { $0.respond = respond }
        read(answer: false)
    }

    /// The deadline: answers with what there is, most likely nothing.
    func expire() { read(answer: true) }

    /// The client went away: no answer, and the slot is free again.
    func abandon() { finish(nil) }

    private func read(answer: Bool) {
        let go = state.withLock { state -> Bool in
            if answer { state.answerNow = true }
            if state.done || state.reading { return false }
            state.reading = true
            if let waiting = state.waiting {
                waiting.log.cancelWake(waiting.token)
                state.waiting = nil
            }
            return true
        }
        guard go else { return }
        Task { await self.readLoop() }
    }

    private enum Parking { case parked, again, finished }

    private func readLoop() async {
        while true {
            let result: Result<EventsPage, ParleyError>
            do {
                let page = try await api.read(id, after: after, wait: .zero)
                let answer = state.withLock { $0.answerNow }
                if page.events.isEmpty, !answer {
                    // Nothing yet: leave a waiter in the log, and no task, until the next change.
                    guard let log = api.hub.existing(id),
                        let token = log.wakeOnChange(after: after, { [weak self] in self?.read(answer: true) })
                    else { continue }
                    let parking = state.withLock { state -> Parking in
                        if state.done { return .finished }
                        if state.answerNow { return .again }
                        state.reading = false
                        state.waiting = (log, token)
                        return .parked
                    }
                    if parking == .parked { return }
                    log.cancelWake(token)
                    if parking == .finished { return }
                    continue
                }
                result = .success(page)
            } catch let error as ParleyError {
                result = .failure(error)
            } catch {
                result = .failure(ParleyError(.unavailable, "could not read the conversation; retry"))
            }
            finish(result)
            return
        }
    }

    private func finish(_ result: Result<EventsPage, ParleyError>?) {
        let ended = state.withLock { state -> (respond: Respond?, waiting: (log: ConversationLog, token: UInt64)?)? in
            guard !state.done else { return nil }
            state.done = true
            defer {
                state.respond = nil
                state.waiting = nil
            }
            return (state.respond, state.waiting)
        }
        guard let ended else { return }
        if let waiting = ended.waiting { waiting.log.cancelWake(waiting.token) }
        api.connectionCaps.release(address)
        api.connections.closed(api.connected)
        if let result { ended.respond?(result) }
    }
}

/// Request parts a client pipelined behind a request still being answered, kept in order for
/// when it is. Bounded: a client that pipelines more is disconnected.
struct PipelinedParts {
    private var parts: [HTTPRequestPart] = []
    private static let limit = 64

    var isEmpty: Bool { parts.isEmpty }

    /// Keeps `part`; false when the client is over the limit (close the connection).
    mutating func hold(_ part: HTTPRequestPart) -> Bool {
        guard parts.count < Self.limit else { return false }
        parts.append(part)
        return true
    }

    /// The oldest part held; only when there is one.
    mutating func next() -> HTTPRequestPart { parts.removeFirst() }

    mutating func removeAll() { parts.removeAll() }
}
