import Foundation
import Logging
import Metrics
import ParleyCore
import ParleyRPC
import ServiceLifecycle
import Synchronization

/// The conversations pinned to this node, in memory.
///
/// A conversation not in memory (new node after a failover, restart, idle eviction) is loaded
/// through the relay's `Resume`, which also re-pins it here. Events that would leave a gap are
/// never shown: the hub fetches the missing ones from the relay first.
package final class ConversationHub: Service, Sendable {
    private let logs = Mutex<[UUID: ConversationLog]>([:])
    /// Resumes in flight, and whether an eviction arrived meanwhile: such an eviction may be
    /// for the pin this resume is taking, so the log it builds must not be trusted.
    private let resuming = Mutex<[UUID: (count: Int, evicted: Bool)]>([:])
    private let relay: RelayLink
    private let nodeID: String
    private let capacity: Int
    private let idleAfter: Duration
    private let logger: Logger
    private let inMemory = Gauge(label: "parley_gateway_conversations_in_memory")

    package init(relay: RelayLink, nodeID: String, capacity: Int, idleAfter: Duration = .seconds(600), logger: Logger) {
        self.relay = relay
        self.nodeID = nodeID
        self.capacity = capacity
        self.idleAfter = idleAfter
        self.logger = logger
    }

    package func existing(_ id: UUID) -> ConversationLog? {
        logs.withLock { $0[id] }
    }

    /// Registers a conversation this node just started.
    package func started(_ id: UUID) -> ConversationLog {
        let log = ConversationLog(floor: 0, capacity: capacity)
        logs.withLock { $0[id] = log }
        return log
    }

    /// The conversation's log, resuming it through the relay if this node does not hold it.
    package func open(_ id: UUID, cursor: Int64) async throws -> ConversationLog {
        for _ in 0..<3 {
            if let log = existing(id), !log.isMoved { return log }
            resuming.withLock { $0[id, default: (0, false)].count += 1 }
            let page: Parley_V1_ResumeResponse
            do {
                page = try await relay.resume(conversation: id, node: nodeID, after: cursor)
            } catch {
                _ = finishResume(id)
                throw error
            }
            let log = ConversationLog(floor: page.floor, events: page.events.map(\.domain), capacity: capacity)
            // Another node re-pinned the conversation while this resume was in flight: its
            // eviction found no log to mark, and this one could wait forever. Resume again.
            if finishResume(id) { continue }
            let kept = logs.withLock { logs -> ConversationLog in
                if let current = logs[id], !current.isMoved { return current }
                logs[id] = log
                return log
            }
            inMemory.record(count)
            // Events committed after the relay's read were delivered here before this log existed,
            // and so dropped: fetch them now. Later deliveries find the log.
            if kept === log { await fill(id, log) }
            return kept
        }
        throw ParleyError(.unavailable, "the conversation keeps moving between nodes; retry")
    }

    /// Ends one resume of `id`; true when an eviction arrived while it was in flight.
    private func finishResume(_ id: UUID) -> Bool {
        resuming.withLock { resuming in
            guard var entry = resuming[id] else { return false }
            let evicted = entry.evicted
            entry.count -= 1
            resuming[id] = entry.count == 0 ? nil : entry
            return evicted
        }
    }

    /// Drops a conversation and wakes its readers so they reload it.
    package func evict(_ id: UUID) {
        resuming.withLock { resuming in
            if resuming[id] != nil { resuming[id]!.evicted = true }
        }
        let log = logs.withLock { $0.removeValue(forKey: id) }
        log?.markMoved()
    }

    /// Applies events delivered by the relay; fetches what is missing on a gap.
    package func delivered(_ id: UUID, events: [ConversationEvent]) async {
        guard let log = existing(id) else { return }
        for event in events where event.seq == 0 { log.signal(event) }
        if case .gap = log.apply(events) { await fill(id, log) }
    }

    /// Brings a conversation up to date from the relay (after a gap, or a resync the relay asked for).
    package func fill(_ id: UUID, _ log: ConversationLog) async {
        do {
            while true {
                let page = try await relay.history(conversation: id, after: log.lastSeq)
                log.apply(page.events.map(\.domain))
                if !page.more || page.events.isEmpty { break }
            }
        } catch {
            logger.warning("could not fill a conversation from the relay", metadata: ["parley.conversation.id": "\(id)", "parley.error": "\(error)"])
        }
    }

    package func refresh(_ ids: [UUID]) async {
        for id in ids {
            if let log = existing(id) { await fill(id, log) }
        }
    }

    /// Refreshes every conversation held that missed events: one check per thousand asks the
    /// relay which ones, and only those are read. Reading each one back would send a gateway of
    /// 20,000 visitors into 20,000 calls at the moment the relay is recovering.
    package func refreshAll() async {
        let all = logs.withLock { Array($0) }
        var stale: [(UUID, ConversationLog)] = []
        var index = all.startIndex
        while index < all.endIndex {
            let chunk = all[index..<min(index + 1000, all.endIndex)]
            index = chunk.endIndex
            do {
                let ids = Set(try await relay.stale(node: nodeID, cursors: chunk.map { ($0.key, $0.value.lastSeq) }))
                stale += chunk.filter { ids.contains($0.key) }.map { ($0.key, $0.value) }
            } catch {
                // The relay is still unwell: read these back one by one, as before.
                logger.warning("could not check conversations with the relay", metadata: ["parley.error": "\(error)"])
                stale += chunk.map { ($0.key, $0.value) }
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for (index, (id, log)) in stale.enumerated() {
                if index >= 16 { await group.next() }
                group.addTask { await self.fill(id, log) }
            }
        }
    }

    /// Tells every reader to move (the node is draining).
    package func moveEveryone() {
        let all = logs.withLock { logs -> [ConversationLog] in
            defer { logs.removeAll() }
            return Array(logs.values)
        }
        for log in all { log.markMoved() }
    }

    package var count: Int { logs.withLock { $0.count } }

    /// Forgets conversations nobody has touched for a while; they resume from the relay when needed.
    package func run() async throws {
        // Cancellation (a sibling service failed) ends it too: the sleep below then returns at
        // once, and the loop would spin.
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(30)) }
            let now = ContinuousClock.now
            logs.withLock { logs in
                logs = logs.filter { _, log in
                    let activity = log.activity
                    return activity.waiters > 0 || now - activity.last < idleAfter
                }
            }
            inMemory.record(count)
        }
    }
}
