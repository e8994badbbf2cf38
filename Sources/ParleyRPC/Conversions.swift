import Foundation
import GRPCCore
import ParleyCore

extension Parley_V1_Event {
    /// The wire form of a domain event.
    package init(_ event: ConversationEvent) {
        self.init()
        seq = event.seq
        type = event.type
        sender = event.sender.rawValue
        text = event.text
        clientMsgID = event.clientMsgID ?? ""
        createdAtMs = event.createdAtMillis
        agentID = event.agent?.id ?? ""
        agentName = event.agent?.name ?? ""
    }

    /// The domain form of a wire event.
    package var domain: ConversationEvent {
        ConversationEvent(
            seq: seq, type: type, sender: Sender(rawValue: sender) ?? .system, text: text,
            clientMsgID: clientMsgID.isEmpty ? nil : clientMsgID, createdAtMillis: createdAtMs,
            agent: agentID.isEmpty ? nil : AgentRef(id: agentID, name: agentName))
    }
}

/// Carries `ParleyError` codes across the internal plane in the `parley-error-code` metadata.
package enum RPCErrors {
    static let codeKey = "parley-error-code"

    /// The gRPC error a server throws for a domain error.
    package static func rpcError(_ error: ParleyError) -> RPCError {
        let status: RPCError.Code =
            switch error.code {
            case .invalidRequest, .cursorAhead: .invalidArgument
            case .unauthorized: .unauthenticated
            case .forbidden, .notAssigned: .permissionDenied
            case .notFound: .notFound
            case .alreadyClaimed, .conversationClosed: .failedPrecondition
            case .unavailable, .draining: .unavailable
            default: .internalError
            }
        return RPCError(code: status, message: error.message, metadata: [codeKey: .string(error.code.rawValue)])
    }

    /// Runs a server handler, turning domain errors into gRPC errors and hiding everything else.
    package static func serving<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as ParleyError {
            throw rpcError(error)
        } catch let error as RPCError {
            throw error
        } catch {
            throw RPCError(code: .unavailable, message: "the relay could not complete the request", metadata: [codeKey: "unavailable"])
        }
    }

    /// Runs a client call, turning gRPC errors back into domain errors (`unavailable` when the peer is unreachable).
    package static func calling<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as RPCError {
            if let code = error.metadata[stringValues: codeKey].first(where: { _ in true }) {
                throw ParleyError(ParleyError.Code(wireValue: code), error.message)
            }
            throw ParleyError(.unavailable, "the relay is unreachable: \(error.code)")
        }
    }
}

/// Parses a UUID from the wire, or throws `invalid_request`.
package func parseUUID(_ string: String, _ what: String) throws -> UUID {
    guard let id = UUID(uuidString: string) else { throw ParleyError(.invalidRequest, "\(what) is not a UUID") }
    return id
}
