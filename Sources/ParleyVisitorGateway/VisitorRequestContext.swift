import Hummingbird
import NIOCore
import Synchronization

/// The visitor API's request context: it also knows the peer's address, which per-client limits need.
struct VisitorRequestContext: RequestContext, RemoteAddressRequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: SocketAddress?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// Which client a request comes from, for per-client limits: the peer's address, or, when the
/// peer is a trusted proxy (the load balancer), the last address it added to `X-Forwarded-For`.
struct ClientAddress: Sendable {
    let trustedProxies: Set<String>

    func of(_ request: Request, _ context: VisitorRequestContext) -> String {
        of(peer: context.remoteAddress, forwardedFor: request.headers[values: .init("X-Forwarded-For")!])
    }

    /// The client behind `peer`, given the request's `X-Forwarded-For` values.
    func of(peer: SocketAddress?, forwardedFor: [String]) -> String {
        let peer = peer?.ipAddress ?? "unknown"
        guard trustedProxies.contains(peer), let forwarded = forwardedFor.last else { return peer }
        let last = forwarded.split(separator: ",").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        return last.isEmpty || last.count > 45 ? peer : last
    }
}

/// Caps the long-lived connections (WebSocket, SSE, waiting long-polls) one client address may
/// hold, so that one host cannot take a gateway's file descriptors from everyone else.
final class AddressConnectionCaps: Sendable {
    let limit: Int
    private let open = Mutex<[String: Int]>([:])

    init(limit: Int) { self.limit = limit }

    /// Takes a slot for `address`, or returns false when it already holds `limit`.
    func acquire(_ address: String) -> Bool {
        open.withLock { open in
            let held = open[address, default: 0]
            guard held < limit else { return false }
            open[address] = held + 1
            return true
        }
    }

    func release(_ address: String) {
        open.withLock { open in
            let held = open[address, default: 0] - 1
            open[address] = held > 0 ? held : nil
        }
    }

    func held(_ address: String) -> Int { open.withLock { $0[address, default: 0] } }
}
