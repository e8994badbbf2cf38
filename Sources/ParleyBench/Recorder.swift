import Foundation
import Histogram
import Synchronization

/// Wall-clock nanoseconds: shared by every process on the machine, so a latency can be
/// measured between the process that schedules a message and the one that receives it.
public func wallNanos() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

/// The text of a benchmark message: its scheduled send time, which the receiver subtracts
/// from the arrival time (no coordinated omission: a stalled send still counts from when it
/// was due).
public enum BenchText {
    public static func make(scheduled: UInt64) -> String { "bench \(scheduled)" }
    public static func scheduled(_ text: String) -> UInt64? {
        guard text.hasPrefix("bench ") else { return nil }
        return UInt64(text.dropFirst(6))
    }
}

/// Latency percentiles in milliseconds, as the report shows them.
public struct LatencySummary: Codable, Sendable {
    public var count: UInt64
    public var p50: Double
    public var p90: Double
    public var p99: Double
    public var p999: Double
    public var max: Double
    public var mean: Double

    init(_ histogram: Histogram<UInt64>) {
        func ms(_ micros: UInt64) -> Double { (Double(micros) / 1000 * 1000).rounded() / 1000 }
        count = histogram.totalCount
        p50 = ms(histogram.valueAtPercentile(50))
        p90 = ms(histogram.valueAtPercentile(90))
        p99 = ms(histogram.valueAtPercentile(99))
        p999 = ms(histogram.valueAtPercentile(99.9))
        max = ms(histogram.max)
        mean = ((histogram.totalCount == 0 ? 0 : histogram.mean) / 1000 * 1000).rounded() / 1000
    }
}

/// A latency histogram (microseconds, 1 µs to 10 min, 3 significant digits) safe to share.
public final class LatencyRecorder: Sendable {
    private let histogram = Mutex(Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three))

    public init() {}

    public func record(nanos: UInt64) {
        _ = histogram.withLock { $0.record(max(1, nanos / 1000)) }
    }

    public var summary: LatencySummary { histogram.withLock { LatencySummary($0) } }

    /// Every non-empty bucket as `[highest value in µs, count]`, so that histograms of several
    /// processes can be merged into one distribution instead of compared percentile by percentile.
    public var buckets: [[UInt64]] {
        histogram.withLock { histogram in histogram.recordedValues().map { [$0.value, UInt64($0.count)] } }
    }
}

/// Who reads a conversation: the visitor, or the agents' feed.
public enum Reader: String, Sendable, Codable {
    case visitor, agent
}

/// Checks every delivery against what was acknowledged: lost, duplicated and reordered
/// messages, and the end-to-end latency of each measured one.
public final class DeliveryTracker: Sendable {
    struct Sent {
        var conversation: String
        var to: Reader
        var acked = false
        var received = false
    }

    struct State {
        var sent: [String: Sent] = [:]
        /// (conversation, reader) → every seq seen and the highest.
        var seen: [String: Set<Int64>] = [:]
        var highest: [String: Int64] = [:]
        var duplicates = 0
        var reordered = 0
        var deliveredMeasured = 0
        var sendErrors = 0

        /// Sent and neither acknowledged nor refused yet.
        var inFlight: Int { sent.count - sent.values.filter(\.acked).count - sendErrors }
    }

    private let state = Mutex(State())
    /// Only messages scheduled at or after this wall time are in the latency histograms.
    let measureWindow = Mutex((from: UInt64.max, until: UInt64.max))
    public let toAgent = LatencyRecorder()
    public let toVisitor = LatencyRecorder()
    public let all = LatencyRecorder()

    public var combinedSummary: LatencySummary { all.summary }

    /// Counts messages another process sent (the idle scenario's replies) as measured.
    let acceptUnknown: Bool

    public init(acceptUnknown: Bool = false) {
        self.acceptUnknown = acceptUnknown
    }

    public func window(from: UInt64, until: UInt64) {
        measureWindow.withLock { $0 = (from, until) }
    }

    public func scheduled(_ clientMsgID: String, conversation: String, to reader: Reader) {
        state.withLock { $0.sent[clientMsgID] = Sent(conversation: conversation, to: reader) }
    }

    public func acked(_ clientMsgID: String) {
        state.withLock { $0.sent[clientMsgID]?.acked = true }
    }

    public func sendFailed() { state.withLock { $0.sendErrors += 1 } }

    /// One event as a reader received it.
    public func received(conversation: String, reader: Reader, seq: Int64, clientMsgID: String?, text: String, at now: UInt64) {
        let key = "\(conversation) \(reader.rawValue)"
        let measured: Bool = state.withLock { state in
            if state.seen[key, default: []].contains(seq) {
                state.duplicates += 1
                return false
            }
            state.seen[key, default: []].insert(seq)
            if seq < state.highest[key, default: 0] { state.reordered += 1 }
            state.highest[key] = max(seq, state.highest[key, default: 0])
            guard let id = clientMsgID else { return false }
            guard var sent = state.sent[id] else { return acceptUnknown && reader == .visitor }
            guard sent.to == reader else { return false }
            sent.received = true
            state.sent[id] = sent
            return true
        }
        guard measured, let scheduled = BenchText.scheduled(text) else { return }
        let window = measureWindow.withLock { $0 }
        guard scheduled >= window.from, scheduled < window.until else { return }
        state.withLock { $0.deliveredMeasured += 1 }
        let latency = now > scheduled ? now - scheduled : 0
        (reader == .agent ? toAgent : toVisitor).record(nanos: latency)
        all.record(nanos: latency)
    }

    /// Acknowledged messages the other party has not received yet.
    public var outstanding: Int { state.withLock { $0.sent.values.filter { $0.acked && !$0.received }.count } }

    /// Messages sent and neither acknowledged nor refused yet (a WebSocket send returns before its ack).
    public var inFlight: Int { state.withLock { $0.inFlight } }

    public struct Counts: Codable, Sendable {
        public var scheduled: Int
        public var acknowledged: Int
        public var lost: Int
        public var duplicates: Int
        public var reordered: Int
        public var sendErrors: Int
        /// Neither acknowledged nor refused when the run ended (still queued on a reconnecting socket).
        public var unacknowledged: Int
        public var deliveredMeasured: Int
        /// A few lost messages, to look for: "conversation reader client_msg_id".
        public var lostSamples: [String]
        enum CodingKeys: String, CodingKey {
            case scheduled, acknowledged, lost, duplicates, reordered, unacknowledged
            case sendErrors = "send_errors"
            case deliveredMeasured = "delivered_measured"
            case lostSamples = "lost_samples"
        }
    }

    public var counts: Counts {
        state.withLock { s in
            let lost = s.sent.filter { $0.value.acked && !$0.value.received }
            return Counts(
                scheduled: s.sent.count, acknowledged: s.sent.values.filter(\.acked).count,
                lost: lost.count, duplicates: s.duplicates, reordered: s.reordered,
                sendErrors: s.sendErrors, unacknowledged: s.inFlight,
                deliveredMeasured: s.deliveredMeasured,
                lostSamples: lost.prefix(10).map { "\($0.value.conversation) \($0.value.to.rawValue) \($0.key)" })
        }
    }
}
