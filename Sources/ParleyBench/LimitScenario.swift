import Foundation
import Logging
import ParleyStore
import PostgresNIO

/// The machine's ceiling for what the relay does: message-shaped rows committed by PostgreSQL
/// in 100-row batches from one PostgresNIO connection, at the server's durable defaults.
public enum LimitScenario {
    public struct Result: Codable, Sendable {
        public var rowsPerSecond: Double
        public var batches: Int
        public var batchSize: Int
        public var seconds: Double
        public var batchLatency: LatencySummary
        enum CodingKeys: String, CodingKey {
            case batches, seconds
            case rowsPerSecond = "rows_per_second"
            case batchSize = "batch_size"
            case batchLatency = "batch_latency"
        }
    }

    public static func run(databaseURL: String, seconds: Double, batchSize: Int = 100, logger: Logger) async throws -> Result {
        let url = try DatabaseURL(databaseURL)
        let client = PostgresClient(configuration: url.clientConfiguration(maxConnections: 1), backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: Result?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            defer { group.cancelAll() }
            try await client.query(
                """
                CREATE TABLE IF NOT EXISTS bench_limit (
                    conversation_id uuid NOT NULL, seq bigint NOT NULL, type text NOT NULL, sender text NOT NULL,
                    text text NOT NULL, client_msg_id text, created_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (conversation_id, seq))
                """, logger: logger)
            try await client.query("TRUNCATE bench_limit", logger: logger)
            let conversations = (0..<100).map { _ in UUID() }
            var seqs = [Int64](repeating: 0, count: conversations.count)
            let latency = LatencyRecorder()
            let start = ContinuousClock.now
            let end = start + .milliseconds(Int(seconds * 1000))
            var batches = 0
            while ContinuousClock.now < end {
                var ids: [UUID] = [], numbers: [Int64] = [], texts: [String] = [], keys: [String] = []
                for row in 0..<batchSize {
                    let c = (batches * batchSize + row) % conversations.count
                    seqs[c] += 1
                    ids.append(conversations[c])
                    numbers.append(seqs[c])
                    texts.append("a message of a typical length, some forty to eighty characters")
                    keys.append(UUID().uuidString)
                }
                let began = wallNanos()
                try await client.query(
                    """
                    INSERT INTO bench_limit (conversation_id, seq, type, sender, text, client_msg_id)
                    SELECT c, s, 'message', 'visitor', t, k FROM unnest(\(ids), \(numbers), \(texts), \(keys)) AS r(c, s, t, k)
                    """, logger: logger)
                latency.record(nanos: wallNanos() - began)
                batches += 1
            }
            let elapsed = ContinuousClock.now - start
            let took = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            try await client.query("DROP TABLE bench_limit", logger: logger)
            return Result(
                rowsPerSecond: (Double(batches * batchSize) / took).rounded(), batches: batches, batchSize: batchSize, seconds: took,
                batchLatency: latency.summary)
        }
    }
}
