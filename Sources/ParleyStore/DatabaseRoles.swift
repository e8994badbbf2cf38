import Logging
import ParleyCore
import PostgresNIO

/// The services' database roles (made by migration 2) and the logins that act as them.
public enum DatabaseRole: String, Sendable, CaseIterable {
    case relay
    case agentGateway = "agent-gateway"

    /// The group role holding the grants.
    public var groupRole: String {
        switch self {
        case .relay: "parley_relay"
        case .agentGateway: "parley_agent_gateway"
        }
    }

    /// Creates (or updates) login `name` as a member of this role, with `password` if given.
    /// Run by the migration owner, who needs CREATEROLE.
    public func createLogin(_ name: String, password: String?, client: PostgresClient, logger: Logger) async throws {
        guard (1...63).contains(name.count), name.first?.isLetter == true,
            name.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "_") })
        else {
            throw ParleyError(.invalidRequest, "a login name is 1 to 63 lowercase letters, digits or _, starting with a letter")
        }
        if let password, password.isEmpty || password.count > 200 || password.contains("\0") {
            throw ParleyError(.invalidRequest, "the password must be 1 to 200 characters")
        }
        // Role statements take no bind parameters: the name is checked above, the password
        // quoted as a literal (standard_conforming_strings is on in every supported version).
        let secret = password.map { "PASSWORD '\($0.replacingOccurrences(of: "'", with: "''"))'" } ?? ""
        try await client.withConnection { connection in
            var exists = false
            for try await _ in try await connection.query("SELECT 1 FROM pg_roles WHERE rolname = \(name)", logger: logger) { exists = true }
            let verb = exists ? "ALTER ROLE" : "CREATE ROLE"
            try await connection.query(PostgresQuery(unsafeSQL: "\(verb) \(name) LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \(secret)"), logger: logger)
            try await connection.query(PostgresQuery(unsafeSQL: "GRANT \(groupRole) TO \(name)"), logger: logger)
        }
    }
}
