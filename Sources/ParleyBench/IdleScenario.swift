import Foundation
import Logging
import Synchronization

/// One worker of the idle scenario: holds `count` idle visitors on one gateway (straight, not
/// through the load balancer) and measures the latency of whatever is delivered to them.
public enum IdleWorker {
    public struct Result: Codable, Sendable {
        public var visitors: Int
        public var received: Int
        public var latency: LatencySummary
        /// The latency histogram's buckets (see `LatencyRecorder.buckets`), for merging workers.
        public var latencyBuckets: [[UInt64]]
        public var duplicates: Int
        public var reordered: Int
    }

    /// Starts and connects the visitors, writes their conversation ids to `idsFile`, then holds
    /// them until `stop` returns true.
    public static func run(
        gateway: String, count: Int, transport: VisitorTransport, idsFile: String, logger: Logger, stop: @escaping @Sendable () -> Bool
    ) async throws -> Result {
        let http = HTTP(connectionsPerHost: transport == .webSocket ? 64 : count + 64)
        defer { Task { try? await http.shutdown() } }
        let tracker = DeliveryTracker(acceptUnknown: true)
        tracker.window(from: 0, until: .max)
        return try await withThrowingTaskGroup(of: Void.self) { background in
            var visitors: [BenchVisitor] = []
            try await withThrowingTaskGroup(of: BenchVisitor.self) { group in
                var started = 0
                for _ in 0..<min(64, count) {
                    started += 1
                    group.addTask { try await BenchVisitor.start(base: gateway, transport: transport, tracker: tracker, http: http) }
                }
                while let visitor = try await group.next() {
                    visitors.append(visitor)
                    background.addTask { await visitor.receive(logger: logger) }
                    if started < count {
                        started += 1
                        group.addTask { try await BenchVisitor.start(base: gateway, transport: transport, tracker: tracker, http: http) }
                    }
                }
            }
            let all = visitors
            try await waitFor("every idle visitor connected", seconds: 300) { all.allSatisfy(\.connected) }
            try visitors.map(\.conversation).joined(separator: "\n").write(toFile: idsFile + ".tmp", atomically: true, encoding: .utf8)
            try FileManager.default.moveItem(atPath: idsFile + ".tmp", toPath: idsFile)
            while !stop() { try await Task.sleep(for: .milliseconds(100)) }
            background.cancelAll()
            let counts = tracker.counts
            return Result(
                visitors: visitors.count, received: counts.deliveredMeasured, latency: tracker.toVisitor.summary, latencyBuckets: tracker.toVisitor.buckets,
                duplicates: counts.duplicates,
                reordered: counts.reordered)
        }
    }
}

/// Replies to idle visitors: claims a sample of their conversations, then sends `count`
/// messages open-loop at `rate` to random ones of them.
public enum IdleReplies {
    public struct Result: Codable, Sendable {
        public var sent: Int
        public var acknowledged: Int
        public var failed: Int
    }

    public static func run(
        agentGateway: String, agent: ChatOptions.Credentials, conversations: [String], count: Int, rate: Double, logger: Logger
    ) async throws -> Result {
        let http = HTTP(connectionsPerHost: 256)
        defer { Task { try? await http.shutdown() } }
        let bench = try await BenchAgent.login(base: agentGateway, email: agent.email, password: agent.password, http: http)
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = 0
            for _ in 0..<min(16, conversations.count) {
                let id = conversations[next]
                next += 1
                group.addTask { try await bench.claim(id) }
            }
            while try await group.next() != nil, next < conversations.count {
                let id = conversations[next]
                next += 1
                group.addTask { try await bench.claim(id) }
            }
        }
        let tracker = DeliveryTracker()
        let startWall = wallNanos()
        let startClock = ContinuousClock.now
        let deadline = startClock + .seconds(Double(count) / rate + 30)
        await withDiscardingTaskGroup { senders in
            for index in 0..<count {
                try? await Task.sleep(until: startClock + .nanoseconds(Int64(Double(index) / rate * 1e9)))
                let scheduled = startWall + UInt64(Double(index) / rate * 1e9)
                let conversation = conversations.randomElement()!
                let id = "r\(index)-\(UInt32.random(in: 0...UInt32.max))"
                tracker.scheduled(id, conversation: conversation, to: .visitor)
                senders.addTask {
                    await bench.send(conversation: conversation, text: BenchText.make(scheduled: scheduled), clientMsgID: id, tracker: tracker, deadline: deadline)
                }
            }
        }
        let counts = tracker.counts
        return Result(sent: count, acknowledged: counts.acknowledged, failed: counts.sendErrors)
    }
}
