import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ParleyCore
import ParleyRPC
import ParleyRuntime
import ParleyStore
import PostgresNIO
import ServiceLifecycle

/// The relay's configuration, from flags and `PARLEY_` environment variables.
public struct RelayConfiguration: Sendable {
    public var nodeID: String
    public var databaseURL: DatabaseURL
    /// Where the gRPC server listens, and the address other nodes are told.
    public var grpcListen: HostPort
    public var grpcAdvertise: String
    public var opsListen: HostPort
    /// Mutual TLS on the internal plane (`tls.ca`, `tls.cert`, `tls.key`), or an explicit `internal.plaintext`.
    public var internalSecurity: InternalSecurity
    public var commitWindow: Duration
    public var maxBatch: Int
    public var logLevel: String?

    public init(settings: Settings) throws {
        nodeID = settings.string("node.id", default: "relay-1")
        databaseURL = try DatabaseURL(try settings.required("database.url"))
        grpcListen = try HostPort(settings.string("grpc.listen", default: "127.0.0.1:7100"))
        grpcAdvertise = settings.optionalString("grpc.advertise") ?? grpcListen.description
        opsListen = try HostPort(settings.string("ops.listen", default: "127.0.0.1:7101"))
        internalSecurity = try InternalSecurity(
            ca: settings.optionalString("tls.ca"), certificate: settings.optionalString("tls.cert"), key: settings.optionalString("tls.key"),
            plaintext: settings.string("internal.plaintext", default: "false") == "true")
        commitWindow = .microseconds(try settings.int("commit.window.us", default: 0))
        maxBatch = try settings.int("commit.max.batch", default: 256)
        logLevel = settings.optionalString("log.level")
    }
}

/// Builds the relay: PostgreSQL client, group committer, delivery dispatcher, gRPC server, ops listener.
public enum RelayApp {
    public static func serviceGroup(configuration: RelayConfiguration, logger: Logger) -> ServiceGroup {
        ParleyMetrics.bootstrap()
        let postgres = PostgresClient(configuration: configuration.databaseURL.clientConfiguration(maxConnections: 8), backgroundLogger: logger)
        let events = EventStore(client: postgres, logger: logger)
        let registry = Registry(client: postgres, logger: logger)
        let dispatcher = DeliveryDispatcher(
            resolve: { try await registry.internalAddress(of: $0) }, security: configuration.internalSecurity, logger: logger)
        let committer = GroupCommitter(
            maxBatch: configuration.maxBatch, window: configuration.commitWindow, logger: logger,
            commit: { items in try await events.append(items) },
            committed: { results in
                for (item, outcome, origin) in results {
                    // The visitor's own gateway already has its message from the reply.
                    if case .stored(let event, let node?) = outcome, node != origin {
                        dispatcher.deliver(to: node, conversation: item.conversationID, events: [event])
                    }
                }
            })
        let service = RelayService(
            events: events, registry: registry, committer: committer, dispatcher: dispatcher, security: configuration.internalSecurity, logger: logger)
        let server = GRPCServer(
            transport: .http2NIOPosix(
                address: .ipv4(host: configuration.grpcListen.host, port: configuration.grpcListen.port),
                transportSecurity: configuration.internalSecurity.server, config: InternalPlane.serverConfig),
            services: [service])
        let health = NodeHealth()
        health.set(.ready)
        let ops = OpsServer.application(address: configuration.opsListen, health: health, nodeID: configuration.nodeID, role: "relay", logger: logger)
        let heartbeat = RegistryHeartbeat(
            registry: registry,
            node: NodeRecord(
                id: configuration.nodeID, role: NodeRole.relay.rawValue, zone: "internal", publicAddress: "",
                internalAddress: configuration.grpcAdvertise, opsAddress: configuration.opsListen.description),
            logger: logger)
        // Shut down in reverse: stop taking RPCs first, then flush commits and deliveries, then the database.
        return ServiceGroup(
            configuration: .parley(
                services: [
                    .init(service: postgres),
                    .init(service: committer),
                    .init(service: dispatcher),
                    .init(service: heartbeat),
                    .init(service: ops),
                    .init(service: GRPCServerService(server)),
                ],
                logger: logger))
    }
}
