import Foundation
import Hummingbird
import HummingbirdCore
import NIOCore
import ParleyCore
import ParleyRuntime

/// The checks of the visitor API, for the requests served below the router (WebSocket
/// upgrades and waiting long-polls), in the router's order: path, origin, token and identity.
/// A request these refuse goes to the router or is answered with the same JSON error the
/// router gives. The address's connection cap is each caller's to take.
struct VisitorChecks: Sendable {
    let api: VisitorAPI
    let origins: OriginMiddleware<VisitorRequestContext>

    struct Admitted {
        var id: UUID
        var uri: URI
        var address: String
    }

    /// Admits a request for `/v1/conversations/{id}/{leaf}`; `header` and `values` read its
    /// header fields by name (the first value, and all of them).
    func admit(uri raw: String, leaf: String, peer: SocketAddress?, header: (String) -> String?, values: (String) -> [String]) throws -> Admitted {
        let uri = URI(raw)
        let path = uri.path.split(separator: "/", omittingEmptySubsequences: false)
        guard path.count == 5, path[0].isEmpty, path[1] == "v1", path[2] == "conversations", path[4] == leaf else {
            throw ParleyError(.notFound, "not found: this is /v1/conversations/{id}/\(leaf)")
        }
        if let origin = header("Origin"), !origins.isAllowed(origin: origin, host: header("Host")) {
            throw ParleyError(.forbidden, "requests from \(origin.prefix(100)) are not allowed here")
        }
        var token: String?
        if let authorization = header("Authorization"), authorization.hasPrefix("Bearer ") {
            token = String(authorization.dropFirst(7))
        } else {
            token = Self.cookie(VisitorAPI.tokenCookieName, in: values("Cookie"))
        }
        let query = uri.queryParameters
        let id = try api.authorize(
            id: String(path[3]), token: token,
            userID: header("X-Parley-User-Id") ?? query["user_id"].map(String.init),
            userHash: header("X-Parley-User-Hash") ?? query["user_hash"].map(String.init))
        return Admitted(id: id, uri: uri, address: api.clients.of(peer: peer, forwardedFor: values("X-Forwarded-For")))
    }

    /// The value of cookie `name` in `Cookie` header lines.
    static func cookie(_ name: String, in lines: [String]) -> String? {
        for line in lines {
            for pair in line.split(separator: ";") {
                let pair = pair.trimmingCharacters(in: .whitespaces)
                if pair.hasPrefix(name + "=") { return String(pair.dropFirst(name.count + 1)) }
            }
        }
        return nil
    }
}
