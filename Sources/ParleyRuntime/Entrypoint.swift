#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import ParleyCore
import ServiceLifecycle

/// The top of every server binary: runs it, and turns a start-up error into one clear line
/// on stderr and exit status 2 instead of a crash.
public enum Entrypoint {
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
