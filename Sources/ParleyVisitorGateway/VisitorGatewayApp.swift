import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Hummingbird
import HummingbirdCore
import Logging
import ParleyCore
import ParleyRPC
import ParleyRuntime
import ServiceLifecycle

/// The visitor gateway's configuration, from flags and `PARLEY_` environment variables.
public struct VisitorGatewayConfiguration: Sendable {
    public var nodeID: String
    public var httpListen: HostPort
    public var publicAddress: String
    public var internalListen: HostPort
    public var internalAdvertise: String
    public var opsListen: HostPort
    /// Every relay of the cluster (`relay.address`, comma-separated); calls fail over between them.
    public var relayAddresses: [String]
    /// Mutual TLS on the internal plane (`tls.ca`, `tls.cert`, `tls.key`), or an explicit `internal.plaintext`.
    public var internalSecurity: InternalSecurity
    public var tokenKeys: [String: [UInt8]]
    public var tokenKeyID: String
    public var memoryEvents: Int
    public var secureCookies: Bool
    /// Allowed `Origin`s of browser requests to the API (empty: the gateway's own origin only).
    public var allowedOrigins: [String]
    /// Proxies (the load balancer) whose `X-Forwarded-For` names the client.
    public var trustedProxies: [String]
    public var messagesPerSecond: Double
    public var messagesBurst: Int
    public var startsPerSecond: Double
    public var startsBurst: Int
    /// Identity verification's shared secret (`identity.secret`, at least 32 bytes), and whether
    /// every visitor must present a verified user id (`identity.required`, default true).
    public var identitySecret: String?
    public var identityRequired: Bool
    /// Long-lived connections (WebSocket, SSE, waiting long-polls) one client address may hold.
    public var connectionsPerAddress: Int
    /// Seconds an HTTP connection may sit between requests (or before its first) before it is closed.
    public var idleTimeoutSeconds: Int
    public var webRoot: String?
    public var logLevel: String?

    public init(settings: Settings) throws {
        nodeID = settings.string("node.id", default: "vg-1")
        guard !nodeID.isEmpty, nodeID.count <= 64, nodeID.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw ParleyError(.invalidRequest, "node.id must be 1 to 64 letters, digits, - or _")
        }
        httpListen = try HostPort(settings.string("http.listen", default: "127.0.0.1:8081"))
        publicAddress = settings.optionalString("public.address") ?? httpListen.description
        internalListen = try HostPort(settings.string("internal.listen", default: "127.0.0.1:7201"))
        internalAdvertise = settings.optionalString("internal.advertise") ?? internalListen.description
        opsListen = try HostPort(settings.string("ops.listen", default: "127.0.0.1:7202"))
        relayAddresses = settings.list("relay.address", default: ["127.0.0.1:7100"])
        internalSecurity = try InternalSecurity(
            ca: settings.optionalString("tls.ca"), certificate: settings.optionalString("tls.cert"), key: settings.optionalString("tls.key"),
            plaintext: settings.string("internal.plaintext", default: "false") == "true")
        tokenKeys = try VisitorTokenSigner.parseKeys(try settings.required("visitor.token.keys"))
        tokenKeyID = settings.optionalString("visitor.token.kid") ?? tokenKeys.keys.sorted().last ?? ""
        memoryEvents = try settings.int("memory.events", default: 1000)
        secureCookies = settings.string("secure.cookies", default: "false") == "true"
        allowedOrigins = settings.list("allowed.origins", default: [])
        trustedProxies = settings.list("trusted.proxies", default: [])
        messagesPerSecond = try settings.double("rate.messages.per.second", default: Limits.messagesPerSecond)
        messagesBurst = try settings.int("rate.messages.burst", default: Limits.messagesBurst)
        startsPerSecond = try settings.double("rate.starts.per.second", default: Limits.startsPerSecond)
        startsBurst = try settings.int("rate.starts.burst", default: Limits.startsBurst)
        guard messagesBurst >= 1, startsBurst >= 1 else { throw ParleyError(.invalidRequest, "rate bursts must be at least 1") }
        identitySecret = settings.optionalString("identity.secret")
        identityRequired = settings.string("identity.required", default: "true") == "true"
        connectionsPerAddress = try settings.int("connections.per.address", default: 100)
        idleTimeoutSeconds = try settings.int("http.idle.timeout", default: 30)
        guard connectionsPerAddress >= 1, idleTimeoutSeconds >= 1 else {
            throw ParleyError(.invalidRequest, "connections.per.address and http.idle.timeout must be at least 1")
        }
        webRoot = settings.optionalString("web.root")
        logLevel = settings.optionalString("log.level")
    }
}

/// Builds a visitor gateway: public HTTP API and chat page, the internal delivery endpoint, ops.
public enum VisitorGatewayApp {
    public static func serviceGroup(configuration: VisitorGatewayConfiguration, logger: Logger) throws -> ServiceGroup {
        ParleyMetrics.bootstrap()
        let relay = try RelayLink(addresses: configuration.relayAddresses, security: configuration.internalSecurity)
        let tokens = try VisitorTokenSigner(keys: configuration.tokenKeys, currentKeyID: configuration.tokenKeyID)
        let health = NodeHealth()
        let hub = ConversationHub(relay: relay, nodeID: configuration.nodeID, capacity: configuration.memoryEvents, logger: logger)
        let api = VisitorAPI(
            nodeID: configuration.nodeID, hub: hub, relay: relay, tokens: tokens,
            identity: try configuration.identitySecret.map { try IdentityVerifier(secret: Array($0.utf8), required: configuration.identityRequired) },
            health: health, secureCookies: configuration.secureCookies,
            clients: ClientAddress(trustedProxies: Set(configuration.trustedProxies)),
            messageLimiter: RateLimiter(perSecond: configuration.messagesPerSecond, burst: configuration.messagesBurst),
            startLimiter: RateLimiter(perSecond: configuration.startsPerSecond, burst: configuration.startsBurst),
            connectionCaps: AddressConnectionCaps(limit: configuration.connectionsPerAddress))

        let webRoot = configuration.webRoot ?? Bundle.module.resourceURL!.appendingPathComponent("Public").path
        let router = makeWebRouter(VisitorRequestContext.self, webRoot: webRoot, logger: logger)
        router.add(middleware: OriginMiddleware(allowed: configuration.allowedOrigins))
        api.register(on: router)
        let sockets = VisitorSockets(api: api, allowedOrigins: configuration.allowedOrigins)
        let http1 = HTTP1Channel.Configuration(idleTimeout: .seconds(Int64(configuration.idleTimeoutSeconds)))
        let responder = router.buildResponder()
        let routed = RoutedResponder(router: responder, logger: logger)
        let app = Application(
            responder: responder,
            // Requests reach the router through `RoutedRequestHandler`, not Hummingbird's own loop.
            server: HTTPServerBuilder { _ in VisitorChannel(responder: routed, http1: http1, sockets: sockets) },
            configuration: .init(address: .hostname(configuration.httpListen.host, port: configuration.httpListen.port), serverName: nil),
            logger: logger)

        let delivery = GRPCServer(
            transport: .http2NIOPosix(
                address: .ipv4(host: configuration.internalListen.host, port: configuration.internalListen.port),
                transportSecurity: configuration.internalSecurity.server, config: InternalPlane.serverConfig),
            services: [DeliveryHandler(hub: hub, security: configuration.internalSecurity)])
        var node = Parley_V1_NodeInfo()
        node.id = configuration.nodeID
        node.role = "visitor_gateway"
        node.zone = "edge"
        node.publicAddress = configuration.publicAddress
        node.internalAddress = configuration.internalAdvertise
        node.opsAddress = configuration.opsListen.description
        let lifecycle = NodeLifecycle(
            node: node, relay: relay, hub: hub, health: health, connections: api.connections, interval: .seconds(2), logger: logger)
        let ops = OpsServer.application(
            address: configuration.opsListen, health: health, nodeID: configuration.nodeID, role: "visitor_gateway", logger: logger)
        return ServiceGroup(
            configuration: .parley(
                services: relay.services.map { .init(service: $0) } + [
                    .init(service: GRPCServerService(delivery)),
                    .init(service: hub),
                    .init(service: app),
                    // Shut down after the lifecycle has told every conversation to move, before the
                    // relay links close: sockets still tell their visitors so.
                    .init(service: sockets),
                    .init(service: ops),
                    .init(service: lifecycle),
                ],
                logger: logger))
    }
}
