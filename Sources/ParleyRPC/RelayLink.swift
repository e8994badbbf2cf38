import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ParleyCore

/// A gateway's connection to the relay: typed calls that throw `ParleyError`.
///
/// Its `grpc` client must run (as a `GRPCClientService`) in the gateway's ServiceGroup.
package struct RelayLink: Sendable {
    package let grpc: GRPCClient<HTTP2ClientTransport.Posix>
    let relay: Parley_V1_Relay.Client<HTTP2ClientTransport.Posix>

    package init(address: String) throws {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw ParleyError(.invalidRequest, "the relay address must be host:port, not \(address)")
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        grpc = GRPCClient(transport: try .http2NIOPosix(target: .dns(host: host, port: port), transportSecurity: .plaintext))
        relay = Parley_V1_Relay.Client(wrapping: grpc)
    }

    static let options: CallOptions = {
        var options = CallOptions.defaults
        options.timeout = .seconds(10)
        return options
    }()

    package func register(_ request: Parley_V1_RegisterNodeRequest) async throws -> Parley_V1_RegisterNodeResponse {
        try await RPCErrors.calling { try await relay.registerNode(request, options: Self.options) }
    }

    package func start(_ request: Parley_V1_StartConversationRequest) async throws -> Parley_V1_StartConversationResponse {
        try await RPCErrors.calling { try await relay.startConversation(request, options: Self.options) }
    }

    package func append(_ request: Parley_V1_AppendMessageRequest) async throws -> Parley_V1_AppendMessageResponse {
        try await RPCErrors.calling { try await relay.appendMessage(request, options: Self.options) }
    }

    package func resume(conversation: UUID, node: String, after: Int64) async throws -> Parley_V1_ResumeResponse {
        var request = Parley_V1_ResumeRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.nodeID = node
        request.after = after
        request.limit = Int32(Limits.maxEventsPerRead)
        return try await RPCErrors.calling { try await relay.resume(request, options: Self.options) }
    }

    package func history(conversation: UUID, after: Int64) async throws -> Parley_V1_ResumeResponse {
        var request = Parley_V1_HistoryRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.after = after
        request.limit = Int32(Limits.maxEventsPerRead)
        return try await RPCErrors.calling { try await relay.history(request, options: Self.options) }
    }

    /// Closes a conversation; `agent` is nil when the visitor closes it. Returns the closing event's seq.
    package func close(conversation: UUID, agent: UUID? = nil) async throws -> Int64 {
        var request = Parley_V1_CloseRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.agentID = agent?.uuidString.lowercased() ?? ""
        return try await RPCErrors.calling { try await relay.close(request, options: Self.options) }.seq
    }

    /// Claims a queued conversation for an agent; throws `already_claimed` for every loser.
    package func claim(conversation: UUID, agent: UUID) async throws -> Int64 {
        var request = Parley_V1_ClaimRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.agentID = agent.uuidString.lowercased()
        return try await RPCErrors.calling { try await relay.claim(request, options: Self.options) }.seq
    }

    /// Sends an ephemeral typing signal; `agent` is nil for the visitor.
    package func typing(conversation: UUID, agent: UUID?) async throws {
        var request = Parley_V1_TypingRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.sender = agent == nil ? Sender.visitor.rawValue : Sender.agent.rawValue
        request.agentID = agent?.uuidString.lowercased() ?? ""
        _ = try await RPCErrors.calling { try await relay.typing(request, options: Self.options) }
    }

    /// Stores an agent's message.
    package func append(conversation: UUID, agent: UUID, clientMsgID: String, text: String) async throws -> Parley_V1_AppendMessageResponse {
        var request = Parley_V1_AppendMessageRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.sender = Sender.agent.rawValue
        request.agentID = agent.uuidString.lowercased()
        request.clientMsgID = clientMsgID
        request.text = text
        return try await append(request)
    }
}
