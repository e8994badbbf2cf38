import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ParleyCore
import X509

/// A node's role on the internal plane, as its certificate states it.
///
/// A certificate issued by `parleyctl certs issue` names its role and node in its subject
/// alternative names: `<role>.parley.internal` and `<node>.node.parley.internal`. Clients
/// check the server's role through TLS hostname verification (a visitor gateway's certificate
/// cannot pass for a relay); servers read the client's role from its verified certificate.
public enum PeerRole: String, Sendable, CaseIterable {
    case relay
    case visitorGateway = "visitor-gateway"
    case agentGateway = "agent-gateway"

    /// The DNS name every certificate of this role carries, and the name clients verify.
    public var dnsName: String { "\(rawValue).\(Self.domain)" }

    /// The DNS name naming one node.
    public static func nodeDNSName(_ node: String) -> String { "\(node).node.\(domain)" }

    static let domain = "parley.internal"
}

/// Who called: the role and node of the verified client certificate.
package struct PeerIdentity: Sendable, Hashable {
    package var role: PeerRole
    package var node: String

    /// Reads the identity from a verified certificate's subject alternative names.
    package init?(certificate: Certificate) {
        guard let names = try? certificate.extensions.subjectAlternativeNames else { return nil }
        var role: PeerRole?
        var node: String?
        for name in names {
            guard case .dnsName(let dns) = name else { continue }
            if let match = PeerRole.allCases.first(where: { $0.dnsName == dns }) {
                guard role == nil else { return nil }  // one role per certificate
                role = match
            } else if dns.hasSuffix(".node.\(PeerRole.domain)") {
                guard node == nil else { return nil }
                node = String(dns.dropLast(".node.\(PeerRole.domain)".count))
            }
        }
        guard let role, let node, !node.isEmpty else { return nil }
        self.role = role
        self.node = node
    }

    package init(role: PeerRole, node: String) {
        self.role = role
        self.node = node
    }
}

/// How the internal plane is secured: mutual TLS with the cluster's CA (the default), or
/// plaintext, which a node accepts only when told so explicitly.
public enum InternalSecurity: Sendable {
    case mutualTLS(ca: String, certificate: String, key: String)
    case plaintext

    /// From settings: all three paths, or `plaintext` set to true and none of them.
    public init(ca: String?, certificate: String?, key: String?, plaintext: Bool) throws {
        switch (ca, certificate, key) {
        case let (ca?, certificate?, key?):
            guard !plaintext else { throw ParleyError(.invalidRequest, "internal.plaintext cannot be combined with tls.* settings") }
            for path in [ca, certificate, key] where !FileManager.default.isReadableFile(atPath: path) {
                throw ParleyError(.invalidRequest, "cannot read \(path)")
            }
            self = .mutualTLS(ca: ca, certificate: certificate, key: key)
        case (nil, nil, nil) where plaintext:
            self = .plaintext
        case (nil, nil, nil):
            throw ParleyError(
                .invalidRequest,
                "the internal plane needs mutual TLS: set tls.ca, tls.cert and tls.key (parleyctl certs issue), or internal.plaintext=true for a development cluster")
        default:
            throw ParleyError(.invalidRequest, "tls.ca, tls.cert and tls.key go together")
        }
    }

    /// The server side: clients must present a certificate of the cluster's CA.
    package var server: HTTP2ServerTransport.Posix.TransportSecurity {
        switch self {
        case .plaintext:
            return .plaintext
        case .mutualTLS(let ca, let certificate, let key):
            return .mTLS(certificateChain: [.file(path: certificate, format: .pem)], privateKey: .file(path: key, format: .pem)) { config in
                config.trustRoots = .certificates([.file(path: ca, format: .pem)])
                config.clientCertificateVerification = .noHostnameVerification
                config.requireALPN = false
            }
        }
    }

    /// The client side: the server must present a certificate of the cluster's CA (whose name
    /// `InternalPlane.client` checks).
    package var client: HTTP2ClientTransport.Posix.TransportSecurity {
        switch self {
        case .plaintext:
            return .plaintext
        case .mutualTLS(let ca, let certificate, let key):
            return .mTLS(certificateChain: [.file(path: certificate, format: .pem)], privateKey: .file(path: key, format: .pem)) { config in
                config.trustRoots = .certificates([.file(path: ca, format: .pem)])
                config.serverCertificateVerification = .fullVerification
            }
        }
    }

    /// The calling node's identity; nil on a plaintext plane (where every caller is trusted).
    /// Throws `unauthorized` when TLS is on and the certificate names no Parley role.
    package func caller(_ context: ServerContext) throws -> PeerIdentity? {
        guard case .mutualTLS = self else { return nil }
        guard let transport = context.transportSpecific as? HTTP2ServerTransport.Posix.Context,
            let certificate = transport.peerCertificate, let identity = PeerIdentity(certificate: certificate)
        else {
            throw ParleyError(.unauthorized, "the client certificate names no Parley role")
        }
        return identity
    }

    /// Refuses a caller whose role is not among `roles`.
    @discardableResult
    package func authorize(_ context: ServerContext, _ roles: PeerRole...) throws -> PeerIdentity? {
        try Self.check(try caller(context), roles)
    }

    /// Refuses an identity read before with `caller` (nil: a plaintext plane) whose role is not
    /// among `roles`. Reading the certificate is the costly part, so a stream reads it once.
    @discardableResult
    package static func check(_ identity: PeerIdentity?, _ roles: [PeerRole]) throws -> PeerIdentity? {
        guard let identity else { return nil }
        guard roles.contains(identity.role) else {
            throw ParleyError(.forbidden, "a \(identity.role.rawValue) may not call this")
        }
        return identity
    }
}
