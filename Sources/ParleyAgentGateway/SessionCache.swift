import Foundation
import ParleyStore
import Synchronization

/// Recently checked agent sessions, so that a busy agent's requests do not each cost a
/// PostgreSQL query (that lookup was a tenth of the gateway's CPU at 500 replies a second).
///
/// An entry lives `lifetime` (one second by default): a session deleted, or an agent disabled,
/// elsewhere stops working here within that; a logout through this gateway forgets it at once.
/// Only sessions that exist are kept, so a stream of bad tokens still reaches the database
/// (and the login throttle guards the way in).
final class SessionCache: Sendable {
    private let lifetime: Duration
    private let capacity: Int
    private let entries = Mutex<[String: (agent: Agent, until: ContinuousClock.Instant)]>([:])

    init(lifetime: Duration = .seconds(1), capacity: Int = 10_000) {
        self.lifetime = lifetime
        self.capacity = capacity
    }

    /// The agent of `token`, from the cache while it is fresh, else from `lookup`.
    func agent(forSession token: String, lookup: (String) async throws -> Agent?) async throws -> Agent? {
        let now = ContinuousClock.now
        if let hit = entries.withLock({ $0[token] }), hit.until > now { return hit.agent }
        guard let agent = try await lookup(token) else {
            forget(token)
            return nil
        }
        entries.withLock { entries in
            // Bounded: past capacity, the stale entries go, and if none is stale, all of them.
            if entries.count >= capacity {
                entries = entries.filter { $0.value.until > now }
                if entries.count >= capacity { entries.removeAll() }
            }
            entries[token] = (agent, now + lifetime)
        }
        return agent
    }

    func forget(_ token: String) {
        _ = entries.withLock { $0.removeValue(forKey: token) }
    }
}
