import ArgumentParser
import Foundation
import Logging
import Synchronization

/// `parley-bench`: the load generator of `make bench`. Each subcommand drives one scenario
/// against a running cluster through its public APIs and prints a JSON result.
public struct BenchCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "parley-bench",
        abstract: "Drive a Parley cluster through its public APIs and print the measurements as JSON.",
        subcommands: [Chat.self, Idle.self, Replies.self, Limit.self])

    public init() {}

    static var logger: Logger {
        var logger = Logger(label: "parley-bench")
        logger.logLevel = .error
        return logger
    }

    static func printJSON<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    /// `EMAIL:PASSWORD` pairs, comma-separated.
    static func credentials(_ spec: String) throws -> [ChatOptions.Credentials] {
        try spec.split(separator: ",").map { pair in
            let parts = pair.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("agents must look like email:password[,email:password]") }
            return .init(email: String(parts[0]), password: String(parts[1]))
        }
    }

    struct Chat: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Visitors and agents chatting at an offered rate (chat, capacity, scale, failover).")
        @Option(help: "The load balancer's URL.") var lb: String
        @Option(help: "Agent gateway URLs, comma-separated.") var agentGateways: String
        @Option(help: "Agent accounts, email:password, comma-separated.") var agents: String
        @Option(help: "Conversations.") var conversations = 100
        @Option(help: "Total offered messages per second, half each way.") var rate = 100.0
        @Option(help: "Measured seconds.") var seconds = 10.0
        @Option(help: "Warm-up seconds before measuring.") var warmup = 3.0
        @Option(help: "ws, longpoll or sse.") var transport = "ws"
        @Option(help: "Failover: the pid of a visitor gateway to kill -9.") var killPid: Int32?
        @Option(help: "Failover: that gateway's node id.") var killNode: String?
        @Option(help: "Failover: seconds into the measured window.") var killAfter = 5.0
        @Option(help: "name=pid pairs, comma-separated, whose CPU to read over the sending window.") var watch: String = ""
        @Option(help: "How agents reply: ws (over their WebSocket) or post.") var agentReplies = "ws"

        func run() async throws {
            guard let transport = VisitorTransport(rawValue: transport) else { throw ValidationError("--transport must be ws, longpoll or sse") }
            guard let replies = ChatOptions.AgentReplies(rawValue: agentReplies) else { throw ValidationError("--agent-replies must be ws or post") }
            var kill: ChatOptions.Kill?
            if let killPid, let killNode { kill = .init(pid: killPid, node: killNode, afterSeconds: killAfter) }
            var watched: [String: Int32] = [:]
            for pair in watch.split(separator: ",") {
                let parts = pair.split(separator: "=")
                guard parts.count == 2, let pid = Int32(parts[1]) else { throw ValidationError("--watch takes name=pid pairs") }
                watched[String(parts[0])] = pid
            }
            var options = ChatOptions(
                loadBalancer: lb, agentGateways: agentGateways.split(separator: ",").map(String.init), agents: try BenchCommand.credentials(agents),
                conversations: conversations, rate: rate, seconds: seconds, warmupSeconds: warmup, transport: transport, kill: kill)
            options.watch = watched
            options.agentReplies = replies
            try BenchCommand.printJSON(try await ChatScenario.run(options, logger: BenchCommand.logger))
        }
    }

    struct Idle: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "idle", abstract: "Hold idle visitors on one gateway until standard input closes; measure deliveries to them.")
        @Option(help: "The gateway's URL (straight, not the load balancer).") var gateway: String
        @Option(help: "Visitors to hold.") var count = 1000
        @Option(help: "ws or longpoll.") var transport = "ws"
        @Option(help: "Where to write the conversation ids once every visitor is connected.") var idsFile: String

        func run() async throws {
            guard let transport = VisitorTransport(rawValue: transport) else { throw ValidationError("--transport must be ws, longpoll or sse") }
            let closed = Atomic<Bool>(false)
            Thread.detachNewThread {
                while readLine() != nil {}
                closed.store(true, ordering: .relaxed)
            }
            let result = try await IdleWorker.run(
                gateway: gateway, count: count, transport: transport, idsFile: idsFile, logger: BenchCommand.logger,
                stop: { closed.load(ordering: .relaxed) })
            try BenchCommand.printJSON(result)
        }
    }

    struct Replies: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Agent replies to idle visitors, open-loop.")
        @Option(help: "The agent gateway's URL.") var agentGateway: String
        @Option(help: "An agent account, email:password.") var agent: String
        @Option(help: "A file of conversation ids, one a line; a sample of them is claimed.") var idsFile: String
        @Option(help: "Conversations to claim and reply in.") var sample = 200
        @Option(help: "Messages to send.") var count = 1000
        @Option(help: "Messages per second.") var rate = 100.0

        func run() async throws {
            let ids = try String(contentsOfFile: idsFile, encoding: .utf8).split(separator: "\n").map(String.init).shuffled().prefix(sample)
            guard let credentials = try BenchCommand.credentials(agent).first else { throw ValidationError("--agent is required") }
            try BenchCommand.printJSON(
                try await IdleReplies.run(
                    agentGateway: agentGateway, agent: credentials, conversations: Array(ids), count: count, rate: rate, logger: BenchCommand.logger))
        }
    }

    struct Limit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "PostgreSQL's commit rate for message rows in batches, from one connection.")
        @Option(help: "postgres:// URL of a scratch database.") var databaseURL: String
        @Option(help: "Seconds to run.") var seconds = 10.0
        @Option(help: "Rows per transaction.") var batch = 100

        func run() async throws {
            try BenchCommand.printJSON(try await LimitScenario.run(databaseURL: databaseURL, seconds: seconds, batchSize: batch, logger: BenchCommand.logger))
        }
    }
}
