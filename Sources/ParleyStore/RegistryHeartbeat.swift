import Logging
import ServiceLifecycle

/// Keeps a node that reaches PostgreSQL itself (relay, agent gateway) in the registry:
/// registers at start-up, then heartbeats until shutdown. A database outage is logged and
/// retried; the node shows as down meanwhile, which is the truth.
public struct RegistryHeartbeat: Service {
    let registry: Registry
    let node: NodeRecord
    let interval: Duration
    let logger: Logger
    let onStatus: @Sendable (NodeStatus) -> Void

    public init(registry: Registry, node: NodeRecord, interval: Duration = .seconds(2), logger: Logger, onStatus: @escaping @Sendable (NodeStatus) -> Void = { _ in }) {
        self.registry = registry
        self.node = node
        self.interval = interval
        self.logger = logger
        self.onStatus = onStatus
    }

    public func run() async throws {
        var registered = false
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                let status: NodeStatus
                if registered {
                    status = try await registry.heartbeat(id: node.id, connections: 0)
                } else {
                    status = try await registry.register(node)
                    registered = true
                    logger.info("registered in the node registry")
                }
                onStatus(status)
            } catch {
                logger.warning("registry heartbeat failed", metadata: ["parley.error": "\(describeDatabaseError(error))"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
