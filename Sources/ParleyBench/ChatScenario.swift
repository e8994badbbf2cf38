import Foundation
import Logging
import Synchronization

/// The chat scenario: P conversations, each one visitor and one agent, exchanging messages at
/// a total offered rate R (half each way), open-loop, for a warm-up and then S measured seconds.
public struct ChatOptions: Sendable, Codable {
    public var loadBalancer: String
    /// Agent gateways; the first also carries the agents' feed.
    public var agentGateways: [String]
    public var agents: [Credentials]
    public var conversations: Int
    public var rate: Double
    public var seconds: Double
    public var warmupSeconds: Double
    public var transport: VisitorTransport
    /// Seconds after the senders stop that every acknowledged message has to arrive.
    public var drainSeconds: Double = 20
    public var kill: Kill?
    /// Processes whose CPU seconds are read from /proc over the sending window only (setup excluded).
    public var watch: [String: Int32] = [:]
    /// How agents send their replies: over their WebSocket (the default) or one `POST` each.
    public var agentReplies: AgentReplies = .webSocket

    public enum AgentReplies: String, Sendable, Codable {
        case webSocket = "ws"
        case post
    }

    public struct Credentials: Sendable, Codable {
        public var email: String
        public var password: String
        public init(email: String, password: String) {
            self.email = email
            self.password = password
        }
    }

    /// The failover scenario: `kill -9` of a visitor gateway this far into the measured window.
    public struct Kill: Sendable, Codable {
        public var pid: Int32
        public var node: String
        public var afterSeconds: Double
        public init(pid: Int32, node: String, afterSeconds: Double) {
            self.pid = pid
            self.node = node
            self.afterSeconds = afterSeconds
        }
    }

    public init(
        loadBalancer: String, agentGateways: [String], agents: [Credentials], conversations: Int, rate: Double, seconds: Double,
        warmupSeconds: Double, transport: VisitorTransport, kill: Kill? = nil
    ) {
        self.loadBalancer = loadBalancer
        self.agentGateways = agentGateways
        self.agents = agents
        self.conversations = conversations
        self.rate = rate
        self.seconds = seconds
        self.warmupSeconds = warmupSeconds
        self.transport = transport
        self.kill = kill
    }
}

public struct ChatResult: Codable, Sendable {
    public var options: ChatOptions
    /// Messages delivered per second in the measured window (both directions).
    public var deliveredPerSecond: Double
    public var latency: LatencySummary
    public var visitorToAgent: LatencySummary
    public var agentToVisitor: LatencySummary
    public var counts: DeliveryTracker.Counts
    /// Messages the generator could not even start on time (it was saturated itself).
    public var generatorLate: Int
    public var failover: Failover?
    /// CPU seconds of each watched process from the first send to the last delivery.
    public var windowCPUSeconds: [String: Double]

    public struct Failover: Codable, Sendable {
        public var node: String
        public var visitors: Int
        public var recovered: Int
        /// From the kill to each visitor's first event after it, milliseconds.
        public var recoveryP50: Double
        public var recoveryP99: Double
        public var recoveryMax: Double
        enum CodingKeys: String, CodingKey {
            case node, visitors, recovered
            case recoveryP50 = "recovery_p50_ms"
            case recoveryP99 = "recovery_p99_ms"
            case recoveryMax = "recovery_max_ms"
        }
    }

    enum CodingKeys: String, CodingKey {
        case options, latency, counts, failover
        case deliveredPerSecond = "delivered_per_second"
        case visitorToAgent = "visitor_to_agent"
        case agentToVisitor = "agent_to_visitor"
        case generatorLate = "generator_late"
        case windowCPUSeconds = "window_cpu_seconds"
    }
}

public enum ChatScenario {
    public static func run(_ options: ChatOptions, logger: Logger) async throws -> ChatResult {
        let http = HTTP(connectionsPerHost: options.transport == .webSocket ? 512 : options.conversations + 512)
        defer { Task { try? await http.shutdown() } }
        let tracker = DeliveryTracker()
        var loggedIn: [BenchAgent] = []
        for credentials in options.agents {
            loggedIn.append(try await BenchAgent.login(base: options.agentGateways[0], email: credentials.email, password: credentials.password, http: http))
        }
        guard !loggedIn.isEmpty else { throw BenchError("no agents") }
        let agents = loggedIn

        return try await withThrowingTaskGroup(of: Void.self) { background in
            // The feed first, so that no conversation's first events are missed.
            let feedReady = Flag()
            background.addTask { await agents[0].feed(tracker: tracker, logger: logger) { feedReady.set() } }
            try await waitFor("the agents' feed", seconds: 30) { feedReady.isSet }

            // Conversations: started through the load balancer, claimed round-robin by the agents.
            let visitors = try await withThrowingTaskGroup(of: (Int, BenchVisitor).self) { group in
                var started: [BenchVisitor?] = Array(repeating: nil, count: options.conversations)
                var next = 0
                func add() {
                    let index = next
                    next += 1
                    let agent = agents[index % agents.count].on(options.agentGateways[index % options.agentGateways.count])
                    group.addTask {
                        let visitor = try await BenchVisitor.start(
                            base: options.loadBalancer, transport: options.transport, tracker: tracker, http: http)
                        try await agent.claim(visitor.conversation)
                        return (index, visitor)
                    }
                }
                for _ in 0..<min(32, options.conversations) { add() }
                while let (index, visitor) = try await group.next() {
                    started[index] = visitor
                    if next < options.conversations { add() }
                }
                return started.map { $0! }
            }
            for visitor in visitors { background.addTask { await visitor.receive(logger: logger) } }
            // One reply socket per agent and agent gateway, keyed as the senders below pick them.
            let replySockets: [BenchReplySocket] =
                options.agentReplies == .webSocket
                ? (0..<(agents.count * options.agentGateways.count)).map { key in
                    BenchReplySocket(
                        agent: agents[key % agents.count].on(options.agentGateways[key % options.agentGateways.count]), tracker: tracker)
                } : []
            for socket in replySockets { background.addTask { await socket.run(logger: logger) } }
            try await waitFor("every visitor connected", seconds: 60) {
                visitors.allSatisfy(\.connected) && replySockets.allSatisfy(\.connected)
            }
            // Let the claims' events arrive before anything is measured.
            try await Task.sleep(for: .milliseconds(500))

            let interval = 1.0 / options.rate
            let total = Int(options.rate * (options.warmupSeconds + options.seconds))
            let startWall = wallNanos() + 100_000_000
            let startClock = ContinuousClock.now + .milliseconds(100)
            let measureFrom = startWall + UInt64(options.warmupSeconds * 1e9)
            let measureUntil = measureFrom + UInt64(options.seconds * 1e9)
            tracker.window(from: measureFrom, until: measureUntil)
            let sendDeadline = startClock + .seconds(options.warmupSeconds + options.seconds + options.drainSeconds)
            var late = 0
            let killIndex = options.kill.map { Int(options.rate * (options.warmupSeconds + $0.afterSeconds)) } ?? -1
            let victims = options.kill.map { kill in visitors.filter { $0.node == kill.node } } ?? []

            let cpuBefore = options.watch.mapValues(cpuSeconds)
            await withDiscardingTaskGroup { senders in
                var index = 0
                while index < total {
                    // Every message has its own due time; a tick sends all that are due, so the
                    // offered rate does not depend on how fast the sleeps wake.
                    let now = ContinuousClock.now
                    let elapsed = now - startClock
                    let due = min(total, Int((Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18) / interval) + 1)
                    if due > index + Int(options.rate / 100) + 1 { late += due - index - Int(options.rate / 100) - 1 }
                    while index < due {
                        if index == killIndex, let kill = options.kill {
                            let at = wallNanos()
                            for victim in victims { victim.watchRecovery(killedAt: at) }
                            Foundation.kill(kill.pid, SIGKILL)
                        }
                        let scheduled = startWall + UInt64(Double(index) * interval * 1e9)
                        let visitor = visitors[index % visitors.count]
                        let fromVisitor = (index / visitors.count) % 2 == 0
                        let id = "b\(index)"
                        tracker.scheduled(id, conversation: visitor.conversation, to: fromVisitor ? .agent : .visitor)
                        let text = BenchText.make(scheduled: scheduled)
                        if fromVisitor {
                            senders.addTask { await visitor.send(text: text, clientMsgID: id, deadline: sendDeadline) }
                        } else if !replySockets.isEmpty {
                            let socket = replySockets[(index % visitors.count) % replySockets.count]
                            senders.addTask { await socket.send(conversation: visitor.conversation, text: text, clientMsgID: id) }
                        } else {
                            let agent = agents[(index % visitors.count) % agents.count].on(
                                options.agentGateways[(index % visitors.count) % options.agentGateways.count])
                            senders.addTask {
                                await agent.send(conversation: visitor.conversation, text: text, clientMsgID: id, tracker: tracker, deadline: sendDeadline)
                            }
                        }
                        index += 1
                    }
                    try? await Task.sleep(for: .milliseconds(1))
                }
            }
            // Every acknowledged message must arrive. A WebSocket send returns before its ack, so the
            // last sends are still in flight here: wait for their acks too, or an ack landing after
            // this wait would count its message as lost, and the ones still out as unacknowledged.
            try? await waitFor("deliveries", seconds: options.drainSeconds) { tracker.outstanding == 0 && tracker.inFlight == 0 }
            let window = options.watch.reduce(into: [String: Double]()) { result, entry in
                result[entry.key] = ((cpuSeconds(entry.value) - (cpuBefore[entry.key] ?? 0)) * 1000).rounded() / 1000
            }
            background.cancelAll()

            let counts = tracker.counts
            var failover: ChatResult.Failover?
            if let kill = options.kill {
                let recoveries = victims.compactMap(\.recoveryNanos).sorted()
                func pick(_ p: Double) -> Double {
                    recoveries.isEmpty ? 0 : Double(recoveries[min(recoveries.count - 1, Int(Double(recoveries.count) * p))]) / 1e6
                }
                failover = .init(
                    node: kill.node, visitors: victims.count, recovered: recoveries.count, recoveryP50: pick(0.5), recoveryP99: pick(0.99),
                    recoveryMax: recoveries.last.map { Double($0) / 1e6 } ?? 0)
            }
            return ChatResult(
                options: options, deliveredPerSecond: Double(counts.deliveredMeasured) / options.seconds,
                latency: tracker.combinedSummary, visitorToAgent: tracker.toAgent.summary, agentToVisitor: tracker.toVisitor.summary,
                counts: counts, generatorLate: late, failover: failover, windowCPUSeconds: window)
        }
    }
}

/// User plus system CPU seconds of a process so far, from /proc (0 once it is gone).
func cpuSeconds(_ pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return 0 }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// A flag one task sets and another polls.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}

/// Waits, polling every 20 ms, until `condition` holds; throws after `seconds`.
func waitFor(_ what: String, seconds: Double, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while !condition() {
        guard ContinuousClock.now < deadline else { throw BenchError("timed out after \(seconds) s waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(20))
    }
}
