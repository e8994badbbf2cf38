import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ParleyAdmin
import ParleyCore
import ParleyRPC
import ParleyStore
import PostgresNIO
import Testing
import X509

@testable import ParleyRelay

/// The internal plane's mutual TLS and role checks, on a real gRPC server over loopback.
/// Every call here is refused before the relay would touch its database.
@Suite struct InternalTLSTests {
    /// A CA with certificates for a relay, a visitor gateway and an agent gateway, and a second,
    /// unrelated CA with a certificate that claims the visitor gateway role.
    struct Certificates {
        let folder: URL
        let relay: InternalSecurity
        let visitorGateway: InternalSecurity
        let agentGateway: InternalSecurity
        let stranger: InternalSecurity

        init() throws {
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("parley-tls-\(UUID().uuidString)")
            let ca = try CertificateAuthority.create(in: folder.appendingPathComponent("ca"))
            func security(_ role: PeerRole, _ node: String, _ ca: CertificateAuthority) throws -> InternalSecurity {
                let (cert, key) = try ca.issue(role: role, node: node, hosts: ["127.0.0.1"], output: ca.folder)
                return try InternalSecurity(
                    ca: ca.folder.appendingPathComponent("ca.pem").path, certificate: cert.path, key: key.path, plaintext: false)
            }
            relay = try security(.relay, "relay-1", ca)
            visitorGateway = try security(.visitorGateway, "vg-1", ca)
            agentGateway = try security(.agentGateway, "ag-1", ca)
            let other = try CertificateAuthority.create(in: folder.appendingPathComponent("other"))
            stranger = try security(.visitorGateway, "vg-1", other)
        }
    }

    /// Runs a relay service on a free port with `server` security and hands `body` its address.
    func withRelay(_ server: InternalSecurity, _ body: (String) async throws -> Void) async throws {
        let logger = Logger(label: "test")
        // Never run: every call in these tests is refused before a query.
        let postgres = PostgresClient(
            configuration: .init(host: "127.0.0.1", port: 1, username: "nobody", password: nil, database: nil, tls: .disable),
            backgroundLogger: logger)
        let events = EventStore(client: postgres, logger: logger)
        let service = RelayService(
            events: events, registry: Registry(client: postgres, logger: logger),
            committer: GroupCommitter(maxBatch: 1, window: .zero, logger: logger) { _ in [] },
            dispatcher: DeliveryDispatcher(resolve: { _ in nil }, security: server, logger: logger), security: server, logger: logger)
        let grpc = GRPCServer(
            transport: .http2NIOPosix(
                address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: server.server, config: InternalPlane.serverConfig),
            services: [service])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await grpc.serve() }
            // Cancelled, not drained: a connection whose handshake the client refused can keep a
            // graceful shutdown waiting (the services bound theirs with a maximum duration).
            defer { group.cancelAll() }
            guard let address = try await grpc.listeningAddress?.ipv4 else { throw ParleyError(.internalError, "no address") }
            try await body("127.0.0.1:\(address.port)")
        }
    }

    /// Calls through a `RelayLink` with `client` security and returns the error code, if any.
    func code(_ address: String, _ client: InternalSecurity, _ call: (RelayLink) async throws -> Void) async throws -> ParleyError.Code? {
        let link = try RelayLink(addresses: [address], security: client)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for grpc in link.grpcClients { group.addTask { try await grpc.runConnections() } }
            // Cancelled: a link's append stream stays open until its gateway shuts down.
            defer { group.cancelAll() }
            do {
                try await call(link)
                return nil
            } catch let error as ParleyError {
                return error.code
            }
        }
    }

    /// Expects the call to fail with `expected` (nil: to succeed).
    func expect(
        _ expected: ParleyError.Code?, _ address: String, _ client: InternalSecurity,
        sourceLocation: SourceLocation = #_sourceLocation, _ call: (RelayLink) async throws -> Void
    ) async throws {
        let actual = try await code(address, client, call)
        #expect(actual == expected, sourceLocation: sourceLocation)
    }

    @Test func aVisitorGatewayCannotCallAgentOnlyRPCsNorActAsAnotherNode() async throws {
        let certs = try Certificates()
        try await withRelay(certs.relay) { address in
            let conversation = UUID(), agent = UUID()
            try await expect(.forbidden, address, certs.visitorGateway) { _ = try await $0.claim(conversation: conversation, agent: agent) }
            try await expect(.forbidden, address, certs.visitorGateway) { _ = try await $0.close(conversation: conversation, agent: agent) }
            try await expect(.forbidden, address, certs.visitorGateway) {
                    _ = try await $0.append(conversation: conversation, agent: agent, clientMsgID: "m1", text: "hi")
                }
            try await expect(.forbidden, address, certs.visitorGateway) { _ = try await $0.resume(conversation: conversation, node: "vg-2", after: 0) }
            var register = Parley_V1_RegisterNodeRequest()
            register.node.id = "vg-2"
            register.node.role = "visitor_gateway"
            try await expect(.forbidden, address, certs.visitorGateway) { _ = try await $0.register(register) }
        }
    }

    @Test func anAgentGatewayCannotActForVisitors() async throws {
        let certs = try Certificates()
        try await withRelay(certs.relay) { address in
            var append = Parley_V1_AppendMessageRequest()
            append.conversationID = UUID().uuidString
            append.sender = "visitor"
            append.originNodeID = "ag-1"
            append.clientMsgID = "m1"
            append.text = "hi"
            try await expect(.forbidden, address, certs.agentGateway) { _ = try await $0.append(append) }
            try await expect(.forbidden, address, certs.agentGateway) { _ = try await $0.history(conversation: UUID(), after: 0) }
        }
    }

    @Test func unknownCertificatesAndPlaintextAreRefused() async throws {
        let certs = try Certificates()
        try await withRelay(certs.relay) { address in
            // A certificate from another CA, and no TLS at all: no connection, so no call.
            try await expect(.unavailable, address, certs.stranger) { _ = try await $0.history(conversation: UUID(), after: 0) }
            try await expect(.unavailable, address, .plaintext) { _ = try await $0.history(conversation: UUID(), after: 0) }
        }
    }

    @Test func aGatewayCertificateCannotPassForARelay() async throws {
        let certs = try Certificates()
        // A server holding a visitor gateway's certificate: clients expect `relay.parley.internal`.
        try await withRelay(certs.visitorGateway) { address in
            try await expect(.unavailable, address, certs.agentGateway) { _ = try await $0.claim(conversation: UUID(), agent: UUID()) }
        }
    }

    @Test func certificatesNameTheirRoleAndNode() throws {
        let certs = try Certificates()
        let pem = try String(contentsOf: certs.folder.appendingPathComponent("ca/vg-1.pem"), encoding: .utf8)
        let identity = PeerIdentity(certificate: try Certificate(pemEncoded: pem))
        #expect(identity == PeerIdentity(role: .visitorGateway, node: "vg-1"))
        #expect(throws: ParleyError.self) { try CertificateAuthority.create(in: certs.folder.appendingPathComponent("ca")) }
        let ca = try CertificateAuthority.open(certs.folder.appendingPathComponent("ca"))
        #expect(throws: ParleyError.self) { try ca.issue(role: .relay, node: "bad node", hosts: [], output: certs.folder) }
        #expect(throws: ParleyError.self) { try ca.issue(role: .relay, node: "r1", hosts: ["not a host!"], output: certs.folder) }
    }
}
