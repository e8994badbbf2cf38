import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ParleyCore

/// How every node of the internal plane connects: the same transport settings for the relay's
/// server, the gateways' relay clients and the relay's delivery clients.
package enum InternalPlane {
    /// A silent peer (crashed host, partition) is noticed within seconds by keepalive pings
    /// instead of hanging until each call's deadline, and a lost connection is retried every
    /// few hundred milliseconds rather than with gRPC's default backoff of up to two minutes,
    /// which would outlast any outage the registry would notice.
    package static var clientConfig: HTTP2ClientTransport.Posix.Config {
        .defaults { config in
            config.backoff = .init(initial: .milliseconds(100), max: .seconds(1), multiplier: 1.6, jitter: 0.2)
            config.connection.keepalive = .init(time: .seconds(3), timeout: .seconds(2), allowWithoutCalls: true)
        }
    }

    /// Servers accept the clients' keepalive pings (by default a gRPC server refuses pings
    /// more frequent than every five minutes and closes the connection).
    package static var serverConfig: HTTP2ServerTransport.Posix.Config {
        .defaults { config in
            config.connection.keepalive.clientBehavior = .init(minPingIntervalWithoutCalls: .seconds(1), allowWithoutCalls: true)
        }
    }

    /// A client for `address` (`host:port`) whose server's certificate must name `serverName`
    /// when TLS is on (`PeerRole.dnsName` for any node of a role, `PeerRole.nodeDNSName` for one).
    package static func client(
        _ address: String, security: InternalSecurity, serverName: String
    ) throws -> GRPCClient<HTTP2ClientTransport.Posix> {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (1...65535).contains(port) else {
            throw ParleyError(.invalidRequest, "an internal address must be host:port, not \(address)")
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        var config = clientConfig
        if case .mutualTLS = security {
            // The name TLS verifies (and sends as SNI): a node's certificate vouches for its
            // role and node id, not for an address.
            config.http2.authority = serverName
        }
        return GRPCClient(
            transport: try .http2NIOPosix(target: .dns(host: host, port: port), transportSecurity: security.client, config: config))
    }
}
