#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOCore
import NIOPosix
import ParleyCore
import ServiceLifecycle

/// The top of every server binary: runs it, and turns a start-up error into one clear line
/// on stderr and exit status 2 instead of a crash.
public enum Entrypoint {
    /// Makes NIO's event loops Swift Concurrency's global executor, unless
    /// `PARLEY_CONCURRENCY_EXECUTOR=pool` asks for the standard pool.
    ///
    /// Every request crosses between the two several times (socket read, handler, PostgreSQL or
    /// gRPC write, reply): with separate pools each crossing wakes a sleeping thread on the other
    /// side, and those wake-ups, not Parley's work, set the latency floor on a small machine.
    /// On the event loops a continuation resumes on the thread that read the bytes. Nothing in
    /// Parley blocks a thread (bcrypt runs on `NIOThreadPool`), which is what this requires.
    /// Call it first in `main`, from the main thread, before anything is awaited.
    @discardableResult
    public static func useEventLoopsForConcurrency() -> Bool {
        if ProcessInfo.processInfo.environment["PARLEY_CONCURRENCY_EXECUTOR"] == "pool" { return false }
        return NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    }

    public static func run(_ body: () async throws -> Void) async {
        do {
            try await body()
        } catch let error as ParleyError {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            exit(2)
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            exit(1)
        }
    }
}

extension ServiceGroupConfiguration {
    /// How every Parley binary runs its services: SIGTERM or SIGINT shuts them down gracefully,
    /// in reverse order, and a shutdown that takes longer than 30 s (a peer that never closes
    /// its connection) escalates to cancellation, so a node always stops.
    public static func parley(services: [ServiceConfiguration], logger: Logger) -> Self {
        var configuration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        configuration.maximumGracefulShutdownDuration = .seconds(30)
        return configuration
    }
}
