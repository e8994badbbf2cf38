import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import ParleyCore
import ParleyRPC
import ParleyRuntime
import ParleyStore
import PostgresNIO
import ServiceLifecycle

/// The agent gateway's configuration, from flags and `PARLEY_` environment variables.
public struct AgentGatewayConfiguration: Sendable {
    public var nodeID: String
    public var httpListen: HostPort
    public var opsListen: HostPort
    /// Every relay of the cluster (`relay.address`, comma-separated); calls fail over between them.
    public var relayAddresses: [String]
    public var databaseURL: DatabaseURL
    /// Mutual TLS on the internal plane (`tls.ca`, `tls.cert`, `tls.key`), or an explicit `internal.plaintext`.
    public var internalSecurity: InternalSecurity
    public var secureCookies: Bool
    public var webRoot: String?
    public var logLevel: String?

    public init(settings: Settings) throws {
        nodeID = settings.string("node.id", default: "ag-1")
        httpListen = try HostPort(settings.string("http.listen", default: "127.0.0.1:8090"))
        opsListen = try HostPort(settings.string("ops.listen", default: "127.0.0.1:7302"))
        relayAddresses = settings.list("relay.address", default: ["127.0.0.1:7100"])
        databaseURL = try DatabaseURL(try settings.required("database.url"))
        internalSecurity = try InternalSecurity(
            ca: settings.optionalString("tls.ca"), certificate: settings.optionalString("tls.cert"), key: settings.optionalString("tls.key"),
            plaintext: settings.string("internal.plaintext", default: "false") == "true")
        secureCookies = settings.string("secure.cookies", default: "false") == "true"
        webRoot = settings.optionalString("web.root")
        logLevel = settings.optionalString("log.level")
    }
}

/// Builds an agent gateway: agent API and console, the cluster event feed, ops.
public enum AgentGatewayApp {
    public static func serviceGroup(configuration: AgentGatewayConfiguration, logger: Logger) throws -> ServiceGroup {
        ParleyMetrics.bootstrap()
        let postgres = PostgresClient(configuration: configuration.databaseURL.clientConfiguration(maxConnections: 8), backgroundLogger: logger)
        let relay = try RelayLink(addresses: configuration.relayAddresses, security: configuration.internalSecurity)
        let feed = AgentFeed(client: postgres, logger: logger)
        let api = AgentAPI(
            agents: AgentStore(client: postgres, logger: logger), queries: ConversationQueries(client: postgres, logger: logger),
            audit: AuditLog(client: postgres, logger: logger), relay: relay, feed: feed, secureCookies: configuration.secureCookies)
        let webRoot = configuration.webRoot ?? Bundle.module.resourceURL!.appendingPathComponent("Public").path
        let router = makeWebRouter(BasicWebSocketRequestContext.self, webRoot: webRoot, logger: logger)
        api.register(on: router)
        let app = Application(
            router: router,
            server: .http1WebSocketUpgrade(webSocketRouter: router, configuration: .init(maxFrameSize: Limits.requestBodyMaxBytes)),
            configuration: .init(address: .hostname(configuration.httpListen.host, port: configuration.httpListen.port), serverName: nil),
            logger: logger)
        let health = NodeHealth()
        health.set(.ready)
        let ops = OpsServer.application(
            address: configuration.opsListen, health: health, nodeID: configuration.nodeID, role: "agent_gateway", logger: logger)
        let heartbeat = RegistryHeartbeat(
            registry: Registry(client: postgres, logger: logger),
            node: NodeRecord(
                id: configuration.nodeID, role: NodeRole.agentGateway.rawValue, zone: "internal",
                publicAddress: configuration.httpListen.description, internalAddress: "", opsAddress: configuration.opsListen.description),
            logger: logger,
            onStatus: { status in health.set(status.draining || status.removed ? .draining : .ready) })
        return ServiceGroup(
            configuration: .parley(
                services: relay.services.map { .init(service: $0) } + [
                    .init(service: postgres),
                    .init(service: feed),
                    .init(service: heartbeat),
                    .init(service: ops),
                    .init(service: app),
                ],
                logger: logger))
    }
}
