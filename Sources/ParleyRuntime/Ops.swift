import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import ParleyCore
import Prometheus
import Synchronization

/// Whether a node takes new work: the state its `/health` reports to the load balancer.
public final class NodeHealth: Sendable {
    public enum State: String, Sendable {
        case starting, ready, draining, stopping
    }

    private let state = Mutex(State.starting)

    public init() {}

    public var current: State { state.withLock { $0 } }

    public func set(_ new: State) { state.withLock { $0 = new } }
}

/// The process-wide Prometheus registry, bootstrapped once.
public enum ParleyMetrics {
    public static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }()

    /// Call first thing in `main`, before any metric is created.
    public static func bootstrap() { _ = registry }
}

/// The internal operations listener of every node: `/health` and `/metrics`.
public enum OpsServer {
    public static func application(
        address: HostPort, health: NodeHealth, nodeID: String, role: String, logger: Logger
    ) -> some ApplicationProtocol {
        let router = Router()
        router.get("/health") { _, _ -> Response in
            let state = health.current
            let status: HTTPResponse.Status = state == .ready ? .ok : .serviceUnavailable
            let body = #"{"status":"\#(state.rawValue)","node_id":"\#(nodeID)","role":"\#(role)"}"#
            return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/metrics") { _, _ -> Response in
            var buffer: [UInt8] = []
            buffer.reserveCapacity(16 * 1024)
            ParleyMetrics.registry.emit(into: &buffer)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
        }
        var opsLogger = logger
        opsLogger.logLevel = .warning
        return Application(
            router: router,
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
            logger: opsLogger)
    }
}

/// Turns every error into `{"error": {"code", "message"}}` with a fitting status, never leaking internals.
public struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as ParleyError {
            return Self.response(error)
        } catch let error as HTTPError {
            let code: ParleyError.Code =
                switch error.status {
                case .notFound: .notFound
                case .unauthorized: .unauthorized
                case .contentTooLarge: .payloadTooLarge
                case .methodNotAllowed: .init(wireValue: "method_not_allowed")
                default: error.status.code < 500 ? .invalidRequest : .internalError
                }
            var response = Self.response(ParleyError(code, error.body ?? error.status.reasonPhrase))
            response.status = error.status
            return response
        } catch is DecodingError {
            return Self.response(ParleyError(.invalidRequest, "the request body is not the expected JSON"))
        } catch {
            context.logger.error("request failed", metadata: ["parley.error": "\(error)"])
            return Self.response(ParleyError(.internalError, "internal error"))
        }
    }

    public static func response(_ error: ParleyError) -> Response {
        let (head, body) = error.jsonResponse
        return Response(status: head.status, headers: head.headerFields, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// Refuses browser requests from other sites (cross-site WebSocket hijacking, and reading
/// streams or posting with a visitor's cookie from another page).
///
/// A request without an `Origin` header (not sent by a browser script) passes. With an empty
/// allowlist only the same origin passes: the `Origin`'s host and port equal the `Host`
/// header. Otherwise the `Origin` must be one of `allowed` (e.g. `https://www.example.com`).
public struct OriginMiddleware<Context: RequestContext>: RouterMiddleware {
    let allowed: Set<String>
    /// Paths under this prefix are checked; pages and static files are not.
    let prefix: String

    public init(allowed: [String], prefix: String = "/v1/") {
        self.allowed = Set(allowed.map { $0.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "/")) })
        self.prefix = prefix
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix(prefix), let origin = request.headers[.origin] else {
            return try await next(request, context)
        }
        guard isAllowed(origin: origin, host: request.head.authority) else {
            throw ParleyError(.forbidden, "requests from \(origin.prefix(100)) are not allowed here")
        }
        return try await next(request, context)
    }

    /// Whether a request from `origin` to `host` (its `Host` or authority) may be served.
    public func isAllowed(origin: String, host: String?) -> Bool {
        let origin = origin.lowercased()
        if !allowed.isEmpty { return allowed.contains(origin) }
        guard let host = host?.lowercased(), let schemeEnd = origin.range(of: "://") else { return false }
        return origin[schemeEnd.upperBound...] == host
    }
}

/// JSON request and response helpers with Parley's limits.
public enum JSONBody {
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    /// Decodes a JSON body of at most `Limits.requestBodyMaxBytes`; an empty body decodes from `{}`.
    public static func decode<T: Decodable>(_ type: T.Type, from request: Request) async throws -> T {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: Limits.requestBodyMaxBytes)
        } catch {
            throw ParleyError(.payloadTooLarge, "the request body is larger than \(Limits.requestBodyMaxBytes) bytes")
        }
        let bytes = buffer.readableBytes == 0 ? Data("{}".utf8) : Data(buffer.readableBytesView)
        do {
            return try JSONDecoder().decode(T.self, from: bytes)
        } catch {
            throw ParleyError(.invalidRequest, "the request body is not the expected JSON object")
        }
    }

    public static func response<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) throws -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value))))
    }
}

extension ParleyError {
    /// The error as every edge answers it: `{"error": {"code", "message"}}` with its status
    /// (and `Retry-After` when it has one).
    public var jsonResponse: (head: HTTPResponse, body: Data) {
        let body = (try? JSONEncoder().encode(["error": ["code": code.rawValue, "message": message]])) ?? Data()
        var headers: HTTPFields = [.contentType: "application/json", .cacheControl: "no-store"]
        if let seconds = retryAfterSeconds { headers[.retryAfter] = String(seconds) }
        return (HTTPResponse(status: .init(code: httpStatus), headerFields: headers), body)
    }
}

/// Security headers for HTML pages: a strict Content-Security-Policy and the usual hardening.
public struct SecurityHeadersMiddleware<Context: RequestContext>: RouterMiddleware {
    public init() {}

    /// The headers it sets on every response that is not an error.
    public static var fields: HTTPFields {
        [
            .contentSecurityPolicy:
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            .xContentTypeOptions: "nosniff",
            HTTPField.Name("Referrer-Policy")!: "no-referrer",
            HTTPField.Name("X-Frame-Options")!: "DENY",
        ]
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        for field in Self.fields { response.headers[field.name] = field.value }
        return response
    }
}

/// The router of a public web listener: JSON errors, security headers, and the static pages
/// of `webRoot` under `/`.
public func makeWebRouter<Context: RequestContext>(_ context: Context.Type, webRoot: String, logger: Logger) -> Router<Context> {
    let router = Router(context: Context.self)
    router.add(middleware: JSONErrorMiddleware())
    router.add(middleware: SecurityHeadersMiddleware())
    router.add(middleware: FileMiddleware(webRoot, searchForIndexHtml: true, logger: logger))
    return router
}

/// Sets up swift-log with the node id on every line.
public enum ParleyLogging {
    public static func logger(label: String, nodeID: String, level: String?) -> Logger {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level.flatMap(Logger.Level.init(rawValue:)) ?? .info
            return handler
        }
        var logger = Logger(label: label)
        logger[metadataKey: "parley.node.id"] = "\(nodeID)"
        return logger
    }
}
