import ArgumentParser
import Foundation
import HummingbirdBcrypt
import Logging
import ParleyCore
import ParleyRPC
import ParleyStore
import PostgresNIO

/// `parleyctl`: the administrators' command line.
public struct Parleyctl: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "parleyctl",
        abstract: "Administer a Parley cluster: database, node registry, agents, load balancer, certificates.",
        subcommands: [DB.self, Nodes.self, Agents.self, Audit.self, LB.self, Certs.self])

    public init() {}
}

/// Options every database-touching command shares.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("database-url"), help: "postgres://user:password@host:port/database (default: $PARLEY_DATABASE_URL)")
    var databaseURL: String?

    @Flag(name: .customLong("json"), help: "Print JSON instead of a table.")
    var json = false

    /// Runs `body` with a connected client, then shuts it down.
    func withClient<T: Sendable>(_ body: @Sendable (PostgresClient, Logger) async throws -> T) async throws -> T {
        guard let raw = databaseURL ?? ProcessInfo.processInfo.environment["PARLEY_DATABASE_URL"], !raw.isEmpty else {
            throw CLIError("no database: pass --database-url or set PARLEY_DATABASE_URL")
        }
        let url: DatabaseURL
        do { url = try DatabaseURL(raw) } catch let error as ParleyError { throw CLIError(error.message) }
        var logger = Logger(label: "parleyctl")
        logger.logLevel = .error
        do {
            try await url.probe(logger: logger)
        } catch let error as PSQLError {
            throw CLIError("database error: \(error.serverInfo?[.message] ?? "cannot reach \(url.host):\(url.port) (\(error.code)\(error.underlying.map { ": \($0)" } ?? ""))")")
        } catch {
            throw CLIError("database error: cannot reach \(url.host):\(url.port) (\(error))")
        }
        let client = PostgresClient(configuration: url.clientConfiguration(maxConnections: 2), backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            defer { group.cancelAll() }
            do {
                return try await body(client, logger)
            } catch let error as PSQLError {
                throw CLIError("database error: \(error.serverInfo?[.message] ?? "cannot reach \(url.host):\(url.port) (\(error.code))")")
            } catch let error as ParleyError {
                throw CLIError(error.message)
            } catch let error as CLIError {
                throw error
            } catch {
                throw CLIError("database error: cannot reach \(url.host):\(url.port) (\(error))")
            }
        }
    }
}

extension DatabaseOptions {
    /// Applies a registry edit to one node, records it in the audit log and reports it; a
    /// missing node is an error.
    func editNode(
        _ id: String, action: String, done message: String, _ edit: @Sendable @escaping (Registry) async throws -> Bool
    ) async throws {
        guard
            try await withClient({ client, logger in
                guard try await edit(Registry(client: client, logger: logger)) else { return false }
                try await AuditLog(client: client, logger: logger).record(actor: Self.actor, action: action, subject: id)
                return true
            })
        else {
            throw CLIError("no node with id \(id)")
        }
        print(message)
    }

    /// Who the audit log names for a parleyctl change: the operating-system user running it.
    static var actor: String { "admin:\(ProcessInfo.processInfo.environment["USER"] ?? "unknown")" }
}

/// A failure to report as one line and a non-zero exit.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// A plain, aligned text table.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
    func line(_ cells: [String]) -> String {
        zip(cells, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
            .trimmingCharacters(in: .whitespaces)
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

struct DB: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db", abstract: "Database schema and the services' logins.", subcommands: [Migrate.self, User.self])

    struct User: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create (or update) a service's database login with only that service's grants.",
            discussion: "Run as the migration owner (who needs CREATEROLE). Give the relay and the agent gateways logins of their own; they never need the owner's.")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "relay or agent-gateway.") var role: String
        @Option(help: "The login name (lowercase letters, digits, _).") var name: String
        @Flag(help: "Read the login's password from the first line of standard input.") var passwordStdin = false

        func run() async throws {
            guard let role = DatabaseRole(rawValue: role) else {
                throw CLIError("--role must be one of \(DatabaseRole.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let password = passwordStdin ? readLine(strippingNewline: true) : nil
            if passwordStdin && (password ?? "").isEmpty { throw CLIError("no password on standard input") }
            try await database.withClient { client, logger in
                try await role.createLogin(name, password: password, client: client, logger: logger)
            }
            print("login \(name) acts as \(role.groupRole)")
        }
    }

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Apply every pending migration (safe to run concurrently and repeatedly).")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let applied = try await database.withClient { client, logger in try await Migrations.migrate(client, logger: logger) }
            print(applied.isEmpty ? "schema is up to date" : "applied migrations: \(applied.map(String.init).joined(separator: ", "))")
        }
    }
}

struct Nodes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodes", abstract: "The node registry.", subcommands: [List.self, Show.self, Drain.self, Undrain.self, Remove.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every registered node.")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let nodes = try await database.withClient { client, logger in try await Registry(client: client, logger: logger).list() }
            if database.json { return try printJSON(["nodes": nodes]) }
            printTable(
                ["ID", "ROLE", "ZONE", "STATE", "HEALTH", "CONNS", "PUBLIC", "INTERNAL", "LAST SEEN"],
                nodes.map {
                    [$0.id, $0.role, $0.zone, $0.state, $0.health, "\($0.connections)", $0.publicAddress, $0.internalAddress, "\($0.secondsSinceSeen)s ago"]
                })
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one node.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The node id.") var id: String

        func run() async throws {
            let id = self.id
            guard let node = try await database.withClient({ client, logger in try await Registry(client: client, logger: logger).node(id: id) }) else {
                throw CLIError("no node with id \(id)")
            }
            if database.json { return try printJSON(node) }
            for (key, value) in [
                ("id", node.id), ("role", node.role), ("zone", node.zone), ("state", node.state), ("health", node.health),
                ("connections", "\(node.connections)"), ("public_address", node.publicAddress), ("internal_address", node.internalAddress),
                ("ops_address", node.opsAddress), ("started_at", node.startedAt), ("last_seen", node.lastSeen),
            ] {
                print("\(key.padding(toLength: 17, withPad: " ", startingAt: 0))\(value)")
            }
        }
    }

    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Drain a node: it fails its health check, takes no new visitors, and asks its visitors to move.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The node id.") var id: String

        func run() async throws {
            let id = self.id
            try await database.editNode(id, action: AuditLog.Action.nodeDrain, done: "node \(id) is draining") { try await $0.setState(id: id, draining: true) }
        }
    }

    struct Undrain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Return a drained node to service.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The node id.") var id: String

        func run() async throws {
            let id = self.id
            try await database.editNode(id, action: AuditLog.Action.nodeUndrain, done: "node \(id) is active") { try await $0.setState(id: id, draining: false) }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a node from the registry; if it still runs, it stops taking visitors on its next heartbeat.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The node id.") var id: String

        func run() async throws {
            let id = self.id
            try await database.editNode(id, action: AuditLog.Action.nodeRemove, done: "node \(id) removed") { try await $0.remove(id: id) }
        }
    }
}

struct Agents: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agents", abstract: "Agent accounts.", subcommands: [Add.self, List.self, Disable.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add an agent (or, with --update, reset an existing one).")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "Login email.") var email: String
        @Option(help: "Display name shown to visitors.") var name: String
        @Option(help: "agent, supervisor or admin.") var role: String = "agent"
        @Option(help: "The password (prefer --password-stdin).") var password: String?
        @Flag(name: .customLong("password-stdin"), help: "Read the password from standard input.") var passwordStdin = false
        @Flag(help: "Update the agent if the email exists.") var update = false

        func validate() throws {
            guard AgentStore.roles.contains(role) else { throw ValidationError("--role must be agent, supervisor or admin") }
            guard (try? Validate.email(email)) != nil, !email.isEmpty else { throw ValidationError("--email is not an email address") }
            guard !name.isEmpty, name.count <= Limits.nameMaxLength else { throw ValidationError("--name must be 1 to 100 characters") }
            guard password != nil || passwordStdin else { throw ValidationError("give --password or --password-stdin") }
        }

        func run() async throws {
            let secret = passwordStdin ? (readLine(strippingNewline: true) ?? "") : (password ?? "")
            guard (8...72).contains(secret.utf8.count) else { throw CLIError("the password must be 8 to 72 bytes") }
            let hash = Bcrypt.hash(secret, cost: 10)
            let (email, name, role, update) = (self.email, self.name, self.role, self.update)
            let agent = try await database.withClient { client, logger in
                let agent = try await AgentStore(client: client, logger: logger).add(
                    email: email, name: name, role: role, passwordHash: hash, replace: update)
                try await AuditLog(client: client, logger: logger).record(
                    actor: DatabaseOptions.actor, action: AuditLog.Action.agentAdd, subject: AuditLog.agent(agent.id), detail: "\(email) as \(role)")
                return agent
            }
            if database.json { return try printJSON(agent) }
            print("agent \(agent.email) (\(agent.role)) id \(agent.id.uuidString.lowercased())")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List agents.")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let agents = try await database.withClient { client, logger in try await AgentStore(client: client, logger: logger).list() }
            if database.json { return try printJSON(["agents": agents]) }
            printTable(
                ["EMAIL", "NAME", "ROLE", "STATUS", "ID"],
                agents.map { [$0.email, $0.name, $0.role, $0.disabled ? "disabled" : "active", $0.id.uuidString.lowercased()] })
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disable an agent and end their sessions.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The agent's email.") var email: String

        func run() async throws {
            let email = self.email
            guard
                try await database.withClient({ client, logger in
                    guard try await AgentStore(client: client, logger: logger).disable(email: email) else { return false }
                    try await AuditLog(client: client, logger: logger).record(
                        actor: DatabaseOptions.actor, action: AuditLog.Action.agentDisable, subject: email)
                    return true
                })
            else {
                throw CLIError("no agent with email \(email)")
            }
            print("agent \(email) disabled")
        }
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "The append-only audit log.", subcommands: [List.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show audit entries, newest first.")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "Only this action (login, login_failed, logout, claim, transfer, close, export, node_drain, ...).") var action: String?
        @Option(help: "Entries before this id (paging).") var before: Int64?
        @Option(help: "At most this many entries (1-1000).") var limit = 50

        func validate() throws {
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be from 1 to 1000") }
        }

        func run() async throws {
            let (action, before, limit) = (self.action, self.before, self.limit)
            let entries = try await database.withClient { client, logger in
                try await AuditLog(client: client, logger: logger).list(before: before, action: action, limit: limit)
            }
            if database.json { return try printJSON(["entries": entries]) }
            printTable(
                ["ID", "AT", "ACTOR", "ACTION", "SUBJECT", "DETAIL"],
                entries.map { ["\($0.id)", Timestamp.format($0.atMillis), $0.actor, $0.action, $0.subject, $0.detail] })
        }
    }
}

struct LB: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "lb", abstract: "Load balancer configuration.", subcommands: [HAProxy.self])

    struct HAProxy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "haproxy", abstract: "Render an HAProxy configuration for the registered visitor gateways.")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "Where HAProxy listens for visitors.") var bind: String = "*:8080"
        @Option(help: "Write to this file instead of standard output.") var output: String?

        func run() async throws {
            let nodes = try await database.withClient { client, logger in try await Registry(client: client, logger: logger).list() }
            let gateways = nodes.filter { $0.role == NodeRole.visitorGateway.rawValue }
            guard !gateways.isEmpty else { throw CLIError("no visitor gateway is registered yet") }
            let config = try HAProxyConfig.render(bind: bind, gateways: gateways)
            if let output {
                try config.write(toFile: output, atomically: true, encoding: .utf8)
                print("wrote \(output) with \(gateways.count) visitor gateways")
            } else {
                print(config, terminator: "")
            }
        }
    }
}

struct Certs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The internal plane's certificates: a private CA and one certificate per node.", subcommands: [Init.self, Issue.self])

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create the cluster's CA (ca.pem, and ca.key readable by its owner only).")
        @Option(help: "The CA's folder.") var dir: String = "certs"

        func run() async throws {
            do {
                let ca = try CertificateAuthority.create(in: URL(fileURLWithPath: dir))
                print("created \(ca.folder.appendingPathComponent("ca.pem").path); keep ca.key private")
            } catch let error as ParleyError { throw CLIError(error.message) }
        }
    }

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a node's certificate and key (<node>.pem, <node>.key), naming its role for the peers to check.")
        @Option(help: "The CA's folder.") var dir: String = "certs"
        @Option(help: "relay, visitor-gateway or agent-gateway.") var role: String
        @Option(help: "The node id (as in --node-id).") var node: String
        @Option(name: .customLong("host"), help: "A host name or IP address the node is reached at (repeatable).") var hosts: [String] = []
        @Option(help: "Where to write the files (default: the CA's folder).") var out: String?

        func run() async throws {
            guard let role = PeerRole(rawValue: role) else {
                throw CLIError("--role must be one of \(PeerRole.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            do {
                let ca = try CertificateAuthority.open(URL(fileURLWithPath: dir))
                let (certificate, key) = try ca.issue(role: role, node: node, hosts: hosts, output: URL(fileURLWithPath: out ?? dir))
                print("issued \(certificate.path) and \(key.path) for \(role.rawValue) \(node)")
            } catch let error as ParleyError { throw CLIError(error.message) }
        }
    }
}
