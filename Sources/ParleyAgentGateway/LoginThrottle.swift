import Foundation
import ParleyCore
import Synchronization

/// Slows password guessing: after 5 failures for one email, logins for it are refused for a
/// minute (HTTP 429, `rate_limited`).
final class LoginThrottle: Sendable {
    private struct Entry {
        var failures = 0
        var lockedUntil: ContinuousClock.Instant?
    }

    private let entries = Mutex<[String: Entry]>([:])
    private let maxFailures = 5
    private let lockout = Duration.seconds(60)

    func check(_ email: String) throws {
        let locked = entries.withLock { entries -> Bool in
            guard let until = entries[email]?.lockedUntil else { return false }
            if until > .now { return true }
            entries[email] = nil
            return false
        }
        if locked { throw ParleyError(.rateLimited, "too many failed logins for this account; try again in a minute") }
    }

    func failed(_ email: String) {
        entries.withLock { entries in
            if entries.count > 100_000 { entries.removeAll() }  // bound memory under a spray of emails
            var entry = entries[email] ?? Entry()
            entry.failures += 1
            if entry.failures >= maxFailures { entry.lockedUntil = .now + lockout }
            entries[email] = entry
        }
    }

    func succeeded(_ email: String) {
        entries.withLock { _ = $0.removeValue(forKey: email) }
    }
}
