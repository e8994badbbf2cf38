import Configuration
import Foundation
import ParleyCore

/// A service's settings, read from command-line flags first, then `PARLEY_`-prefixed
/// environment variables, then the default: key `node.id` is `--node-id` or `PARLEY_NODE_ID`.
public struct Settings: Sendable {
    let reader: ConfigReader

    public init(arguments: [String] = CommandLine.arguments, environment: [String: String] = ProcessInfo.processInfo.environment) {
        reader = ConfigReader(providers: [
            CommandLineArgumentsProvider(arguments: arguments),
            EnvironmentVariablesProvider(environmentVariables: environment, secretsSpecifier: .dynamic { key, _ in
                key.contains("PASSWORD") || key.contains("KEY") || key.contains("SECRET") || key.contains("DATABASE_URL")
            }).prefixKeys(with: "parley"),
        ])
    }

    public func string(_ key: String, default value: String) -> String {
        reader.string(forKey: ConfigKey(key), default: value)
    }

    public func optionalString(_ key: String) -> String? {
        reader.string(forKey: ConfigKey(key)).flatMap { $0.isEmpty ? nil : $0 }
    }

    /// A list: a flag or variable holding comma-separated values (`--relay-address a:1,b:2`).
    public func list(_ key: String, default value: [String]) -> [String] {
        let raw = reader.stringArray(forKey: ConfigKey(key)) ?? optionalString(key).map { [$0] } ?? []
        let items = raw.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return items.isEmpty ? value : items
    }

    public func int(_ key: String, default value: Int) throws -> Int {
        guard let raw = optionalString(key) else { return value }
        guard let number = Int(raw) else { throw ParleyError(.invalidRequest, "setting \(key) must be an integer, not \(raw)") }
        return number
    }

    public func double(_ key: String, default value: Double) throws -> Double {
        guard let raw = optionalString(key) else { return value }
        guard let number = Double(raw), number.isFinite, number > 0 else {
            throw ParleyError(.invalidRequest, "setting \(key) must be a positive number, not \(raw)")
        }
        return number
    }

    public func required(_ key: String) throws -> String {
        guard let value = optionalString(key) else {
            let env = "PARLEY_" + key.uppercased().replacingOccurrences(of: ".", with: "_")
            let flag = "--" + key.replacingOccurrences(of: ".", with: "-")
            throw ParleyError(.invalidRequest, "missing setting \(key) (\(flag) or \(env))")
        }
        return value
    }
}

/// A `host:port` pair.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` (or `[v6]:port`).
    public init(_ string: String) throws {
        guard let colon = string.lastIndex(of: ":"), let port = Int(string[string.index(after: colon)...]), (0...65535).contains(port) else {
            throw ParleyError(.invalidRequest, "\(string) is not host:port")
        }
        var host = String(string[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw ParleyError(.invalidRequest, "\(string) has no host") }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
