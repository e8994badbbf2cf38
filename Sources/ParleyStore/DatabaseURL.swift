import Foundation
import ParleyCore
import PostgresNIO

/// Where a service finds PostgreSQL: parsed from a `postgres://user:password@host:port/database` URL.
public struct DatabaseURL: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String

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
    }

    /// A PostgresClient configuration for this URL.
    public func clientConfiguration(maxConnections: Int = 8) -> PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: username, password: password, database: database, tls: .disable)
        configuration.options.maximumConnections = maxConnections
        configuration.options.minimumConnections = 0
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
