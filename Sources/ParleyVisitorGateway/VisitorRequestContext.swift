import Hummingbird
import HummingbirdWebSocket
import NIOCore

/// The visitor API's request context: a WebSocket-capable context that also knows the peer's
/// address, which per-client limits need.
struct VisitorRequestContext: RequestContext, WebSocketRequestContext, RemoteAddressRequestContext {
    var coreContext: CoreRequestContextStorage
    let webSocket: WebSocketHandlerReference<Self>
    let remoteAddress: SocketAddress?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        webSocket = .init()
        remoteAddress = source.channel.remoteAddress
    }
}

/// Which client a request comes from, for per-client limits: the peer's address, or, when the
/// peer is a trusted proxy (the load balancer), the last address it added to `X-Forwarded-For`.
struct ClientAddress: Sendable {
    let trustedProxies: Set<String>

    func of(_ request: Request, _ context: VisitorRequestContext) -> String {
        let peer = context.remoteAddress?.ipAddress ?? "unknown"
        guard trustedProxies.contains(peer), let forwarded = request.headers[values: .init("X-Forwarded-For")!].last else { return peer }
        let last = forwarded.split(separator: ",").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        return last.isEmpty || last.count > 45 ? peer : last
    }
}
