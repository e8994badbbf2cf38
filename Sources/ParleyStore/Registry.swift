import Foundation
import Logging
import ParleyCore
import PostgresNIO

/// The role a node plays in the cluster.
public enum NodeRole: String, Sendable, Codable, CaseIterable {
    case visitorGateway = "visitor_gateway"
    case agentGateway = "agent_gateway"
    case relay
}

/// A node as the registry knows it.
public struct NodeRecord: Sendable, Hashable, Codable {
    public var id: String
    public var role: String
    public var zone: String
    public var publicAddress: String
    public var internalAddress: String
    public var opsAddress: String
    /// `active` or `draining`, as set by an administrator.
    public var state: String
    /// `up` or `down`: whether it has heartbeated within the timeout.
    public var health: String
    public var connections: Int64
    public var startedAt: String
    public var lastSeen: String
    public var secondsSinceSeen: Double

    public init(
        id: String, role: String, zone: String, publicAddress: String, internalAddress: String, opsAddress: String,
        state: String = "active", health: String = "up", connections: Int64 = 0, startedAt: String = "", lastSeen: String = "",
        secondsSinceSeen: Double = 0
    ) {
        self.id = id
        self.role = role
        self.zone = zone
        self.publicAddress = publicAddress
        self.internalAddress = internalAddress
        self.opsAddress = opsAddress
        self.state = state
        self.health = health
        self.connections = connections
        self.startedAt = startedAt
        self.lastSeen = lastSeen
        self.secondsSinceSeen = secondsSinceSeen
    }

    enum CodingKeys: String, CodingKey {
        case id, role, zone, state, health, connections
        case publicAddress = "public_address"
        case internalAddress = "internal_address"
        case opsAddress = "ops_address"
        case startedAt = "started_at"
        case lastSeen = "last_seen"
        case secondsSinceSeen = "seconds_since_seen"
    }
}

/// What a heartbeat learns about the node from the registry.
public struct NodeStatus: Sendable, Hashable {
    public var draining: Bool
    public var removed: Bool
}

/// The node registry in PostgreSQL: who is in the cluster, where, and whether it is draining.
public struct Registry: Sendable {
    /// A node silent for longer than this is shown as down.
    public static let defaultDownAfterSeconds = 10

    let client: PostgresClient
    let logger: Logger

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Registers a starting node (or one that comes back), keeping an administrator's drain.
    public func register(_ node: NodeRecord) async throws -> NodeStatus {
        let rows = try await client.query(
            """
            INSERT INTO nodes (id, role, zone, public_address, internal_address, ops_address, connections, started_at, last_seen)
            VALUES (\(node.id), \(node.role), \(node.zone), \(node.publicAddress), \(node.internalAddress), \(node.opsAddress), \(node.connections), now(), now())
            ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, zone = EXCLUDED.zone, public_address = EXCLUDED.public_address,
                internal_address = EXCLUDED.internal_address, ops_address = EXCLUDED.ops_address,
                connections = EXCLUDED.connections, started_at = now(), last_seen = now()
            RETURNING state
            """, logger: logger)
        var state = "active"
        for try await s in rows.decode(String.self) { state = s }
        return NodeStatus(draining: state == "draining", removed: false)
    }

    /// Refreshes a registered node's heartbeat; a node removed by an administrator is told so and not re-added.
    public func heartbeat(id: String, connections: Int64) async throws -> NodeStatus {
        let rows = try await client.query(
            "UPDATE nodes SET last_seen = now(), connections = \(connections) WHERE id = \(id) RETURNING state", logger: logger)
        for try await state in rows.decode(String.self) { return NodeStatus(draining: state == "draining", removed: false) }
        return NodeStatus(draining: false, removed: true)
    }

    /// Every node, visitor gateways first, then by id.
    public func list(downAfterSeconds: Int = defaultDownAfterSeconds) async throws -> [NodeRecord] {
        try await select(where: "", downAfterSeconds: downAfterSeconds)
    }

    public func node(id: String, downAfterSeconds: Int = defaultDownAfterSeconds) async throws -> NodeRecord? {
        try await select(where: id, downAfterSeconds: downAfterSeconds).first
    }

    private func select(where id: String, downAfterSeconds: Int) async throws -> [NodeRecord] {
        let rows = try await client.query(
            """
            SELECT id, role, zone, public_address, internal_address, ops_address, state, connections,
                   to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                   to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                   extract(epoch FROM now() - last_seen)::float8
            FROM nodes WHERE \(id) = '' OR id = \(id)
            ORDER BY role DESC, id
            """, logger: logger)
        var nodes: [NodeRecord] = []
        for try await (id, role, zone, pub, int, ops, state, conns, started, seen, ago) in rows.decode(
            (String, String, String, String, String, String, String, Int64, String, String, Double).self)
        {
            nodes.append(
                NodeRecord(
                    id: id, role: role, zone: zone, publicAddress: pub, internalAddress: int, opsAddress: ops, state: state,
                    health: ago > Double(downAfterSeconds) ? "down" : "up", connections: conns, startedAt: started, lastSeen: seen,
                    secondsSinceSeen: (ago * 10).rounded() / 10))
        }
        return nodes
    }

    /// Sets a node's administrative state; returns false when no such node exists.
    public func setState(id: String, draining: Bool) async throws -> Bool {
        let rows = try await client.query(
            "UPDATE nodes SET state = \(draining ? "draining" : "active") WHERE id = \(id) RETURNING id", logger: logger)
        for try await _ in rows.decode(String.self) { return true }
        return false
    }

    /// Removes a node; returns false when no such node exists.
    public func remove(id: String) async throws -> Bool {
        let rows = try await client.query("DELETE FROM nodes WHERE id = \(id) RETURNING id", logger: logger)
        for try await _ in rows.decode(String.self) { return true }
        return false
    }

    /// Where the relay delivers to a visitor gateway: its internal address, if registered.
    public func internalAddress(of id: String) async throws -> String? {
        let rows = try await client.query(
            "SELECT internal_address FROM nodes WHERE id = \(id) AND role = 'visitor_gateway'", logger: logger)
        for try await address in rows.decode(String.self) { return address }
        return nil
    }
}
