#if canImport(Glibc)
import Glibc
#endif
import Foundation
import ParleyCore

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
