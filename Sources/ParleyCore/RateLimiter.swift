import Synchronization

/// Token buckets by key (a conversation, a client address): each key may spend `burst` at
/// once and regains `perSecond` tokens a second.
///
/// Memory is bounded: at most `maxKeys` buckets are kept, and buckets that have refilled
/// completely are dropped first (they carry no state worth keeping).
public final class RateLimiter: Sendable {
    public let perSecond: Double
    public let burst: Double
    private let maxKeys: Int
    private let buckets = Mutex<[String: Bucket]>([:])

    struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    public init(perSecond: Double, burst: Int, maxKeys: Int = 100_000) {
        precondition(perSecond > 0 && burst >= 1)
        self.perSecond = perSecond
        self.burst = Double(burst)
        self.maxKeys = maxKeys
    }

    /// Spends one token of `key`. Returns nil when allowed, or how long until a token is back.
    public func take(_ key: String, now: ContinuousClock.Instant = .now) -> Duration? {
        buckets.withLock { buckets in
            var bucket = buckets[key] ?? Bucket(tokens: burst, updated: now)
            let elapsed = Double((now - bucket.updated).nanoseconds) / 1e9
            bucket.tokens = min(burst, bucket.tokens + max(0, elapsed) * perSecond)
            bucket.updated = now
            guard bucket.tokens >= 1 else {
                buckets[key] = bucket
                return .nanoseconds(Int64(((1 - bucket.tokens) / perSecond) * 1e9))
            }
            bucket.tokens -= 1
            if buckets[key] == nil && buckets.count >= maxKeys {
                prune(&buckets, now: now)
            }
            buckets[key] = bucket
            return nil
        }
    }

    /// Drops full buckets; if that frees nothing, the fullest half.
    private func prune(_ buckets: inout [String: Bucket], now: ContinuousClock.Instant) {
        let before = buckets.count
        buckets = buckets.filter { _, bucket in
            bucket.tokens + Double((now - bucket.updated).nanoseconds) / 1e9 * perSecond < burst
        }
        if buckets.count == before {
            let kept = buckets.sorted { $0.value.tokens < $1.value.tokens }.prefix(maxKeys / 2)
            buckets = Dictionary(uniqueKeysWithValues: kept.map { ($0.key, $0.value) })
        }
    }
}

extension ParleyError {
    /// `rate_limited`, with how long to wait in whole seconds (at least one).
    public static func rateLimited(retryAfter: Duration, _ message: String) -> ParleyError {
        var error = ParleyError(.rateLimited, message)
        error.retryAfterSeconds = max(1, Int((Double(retryAfter.nanoseconds) / 1e9).rounded(.up)))
        return error
    }
}
