import Foundation
import Logging
import ParleyCore
import ParleyRPC
import ParleyRuntime
import ServiceLifecycle
import Synchronization

/// Registers this visitor gateway through the relay and heartbeats; follows the registry's
/// drain state (health fails, visitors are told to move) and the relay's resync requests.
struct NodeLifecycle: Service {
    let node: Parley_V1_NodeInfo
    let relay: RelayLink
    let hub: ConversationHub
    let health: NodeHealth
    let connections: ConnectionCounter
    let interval: Duration
    let logger: Logger

    func run() async throws {
        await withGracefulShutdownHandler {
            // Every relay hears from this node itself: each keeps its own resync requests and
            // instance id, and any of them may be the one delivering to this node.
            await withTaskGroup(of: Void.self) { group in
                for link in relay.each {
                    group.addTask { await heartbeat(link) }
                }
            }
        } onGracefulShutdown: {
            // SIGTERM: fail the health check first so the load balancer stops sending visitors here.
            health.set(.stopping)
            hub.moveEveryone()
        }
    }

    private func heartbeat(_ link: RelayLink) async {
        // A refresh runs beside the heartbeats, never blocking them, and one at a time: a relay
        // that stops hearing a node's heartbeats stops delivering to it.
        var refreshing: Task<Void, Never>?
        defer { refreshing?.cancel() }
        var registered = false
        var relayInstance = ""
        var lastBeatFailed = false
        var logger = logger
        logger[metadataKey: "parley.relay"] = "\(link.addresses[0])"
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                var request = Parley_V1_RegisterNodeRequest()
                request.node = node
                request.node.connections = Int64(connections.current)
                request.heartbeat = registered
                let registration = request
                let response = try await untilCancelled { try await link.register(registration) }
                if !registered { logger.info("registered with the relay") }
                registered = true
                apply(draining: response.draining || response.removed)
                if response.removed { logger.warning("this node was removed from the registry; it takes no new visitors") }
                if (lastBeatFailed || response.relayInstance != relayInstance) && !relayInstance.isEmpty {
                    // Deliveries may have been lost with the relay or the link: catch up on everything held.
                    logger.info("relay restarted or was unreachable; refreshing conversations in memory")
                    let previous = refreshing
                    refreshing = Task {
                        await previous?.value
                        await hub.refreshAll()
                    }
                } else if !response.resyncConversationIds.isEmpty {
                    let previous = refreshing
                    let ids = response.resyncConversationIds.compactMap(UUID.init(uuidString:))
                    refreshing = Task {
                        await previous?.value
                        await hub.refresh(ids)
                    }
                }
                relayInstance = response.relayInstance
                lastBeatFailed = false
            } catch {
                lastBeatFailed = true
                logger.warning("heartbeat to the relay failed", metadata: ["parley.error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }

    private func apply(draining: Bool) {
        switch (health.current, draining) {
        case (.starting, false), (.draining, false):
            health.set(.ready)
            logger.info("ready")
        case (.starting, true), (.ready, true):
            health.set(.draining)
            logger.info("draining: asking connected visitors to move")
            hub.moveEveryone()
        default:
            break
        }
    }
}

/// Runs `call` in a task of its own and returns its result, or throws `CancellationError` as soon
/// as the caller is cancelled, leaving the call behind. A registration made while the gRPC
/// client was starting, when a sibling service failed and cancelled the group, could wait for
/// ever, past its deadline and its cancellation, and keep the process from exiting (one start
/// in three or four of `test_a_gateway_that_cannot_start_exits_instead_of_hanging`).
func untilCancelled<T: Sendable>(_ call: @escaping @Sendable () async throws -> T) async throws -> T {
    // Whichever comes first, the call's result or the cancellation, settles the wait once.
    let race = Race<T>()
    let task = Task {
        do { race.settle(.success(try await call())) } catch { race.settle(.failure(error)) }
    }
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { race.wait($0) }
    } onCancel: {
        task.cancel()
        race.settle(.failure(CancellationError()))
    }
}

private final class Race<T: Sendable>: Sendable {
    private enum State {
        case open
        case waiting(CheckedContinuation<T, any Error>)
        case settled(Result<T, any Error>)
        case done
    }

    private let state = Mutex(State.open)

    func wait(_ continuation: CheckedContinuation<T, any Error>) {
        let settled: Result<T, any Error>? = state.withLock { state in
            guard case .settled(let result) = state else {
                state = .waiting(continuation)
                return nil
            }
            state = .done
            return result
        }
        if let settled { continuation.resume(with: settled) }
    }

    func settle(_ result: Result<T, any Error>) {
        let waiting: CheckedContinuation<T, any Error>? = state.withLock { state in
            switch state {
            case .open:
                state = .settled(result)
                return nil
            case .waiting(let continuation):
                state = .done
                return continuation
            case .settled, .done:
                return nil
            }
        }
        waiting?.resume(with: result)
    }
}
