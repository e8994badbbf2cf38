import Logging
import Metrics
import ParleyCore
import ParleyStore
import ServiceLifecycle
import Synchronization

/// Gathers messages that arrive close together and commits them in one transaction.
///
/// One batch is in flight at a time, so messages keep their arrival order within a
/// conversation, and a sender that waits for each acknowledgement sees its messages stored in
/// the order it sent them. While a batch commits, the next one fills up: under load batches
/// grow by themselves; the optional window only helps a trickle of messages share an fsync.
public final class GroupCommitter: Service, Sendable {
    /// Storing a batch; a seam so that the batching logic is testable without PostgreSQL.
    public typealias Commit = @Sendable ([AppendItem]) async throws -> [AppendOutcome]
    /// Runs after each commit with every item, its outcome and its origin, in commit order, before
    /// any sender is answered: deliveries leave in the order the events were stored.
    public typealias Committed = @Sendable ([(item: AppendItem, outcome: AppendOutcome, origin: String?)]) -> Void

    private struct Pending {
        var item: AppendItem
        var origin: String?
        var resume: @Sendable (Result<AppendOutcome, any Error>) -> Void
    }

    private struct State {
        var queue: [Pending] = []
        var wakeup: CheckedContinuation<Void, Never>?
        var stopped = false
    }

    private let state = Mutex(State())
    private let commit: Commit
    private let committedHook: Committed
    private let maxBatch: Int
    private let window: Duration
    private let logger: Logger
    private let batchSize = Recorder(label: "parley_relay_commit_batch_size")
    private let commitLatency = Timer(label: "parley_relay_commit_seconds")
    private let committed = Counter(label: "parley_relay_messages_committed_total")

    public init(
        maxBatch: Int = 256, window: Duration = .zero, logger: Logger, commit: @escaping Commit,
        committed: @escaping Committed = { _ in }
    ) {
        self.commit = commit
        self.committedHook = committed
        self.maxBatch = maxBatch
        self.window = window
        self.logger = logger
    }

    /// Messages waiting for the next transaction.
    var queued: Int { state.withLock { $0.queue.count } }

    /// Stores one message; returns after the transaction holding it has committed.
    public func submit(_ item: AppendItem, origin: String? = nil) async throws -> AppendOutcome {
        try await withCheckedThrowingContinuation { continuation in
            enqueue([Pending(item: item, origin: origin, resume: { continuation.resume(with: $0) })])
        }
    }

    /// Stores several messages, queued together in this order; returns each one's result.
    public func submitAll(_ items: [(item: AppendItem, origin: String?)]) async -> [Result<AppendOutcome, any Error>] {
        guard !items.isEmpty else { return [] }
        return await withCheckedContinuation { continuation in
            let collected = Collected(count: items.count, continuation: continuation)
            enqueue(items.enumerated().map { index, entry in
                Pending(item: entry.item, origin: entry.origin, resume: { collected.set(index, $0) })
            })
        }
    }

    private func enqueue(_ pending: [Pending]) {
        let (wakeup, refused): (CheckedContinuation<Void, Never>?, Bool) = state.withLock { state in
            if state.stopped { return (nil, true) }
            state.queue.append(contentsOf: pending)
            defer { state.wakeup = nil }
            return (state.wakeup, false)
        }
        if refused {
            for entry in pending { entry.resume(.failure(ParleyError(.unavailable, "the relay is shutting down"))) }
        }
        wakeup?.resume()
    }

    public func run() async throws {
        // Graceful shutdown commits what is queued, then returns; so does cancellation, whose
        // commit then fails and tells the senders to retry.
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await self.loop()
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            self.stop()
        }
    }

    private func stop() {
        let wakeup = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.stopped = true
            defer { state.wakeup = nil }
            return state.wakeup
        }
        wakeup?.resume()
    }

    private func loop() async {
        while true {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if !state.queue.isEmpty || state.stopped { return true }
                    state.wakeup = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
            if window > .zero {
                let pending = state.withLock { $0.queue.count }
                if pending < maxBatch { try? await Task.sleep(for: window) }
            }
            let (batch, stopped) = state.withLock { state -> ([Pending], Bool) in
                let batch = Array(state.queue.prefix(maxBatch))
                state.queue.removeFirst(batch.count)
                return (batch, state.stopped)
            }
            if batch.isEmpty {
                if stopped { return }
                continue
            }
            await commitBatch(batch)
        }
    }

    private func commitBatch(_ batch: [Pending]) async {
        let start = ContinuousClock.now
        do {
            let outcomes = try await commit(batch.map(\.item))
            commitLatency.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
            batchSize.record(batch.count)
            committed.increment(by: outcomes.reduce(0) { if case .stored = $1 { $0 + 1 } else { $0 } })
            committedHook(zip(batch, outcomes).map { ($0.item, $1, $0.origin) })
            for (pending, outcome) in zip(batch, outcomes) { pending.resume(.success(outcome)) }
        } catch {
            // Nothing of the batch is known to be stored: every sender retries with its client_msg_id,
            // which returns the original seq if the commit did happen after all.
            logger.warning("commit failed", metadata: ["parley.batch.size": "\(batch.count)", "parley.error": "\(describeDatabaseError(error))"])
            for pending in batch {
                pending.resume(.failure(ParleyError(.unavailable, "the message could not be stored; retry with the same client_msg_id")))
            }
        }
    }
}

/// Gathers the results of one `submitAll` and resumes its caller once all are in.
private final class Collected: Sendable {
    let results: Mutex<(left: Int, values: [Result<AppendOutcome, any Error>?])>
    let continuation: CheckedContinuation<[Result<AppendOutcome, any Error>], Never>

    init(count: Int, continuation: CheckedContinuation<[Result<AppendOutcome, any Error>], Never>) {
        results = Mutex((left: count, values: Array(repeating: nil, count: count)))
        self.continuation = continuation
    }

    func set(_ index: Int, _ result: Result<AppendOutcome, any Error>) {
        let done: [Result<AppendOutcome, any Error>]? = results.withLock { state in
            state.values[index] = result
            state.left -= 1
            return state.left == 0 ? state.values.map { $0! } : nil
        }
        if let done { continuation.resume(returning: done) }
    }
}
