import GRPCCore
import ParleyCore
import Synchronization

/// Many request–response exchanges on one long-lived bidirectional call, which spares each
/// exchange a unary call's cost: a new HTTP/2 stream, headers both ways, a deadline timer at
/// each end. The peer answers every request with one response, in order, so answers are
/// matched to callers by position.
///
/// When the call ends for any reason (the peer failed a request or shut down, the connection
/// dropped, a request went unanswered for `timeout`), every request still waiting fails with
/// `unavailable`, and the instance is spent (`isEnded`): its owner opens another. Callers
/// must be able to send a failed request again, since it may have been served.
package final class StreamedCalls<Request: Sendable, Response: Sendable>: Sendable {
    /// Runs the call: writes every element of `requests` in order, passes each response to
    /// `answer`, and returns when the call ends.
    package typealias Call = @Sendable (
        _ requests: AsyncStream<Request>, _ answer: @escaping @Sendable (Response) throws -> Void
    ) async throws -> Void

    private struct State {
        var waiting: [(sent: ContinuousClock.Instant, continuation: CheckedContinuation<Response, any Error>)] = []
        /// Why the call ended, as `unavailable`; set once.
        var ended: ParleyError?
    }

    private let state = Mutex(State())
    private let outbound: AsyncStream<Request>.Continuation

    /// Starts the call; `timeout` bounds how long a request waits for its answer.
    package init(timeout: Duration, call: @escaping Call) {
        let (requests, outbound) = AsyncStream.makeStream(of: Request.self)
        self.outbound = outbound
        Task { [self] in
            let reason: ParleyError
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await self.watch(timeout: timeout) }
                    group.addTask { try await call(requests) { try self.answer($0) } }
                    // The call ends, or the watch ends it.
                    try await group.next()
                    group.cancelAll()
                }
                reason = ParleyError(.unavailable, "the peer ended the stream")
            } catch let error as ParleyError {
                reason = error
            } catch {
                reason = ParleyError(.unavailable, "the stream to the peer failed: \(error)")
            }
            self.end(reason)
        }
    }

    /// Starts a generated bidirectional method, passed its request producer and response
    /// handler: `{ try await client.method(requestProducer: $0, onResponse: $1) }`.
    package convenience init(
        timeout: Duration,
        bidirectional method: @escaping @Sendable (
            _ producer: @escaping @Sendable (RPCWriter<Request>) async throws -> Void,
            _ onResponse: @escaping @Sendable (StreamingClientResponse<Response>) async throws -> Void
        ) async throws -> Void
    ) {
        self.init(timeout: timeout) { requests, answer in
            try await method(
                { writer in
                    for await request in requests { try await writer.write(request) }
                },
                { response in
                    for try await message in response.messages { try answer(message) }
                })
        }
    }

    /// Whether the call has ended; an ended instance only fails.
    package var isEnded: Bool { state.withLock { $0.ended != nil } }

    /// Sends a request and waits for its answer.
    package func send(_ request: Request) async throws -> Response {
        try await withCheckedThrowingContinuation { continuation in
            let refused: ParleyError? = state.withLock { state in
                if let ended = state.ended { return ended }
                state.waiting.append((ContinuousClock.now, continuation))
                // Yielded under the lock, so the stream's order is the order of `waiting`.
                outbound.yield(request)
                return nil
            }
            if let refused { continuation.resume(throwing: refused) }
        }
    }

    /// Ends the call once the requests already sent are answered: for graceful shutdown.
    package func finish() { outbound.finish() }

    private func answer(_ response: Response) throws {
        let first = state.withLock { state in state.waiting.isEmpty ? nil : state.waiting.removeFirst() }
        guard let first else { throw ParleyError(.unavailable, "the peer answered a request that was not sent") }
        first.continuation.resume(returning: response)
    }

    /// Ends the call when its oldest request has waited longer than `timeout`: one check a
    /// second per call instead of a deadline timer per request.
    private func watch(timeout: Duration) async throws {
        while true {
            try await Task.sleep(for: .seconds(1))
            let oldest = state.withLock { $0.waiting.first?.sent }
            if let oldest, ContinuousClock.now - oldest > timeout {
                throw ParleyError(.unavailable, "the peer did not answer within \(timeout)")
            }
        }
    }

    private func end(_ reason: ParleyError) {
        // Whatever ended the call, a request's fate is unknown: `unavailable` tells its caller
        // to send it again.
        let failure = ParleyError(.unavailable, reason.message)
        let waiting = state.withLock { state in
            if state.ended == nil { state.ended = failure }
            defer { state.waiting = [] }
            return state.waiting
        }
        outbound.finish()
        for entry in waiting { entry.continuation.resume(throwing: failure) }
    }
}
