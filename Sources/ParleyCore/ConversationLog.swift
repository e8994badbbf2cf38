import Dispatch
import Synchronization

/// The in-memory tail of one conversation on the visitor gateway it is pinned to.
///
/// Holds a bounded, gap-free run of the most recent persisted events and the readers
/// waiting for the next one. Everything a visitor reads is served from here; what is older
/// than the tail (`floor`) is fetched from the relay by the caller.
///
/// Invariant: the log holds exactly the events with `floor < seq <= lastSeq`, consecutive.
/// An event that would leave a hole is refused (`ApplyOutcome.gap`) so the caller can fetch
/// the missing ones first: readers never see a gap.
public final class ConversationLog: Sendable {
    /// What a read of the log found.
    public enum ReadResult: Sendable, Equatable {
        /// The events after the cursor (possibly none), the last sequence number, and whether more follow.
        case events([ConversationEvent], lastSeq: Int64, more: Bool)
        /// The cursor is older than the tail held in memory.
        case notCovered(floor: Int64)
        /// The cursor is beyond anything this conversation has.
        case cursorAhead(lastSeq: Int64)
        /// The conversation left this node (evicted or the node is draining): resume elsewhere.
        case moved
    }

    /// What applying events did.
    public enum ApplyOutcome: Sendable, Equatable {
        /// At least one new event was added.
        case applied
        /// Everything was already held.
        case duplicate
        /// The next event would leave a hole after `lastSeq`; nothing past it was added.
        case gap(lastSeq: Int64)
    }

    private struct State {
        var events: [ConversationEvent] = []
        var head = 0
        var floor: Int64
        var lastSeq: Int64
        var moved = false
        var nextWaiterID: UInt64 = 0
        var waiters: [UInt64: Waiter] = [:]
        var cancelled: Set<UInt64> = []
        var lastActivity: ContinuousClock.Instant = .now
        /// The latest ephemeral event (typing) and a counter that moves with each one.
        var ephemeral: ConversationEvent?
        var ephemeralGeneration: UInt64 = 0

        var count: Int { events.count - head }
    }

    /// Someone waiting for the log's next change: a suspended reader, or a callback (a
    /// WebSocket that has no task while it is idle).
    private enum Waiter {
        case task(CheckedContinuation<Void, Never>)
        case callback(@Sendable () -> Void)

        func wake() {
            switch self {
            case .task(let continuation): continuation.resume()
            case .callback(let callback): callback()
            }
        }
    }

    private let state: Mutex<State>
    /// Most events held at once.
    public let capacity: Int

    /// A log whose memory starts after `floor`, holding `events` (consecutive, starting at `floor + 1`).
    public init(floor: Int64, events: [ConversationEvent] = [], capacity: Int = 1000) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.state = Mutex(State(floor: floor, lastSeq: floor))
        _ = apply(events)
    }

    /// The last sequence number held.
    public var lastSeq: Int64 { state.withLock { $0.lastSeq } }

    /// Whether the conversation left this node (see `markMoved`).
    public var isMoved: Bool { state.withLock { $0.moved } }

    /// The cursor below which reads are not covered by memory.
    public var floor: Int64 { state.withLock { $0.floor } }

    /// When a reader or writer last touched the log, and whether anyone waits on it now.
    public var activity: (last: ContinuousClock.Instant, waiters: Int) {
        state.withLock { ($0.lastActivity, $0.waiters.count) }
    }

    /// Adds committed events in sequence order, skipping those already held.
    @discardableResult
    public func apply(_ events: [ConversationEvent]) -> ApplyOutcome {
        let (outcome, woken): (ApplyOutcome, [Waiter]) = state.withLock { state in
            var added = false
            var outcome = ApplyOutcome.duplicate
            for event in events.sorted(by: { $0.seq < $1.seq }) where event.seq > 0 {
                if event.seq <= state.lastSeq { continue }
                if event.seq != state.lastSeq + 1 {
                    outcome = .gap(lastSeq: state.lastSeq)
                    break
                }
                state.events.append(event)
                state.lastSeq = event.seq
                added = true
            }
            if added {
                if case .duplicate = outcome { outcome = .applied }
                Self.trim(&state, capacity: capacity)
                state.lastActivity = .now
                let woken = Array(state.waiters.values)
                state.waiters.removeAll()
                return (outcome, woken)
            }
            return (outcome, [])
        }
        for waiter in woken { waiter.wake() }
        return outcome
    }

    private static func trim(_ state: inout State, capacity: Int) {
        let excess = state.count - capacity
        if excess > 0 {
            state.head += excess
            state.floor = state.events[state.head - 1].seq
        }
        // Compact once the dead prefix is as large as the live part, so appends stay amortised O(1).
        if state.head > 0 && state.head >= state.count {
            state.events.removeFirst(state.head)
            state.head = 0
        }
    }

    /// The events after `cursor`, at most `limit` of them.
    public func read(after cursor: Int64, limit: Int = Limits.maxEventsPerRead) -> ReadResult {
        state.withLock { state in
            state.lastActivity = .now
            if state.moved { return .moved }
            if cursor < state.floor { return .notCovered(floor: state.floor) }
            if cursor > state.lastSeq { return .cursorAhead(lastSeq: state.lastSeq) }
            // Events are consecutive, so the cursor's position is arithmetic.
            let firstHeldSeq = state.lastSeq - Int64(state.count) + 1
            let offset = Int(cursor + 1 - firstHeldSeq)
            let from = state.head + max(0, offset)
            let to = min(state.events.count, from + limit)
            let slice = from < to ? Array(state.events[from..<to]) : []
            return .events(slice, lastSeq: state.lastSeq, more: to < state.events.count)
        }
    }

    /// Reads after `cursor`, waiting up to `timeout` for a first event if there is none yet.
    ///
    /// Returns early when an event arrives, an ephemeral event is signalled (then possibly with
    /// no events), the log is marked moved, or the task is cancelled.
    public func wait(after cursor: Int64, timeout: Duration, limit: Int = Limits.maxEventsPerRead) async -> ReadResult {
        let first = read(after: cursor, limit: limit)
        guard case .events(let events, _, _) = first, events.isEmpty, timeout > .zero else { return first }
        let id = state.withLock { state -> UInt64 in
            state.nextWaiterID &+= 1
            return state.nextWaiterID
        }
        // A continuation and a timer, no task: an idle reader (one per held visitor) costs little.
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = self.state.withLock { state -> Bool in
                    if state.cancelled.remove(id) != nil || state.moved || state.lastSeq > cursor { return true }
                    state.waiters[id] = .task(continuation)
                    return false
                }
                if resumeNow {
                    continuation.resume()
                    return
                }
                let (seconds, attoseconds) = timeout.components
                let nanoseconds = min(seconds, 86_400) * 1_000_000_000 + attoseconds / 1_000_000_000
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanoseconds))) { [weak self] in
                    self?.expireWaiter(id)
                }
            }
        } onCancel: {
            self.cancelWaiter(id)
        }
        state.withLock { _ = $0.cancelled.remove(id) }
        return read(after: cursor, limit: limit)
    }

    /// Ends a wait at its deadline; one that already ended leaves nothing behind.
    private func expireWaiter(_ id: UInt64) {
        state.withLock { $0.waiters.removeValue(forKey: id) }?.wake()
    }

    private func cancelWaiter(_ id: UInt64) {
        let waiter = state.withLock { state -> Waiter? in
            if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
            state.cancelled.insert(id)
            return nil
        }
        waiter?.wake()
    }

    /// Calls `wake` once, at the next change a reader after `cursor` would see: an event, an
    /// ephemeral event, or a move. Returns nil, and calls nothing, when there is one already;
    /// otherwise a token that `cancelWake` takes back.
    ///
    /// This is how a reader waits without a task: an idle WebSocket is this one entry.
    public func wakeOnChange(after cursor: Int64, _ wake: @escaping @Sendable () -> Void) -> UInt64? {
        state.withLock { state -> UInt64? in
            if state.moved || state.lastSeq > cursor { return nil }
            state.nextWaiterID &+= 1
            state.waiters[state.nextWaiterID] = .callback(wake)
            return state.nextWaiterID
        }
    }

    /// Takes back a `wakeOnChange` that has not fired; one that has fired is already gone.
    public func cancelWake(_ token: UInt64) {
        _ = state.withLock { $0.waiters.removeValue(forKey: token) }
    }

    /// Shows an ephemeral event (typing) to current readers: not stored, never replayed.
    public func signal(_ event: ConversationEvent) {
        let woken = state.withLock { state -> [Waiter] in
            state.ephemeral = event
            state.ephemeralGeneration &+= 1
            let woken = Array(state.waiters.values)
            state.waiters.removeAll()
            return woken
        }
        for waiter in woken { waiter.wake() }
    }

    /// The latest ephemeral event if it is newer than `generation`, with the new generation.
    public func ephemeral(after generation: UInt64) -> (generation: UInt64, event: ConversationEvent?) {
        state.withLock { state in
            (state.ephemeralGeneration, state.ephemeralGeneration > generation ? state.ephemeral : nil)
        }
    }

    /// Marks the conversation as gone from this node and wakes every reader so it can move.
    public func markMoved() {
        let woken = state.withLock { state -> [Waiter] in
            state.moved = true
            let woken = Array(state.waiters.values)
            state.waiters.removeAll()
            return woken
        }
        for waiter in woken { waiter.wake() }
    }
}
