import Foundation
import Logging
import NIOSSL
import ParleyCore
import PostgresNIO

/// Where a service finds PostgreSQL: parsed from a `postgres://user:password@host:port/database` URL,
/// with libpq's `sslmode` and `sslrootcert` query parameters.
public struct DatabaseURL: Sendable, Hashable {
    /// libpq's `sslmode` values, with libpq's meaning.
    public enum TLSMode: String, Sendable, Hashable, CaseIterable {
        /// Plaintext only.
        case disable
        /// TLS when the server offers it, unverified; plaintext otherwise (libpq's default).
        case prefer
        /// TLS always, unverified (protects against eavesdropping only).
        case require
        /// TLS, the server's certificate chaining to `sslrootcert`.
        case verifyCA = "verify-ca"
        /// TLS, the certificate chaining to `sslrootcert` and naming the URL's host.
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tlsMode: TLSMode
    /// The CA certificates (PEM) a `verify-*` mode trusts; the system's when absent.
    public var rootCertificatePath: String?

    /// Parses a PostgreSQL URL (`postgres://` or `postgresql://`); throws `invalid_request` naming what is wrong.
    public init(_ string: String) throws {
        guard let components = URLComponents(string: string),
            components.scheme == "postgres" || components.scheme == "postgresql"
        else { throw ParleyError(.invalidRequest, "the database URL must look like postgres://user:password@host:port/database") }
        guard let host = components.host, !host.isEmpty else {
            throw ParleyError(.invalidRequest, "the database URL has no host")
        }
        guard let user = components.user, !user.isEmpty else {
            throw ParleyError(.invalidRequest, "the database URL has no user name")
        }
        let database = String(components.path.drop(while: { $0 == "/" }))
        guard !database.isEmpty else { throw ParleyError(.invalidRequest, "the database URL names no database") }
        self.host = host
        self.port = components.port ?? 5432
        self.username = user.removingPercentEncoding ?? user
        self.password = components.password.map { $0.removingPercentEncoding ?? $0 }
        self.database = database
        var query: [String: String] = [:]
        for item in components.queryItems ?? [] { query[item.name] = item.value ?? "" }
        let unknown = Set(query.keys).subtracting(["sslmode", "sslrootcert"])
        guard unknown.isEmpty else {
            throw ParleyError(.invalidRequest, "the database URL has unsupported parameters: \(unknown.sorted().joined(separator: ", "))")
        }
        guard let mode = TLSMode(rawValue: query["sslmode"] ?? "prefer") else {
            throw ParleyError(
                .invalidRequest, "sslmode must be one of \(TLSMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.tlsMode = mode
        self.rootCertificatePath = query["sslrootcert"].flatMap { $0.isEmpty ? nil : $0 }
        // Read the roots now, so a wrong path fails at start-up with its name, not at the first query.
        if let path = rootCertificatePath {
            do {
                _ = try NIOSSLCertificate.fromPEMFile(path)
            } catch {
                throw ParleyError(.invalidRequest, "sslrootcert \(path) is not a readable PEM certificate file")
            }
        }
    }

    /// The TLS configuration `sslmode` asks for; nil for `disable`.
    var tlsConfiguration: TLSConfiguration? {
        guard tlsMode != .disable else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let path = rootCertificatePath, let roots = try? NIOSSLCertificate.fromPEMFile(path) {
            configuration.trustRoots = .certificates(roots)
        }
        switch tlsMode {
        case .disable, .prefer, .require: configuration.certificateVerification = .none
        case .verifyCA: configuration.certificateVerification = .noHostnameVerification
        case .verifyFull: configuration.certificateVerification = .fullVerification
        }
        return configuration
    }

    /// The TLS settings for PostgresNIO: what `sslmode` means in libpq.
    public var tls: PostgresClient.Configuration.TLS {
        guard let configuration = tlsConfiguration else { return .disable }
        return tlsMode == .prefer ? .prefer(configuration) : .require(configuration)
    }

    /// Opens and closes one connection, so that a command-line tool reports why PostgreSQL cannot
    /// be reached (refused, TLS, authentication) instead of waiting on a pool that keeps retrying.
    public func probe(logger: Logger) async throws {
        var tls = PostgresConnection.Configuration.TLS.disable
        if let configuration = tlsConfiguration {
            let context = try NIOSSLContext(configuration: configuration)
            tls = tlsMode == .prefer ? .prefer(context) : .require(context)
        }
        let connection = try await PostgresConnection.connect(
            configuration: .init(host: host, port: port, username: username, password: password, database: database, tls: tls),
            id: 0, logger: logger)
        try await connection.close()
    }

    /// A PostgresClient configuration for this URL.
    public func clientConfiguration(maxConnections: Int = 8) -> PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: username, password: password, database: database, tls: tls)
        configuration.options.maximumConnections = maxConnections
        // The pool starts a keep-alive timer and, above its minimum, an idle timer each time a
        // connection goes back idle, and cancels them at the next lease: two tasks and two timers
        // per query, which Swift runs on Dispatch's threads (profiled: a tenth of the relay's CPU).
        // Keep-alive queries are off, which halves that: a dead connection shows as the failure
        // of the next query on it. The minimum stays 0: with connections kept open, PostgresNIO
        // 1.33's pool trips a precondition (`createNewDemandConnectionIfPossible`) when
        // PostgreSQL crashes under load, which the chaos suite's postgres-crash class found.
        configuration.options.minimumConnections = 0
        configuration.options.keepAliveBehavior = nil
        return configuration
    }
}

/// A loggable description of a database error: PostgreSQL's message and SQLSTATE, never the query's values.
public func describeDatabaseError(_ error: any Error) -> String {
    if let error = error as? PSQLError {
        if let message = error.serverInfo?[.message] {
            return "\(message) (SQLSTATE \(error.serverInfo?[.sqlState] ?? "?"))"
        }
        return "\(error.code)"
    }
    if let error = error as? PostgresTransactionError {
        return describeDatabaseError(error.closureError ?? error.beginError ?? error.commitError ?? error.rollbackError ?? error)
    }
    return String(describing: error)
}
