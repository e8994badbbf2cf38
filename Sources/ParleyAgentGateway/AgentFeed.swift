import Foundation
import Logging
import ParleyCore
import ParleyRuntime
import ParleyStore
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// Everything that happens in the cluster, for connected agents: LISTENs to the relay's
/// NOTIFY channel and fans the events out to every agent WebSocket of this gateway. Messages
/// arrive inside the notification; only large ones and system events are read back. The
/// summaries of conversations that started or changed otherwise than by a message are sent in
/// one query per tick, not one per event.
///
/// After (re)connecting the LISTEN it sends `resync`, since notifications sent while it was
/// away are not replayed: consoles then reload from their cursors.
final class AgentFeed: Service, Sendable {
    private struct State {
        var nextID: UInt64 = 0
        var subscribers: [UInt64: AsyncStream<String>.Continuation] = [:]
        var changed: Set<UUID> = []
    }

    /// How often changed conversations' summaries are sent.
    static let summaryInterval = Duration.milliseconds(100)

    private let state = Mutex(State())
    private let client: PostgresClient
    private let queries: ConversationQueries
    private let logger: Logger

    init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.queries = ConversationQueries(client: client, logger: logger)
        self.logger = logger
    }

    /// A stream of JSON frames for one agent socket, and its continuation, through which the
    /// socket adds its own frames (answers to its replies) in line with the feed's; ends when
    /// `unsubscribe` is called.
    /// With `events` false the stream carries only the socket's own frames: for a client that
    /// only sends (an integration), which the feed's fan-out would otherwise cost a write per event.
    func subscribe(events: Bool = true) -> (UInt64, AsyncStream<String>, AsyncStream<String>.Continuation) {
        // Agents are few; a console too slow for 10,000 frames loses the oldest ones and fills the
        // gap from the events API when it notices a jump in a conversation's seq.
        let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(10_000))
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            if events { state.subscribers[state.nextID] = continuation }
            return state.nextID
        }
        return (id, stream, continuation)
    }

    func unsubscribe(_ id: UInt64, _ continuation: AsyncStream<String>.Continuation) {
        state.withLock { _ = $0.subscribers.removeValue(forKey: id) }
        continuation.finish()
    }

    private func broadcast(_ frame: String) {
        for continuation in state.withLock({ Array($0.subscribers.values) }) { continuation.yield(frame) }
    }

    func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await self.sendSummaries() }
            group.addTask { try await self.listen() }
            try await group.next()
            group.cancelAll()
        }
    }

    /// Sends the summaries of conversations that changed since the last tick, in one query.
    private func sendSummaries() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: Self.summaryInterval)
            let ids = state.withLock { state -> [UUID] in
                defer { state.changed.removeAll(keepingCapacity: true) }
                return Array(state.changed)
            }
            guard !ids.isEmpty else { continue }
            do {
                for summary in try await queries.summaries(ids: ids) {
                    let json = String(decoding: try JSONBody.encoder.encode(summary), as: UTF8.self)
                    broadcast(#"{"type":"conversation","conversation":\#(json)}"#)
                }
            } catch {
                // The next change of each conversation sends it again; a console also reloads on resync.
                logger.warning("could not read conversation summaries", metadata: ["parley.error": "\(describeDatabaseError(error))"])
            }
        }
    }

    private func changed(_ id: UUID) {
        state.withLock { _ = $0.changed.insert(id) }
    }

    private func listen() async throws {
        var backoff = Duration.milliseconds(200)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let attempt = ContinuousClock.now
            do {
                try await cancelWhenGracefulShutdown {
                    try await self.client.withConnection { connection in
                        try await connection.listen(on: EventStore.notifyChannel) { notifications in
                            self.logger.info("listening for cluster events")
                            self.broadcast(#"{"type":"resync"}"#)
                            for try await notification in notifications {
                                await self.handle(notification.payload)
                            }
                        }
                    }
                }
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { break }
                // A LISTEN that held for a while was healthy: start the backoff over.
                if ContinuousClock.now - attempt > .seconds(10) { backoff = .milliseconds(200) }
                logger.warning("event feed lost its LISTEN; reconnecting", metadata: ["parley.error": "\(describeDatabaseError(error))"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
        for continuation in state.withLock({ Array($0.subscribers.values) }) { continuation.finish() }
    }

    private func handle(_ payload: String) async {
        for line in payload.split(separator: "\n") {
            if line.hasPrefix("E ") {
                // A message, inline: relayed as it is. It changes only the summary's last_seq and
                // last_message, which consoles take from the event, so no summary follows it: that
                // was a query, and a frame to every agent, for every message.
                let parts = line.split(separator: " ", maxSplits: 2)
                guard parts.count == 3, let id = UUID(uuidString: String(parts[1])) else { continue }
                broadcast(#"{"type":"event","conversation_id":"\#(id.uuidString.lowercased())","event":\#(parts[2])}"#)
                continue
            }
            let parts = line.split(separator: " ")
            guard parts.count >= 2, let id = UUID(uuidString: String(parts[1])) else { continue }
            do {
                switch parts[0] {
                case "c":
                    changed(id)
                case "t" where parts.count == 3:
                    broadcast(#"{"type":"typing","conversation_id":"\#(id.uuidString.lowercased())","sender":"visitor"}"#)
                case "e" where parts.count == 4:
                    guard let from = Int64(parts[2]), let to = Int64(parts[3]), from <= to else { continue }
                    let page = try await queries.events(conversationID: id, after: from - 1, limit: Int(min(to - from + 1, 500)))
                    var changed = false
                    for event in page.events where event.seq <= to {
                        broadcast(#"{"type":"event","conversation_id":"\#(id.uuidString.lowercased())","event":\#(event.json)}"#)
                        // Claims, transfers and closes change the status or the agent: a summary follows.
                        if event.type != ConversationEvent.Kind.message { changed = true }
                    }
                    if changed { self.changed(id) }
                default:
                    continue
                }
            } catch {
                logger.warning("could not read a notified change", metadata: ["parley.conversation.id": "\(id)", "parley.error": "\(describeDatabaseError(error))"])
            }
        }
    }
}
