import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Metrics
import ParleyCore
import ParleyRPC
import ServiceLifecycle
import Synchronization

/// Writes committed events to the one visitor gateway each conversation is pinned to.
///
/// Each node has its own ordered outbox and a worker that drains it into the node's delivery
/// stream (`DeliverStream`), gathering whatever is waiting into one request. A node that
/// cannot be reached is retried with backoff; after `giveUpAfter` its outbox is dropped and
/// the conversations are remembered, and the node's next heartbeat tells it to refresh them
/// from the relay. So nothing is lost: the events are in PostgreSQL, and the gateway fetches
/// what it missed before serving again.
public final class DeliveryDispatcher: Service, Sendable {
    /// Resolves a node id to its internal address (from the registry).
    public typealias Resolve = @Sendable (String) async throws -> String?

    enum Item: Sendable {
        case events(UUID, [ConversationEvent])
        case evict(UUID)
    }

    private struct Outbox {
        var items: [Item] = []
        var wakeup: CheckedContinuation<Void, Never>?
        var resync: Set<UUID> = []
    }

    private struct State {
        var outboxes: [String: Outbox] = [:]
        var newNodes: AsyncStream<String>.Continuation?
        var stopped = false
    }

    private let state = Mutex(State())
    private let resolve: Resolve
    private let logger: Logger
    private let giveUpAfter: Duration
    private let maxOutbox: Int
    private let security: InternalSecurity
    private let delivered = Counter(label: "parley_relay_deliveries_total")
    private let failed = Counter(label: "parley_relay_delivery_failures_total")

    public init(
        resolve: @escaping Resolve, security: InternalSecurity, logger: Logger, giveUpAfter: Duration = .seconds(15), maxOutbox: Int = 50_000
    ) {
        self.resolve = resolve
        self.security = security
        self.logger = logger
        self.giveUpAfter = giveUpAfter
        self.maxOutbox = maxOutbox
    }

    /// Queues committed events of one conversation for its pinned node.
    public func deliver(to node: String, conversation: UUID, events: [ConversationEvent]) {
        enqueue(node, .events(conversation, events))
    }

    /// Tells a node that one of its conversations moved elsewhere.
    public func evict(at node: String, conversation: UUID) {
        enqueue(node, .evict(conversation))
    }

    /// The conversations a node must refresh, handed out once.
    public func takeResync(for node: String) -> [UUID] {
        state.withLock { state in
            guard let ids = state.outboxes[node]?.resync, !ids.isEmpty else { return [] }
            state.outboxes[node]?.resync = []
            return Array(ids)
        }
    }

    private func enqueue(_ node: String, _ item: Item) {
        let (wakeup, newNode): (CheckedContinuation<Void, Never>?, AsyncStream<String>.Continuation?) = state.withLock { state in
            if state.stopped { return (nil, nil) }
            let isNew = state.outboxes[node] == nil
            var outbox = state.outboxes[node] ?? Outbox()
            if outbox.items.count >= maxOutbox {
                // A node this far behind is unreachable: its visitors resume from the database.
                if case .events(let id, _) = item { outbox.resync.insert(id) }
            } else {
                outbox.items.append(item)
            }
            let wakeup = outbox.wakeup
            outbox.wakeup = nil
            state.outboxes[node] = outbox
            return (wakeup, isNew ? state.newNodes : nil)
        }
        wakeup?.resume()
        newNode?.yield(node)
    }

    public func run() async throws {
        let (nodes, continuation) = AsyncStream.makeStream(of: String.self)
        let existing = state.withLock { state -> [String] in
            state.newNodes = continuation
            return Array(state.outboxes.keys)
        }
        for node in existing { continuation.yield(node) }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withDiscardingTaskGroup { group in
                    for await node in nodes {
                        group.addTask { await self.work(node: node) }
                    }
                }
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            self.stop()
        }
    }

    private func stop() {
        let wakeups = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.stopped = true
            state.newNodes?.finish()
            var wakeups: [CheckedContinuation<Void, Never>] = []
            for key in state.outboxes.keys {
                if let wakeup = state.outboxes[key]?.wakeup { wakeups.append(wakeup) }
                state.outboxes[key]?.wakeup = nil
            }
            return wakeups
        }
        for wakeup in wakeups { wakeup.resume() }
    }

    /// Waits for the node's outbox to fill, then takes everything in it.
    private func next(_ node: String) async -> [Item]? {
        while true {
            var items: [Item] = []
            var stopped = false
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    stopped = state.stopped
                    if let outbox = state.outboxes[node], !outbox.items.isEmpty {
                        items = outbox.items
                        state.outboxes[node]?.items = []
                        return true
                    }
                    if stopped { return true }
                    state.outboxes[node]?.wakeup = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
            if !items.isEmpty { return items }
            if stopped { return nil }
        }
    }

    /// Drains one node's outbox. Each connection's `runConnections()` is a child task of this
    /// worker, so nothing outlives it.
    private func work(node: String) async {
        await withDiscardingTaskGroup { connections in
            var client: GRPCClient<HTTP2ClientTransport.Posix>?
            var stream: StreamedCalls<Parley_V1_DeliverRequest, Parley_V1_DeliverResponse>?
            defer {
                stream?.finish()
                client?.beginGracefulShutdown()
            }
            while let items = await next(node) {
                let request = Self.request(items)
                var backoff = Duration.milliseconds(50)
                let firstAttempt = ContinuousClock.now
                while true {
                    do {
                        if client == nil {
                            guard let address = try await resolve(node) else {
                                throw ParleyError(.notFound, "node \(node) is not registered")
                            }
                            let connected = try InternalPlane.client(address, security: security, serverName: PeerRole.nodeDNSName(node))
                            connections.addTask { try? await connected.runConnections() }
                            client = connected
                        }
                        let open = stream.flatMap { $0.isEnded ? nil : $0 } ?? Self.stream(client!)
                        stream = open
                        _ = try await open.send(request)
                        delivered.increment(by: items.count)
                        break
                    } catch {
                        failed.increment()
                        // The node may have restarted elsewhere: resolve its address again next time.
                        stream?.finish()
                        stream = nil
                        client?.beginGracefulShutdown()
                        client = nil
                        if ContinuousClock.now - firstAttempt > giveUpAfter || state.withLock({ $0.stopped }) {
                            giveUp(node: node, items: items, error: error)
                            break
                        }
                        try? await Task.sleep(for: backoff)
                        backoff = min(backoff * 2, .seconds(2))
                    }
                }
            }
        }
    }

    private func giveUp(node: String, items: [Item], error: any Error) {
        // Evictions are resynced too: refreshing a conversation that moved away drops its stale tail.
        let ids = items.map { item -> UUID in
            switch item {
            case .events(let id, _), .evict(let id): id
            }
        }
        logger.warning(
            "giving up delivering to a node; its conversations will resync",
            metadata: ["parley.target.node": "\(node)", "parley.conversations": "\(Set(ids).count)", "parley.error": "\(error)"])
        state.withLock { state in
            state.outboxes[node]?.resync.formUnion(ids)
        }
    }

    /// The node's delivery stream: one long-lived call carries every delivery, each answered
    /// within 5 s once its events are in the node's memory.
    private static func stream(
        _ client: GRPCClient<HTTP2ClientTransport.Posix>
    ) -> StreamedCalls<Parley_V1_DeliverRequest, Parley_V1_DeliverResponse> {
        let delivery = Parley_V1_Delivery.Client(wrapping: client)
        return StreamedCalls(timeout: .seconds(5)) { try await delivery.deliverStream(requestProducer: $0, onResponse: $1) }
    }

    static func request(_ items: [Item]) -> Parley_V1_DeliverRequest {
        var request = Parley_V1_DeliverRequest()
        for item in items {
            switch item {
            case .events(let id, let events):
                var batch = Parley_V1_ConversationEvents()
                batch.conversationID = id.uuidString.lowercased()
                batch.events = events.map(Parley_V1_Event.init)
                request.batches.append(batch)
            case .evict(let id):
                request.evictConversationIds.append(id.uuidString.lowercased())
            }
        }
        return request
    }
}
