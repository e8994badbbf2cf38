import Foundation
import GRPCCore
import Logging
import ParleyCore
import ParleyRPC
import ParleyStore
import ServiceLifecycle

/// The relay's gRPC service: validates, commits, then delivers.
struct RelayService: Parley_V1_Relay.SimpleServiceProtocol {
    let events: EventStore
    let registry: Registry
    let committer: GroupCommitter
    let dispatcher: DeliveryDispatcher
    /// Who may call what: visitor gateways act for visitors on their own node only, agent
    /// gateways for agents (see docs/security.md).
    let security: InternalSecurity
    /// One typing signal a second per conversation and sender; the rest are dropped.
    let typingLimiter = RateLimiter(perSecond: 1, burst: 1)
    /// This process's identity, so gateways notice a restart.
    let instance = UUID().uuidString
    let logger: Logger

    func registerNode(request: Parley_V1_RegisterNodeRequest, context: ServerContext) async throws -> Parley_V1_RegisterNodeResponse {
        try await RPCErrors.serving {
            let node = request.node
            try ownNode(context, node.id)
            guard !node.id.isEmpty, node.id.count <= 64, NodeRole(rawValue: node.role) == .visitorGateway else {
                throw ParleyError(.invalidRequest, "only visitor gateways register through the relay, with an id of 1 to 64 characters")
            }
            let status: NodeStatus
            if request.heartbeat {
                status = try await registry.heartbeat(id: node.id, connections: node.connections)
            } else {
                status = try await registry.register(
                    NodeRecord(
                        id: node.id, role: node.role, zone: node.zone, publicAddress: node.publicAddress,
                        internalAddress: node.internalAddress, opsAddress: node.opsAddress, connections: node.connections))
            }
            var response = Parley_V1_RegisterNodeResponse()
            response.draining = status.draining
            response.removed = status.removed
            response.resyncConversationIds = dispatcher.takeResync(for: node.id).map { $0.uuidString.lowercased() }
            response.relayInstance = instance
            return response
        }
    }

    func startConversation(
        request: Parley_V1_StartConversationRequest, context: ServerContext
    ) async throws -> Parley_V1_StartConversationResponse {
        try await RPCErrors.serving {
            guard !request.nodeID.isEmpty else { throw ParleyError(.invalidRequest, "node_id is required") }
            try ownNode(context, request.nodeID)
            let name = try Validate.optionalField(request.visitorName, name: "name", maxLength: Limits.nameMaxLength)
            let email = try Validate.email(request.visitorEmail)
            let topic = try Validate.optionalField(request.topic, name: "topic", maxLength: Limits.topicMaxLength)
            let requested = request.conversationID.isEmpty ? UUID() : try parseUUID(request.conversationID, "conversation_id")
            let userID = try Validate.optionalField(request.visitorUserID, name: "user_id", maxLength: Limits.userIDMaxLength)
            let (id, created) = try await events.startConversation(
                id: requested, pinnedNode: request.nodeID, visitorName: name, visitorEmail: email, topic: topic, visitorUserID: userID)
            var response = Parley_V1_StartConversationResponse()
            response.conversationID = id.uuidString.lowercased()
            response.lastSeq = 0
            response.createdAtMs = created
            return response
        }
    }

    func appendMessage(request: Parley_V1_AppendMessageRequest, context: ServerContext) async throws -> Parley_V1_AppendMessageResponse {
        try await RPCErrors.serving {
            let item = try appendItem(request, Result { try security.caller(context) })
            return try Self.response(try await committer.submit(item, origin: request.originNodeID))
        }
    }

    static let maxAppendBatch = 256

    func appendMessages(request: Parley_V1_AppendMessagesRequest, context: ServerContext) async throws -> Parley_V1_AppendMessagesResponse {
        try await RPCErrors.serving { try await appendBatch(request, Result { try security.caller(context) }) }
    }

    func appendStream(
        request: RPCAsyncSequence<Parley_V1_AppendMessagesRequest, any Error>, response: RPCWriter<Parley_V1_AppendMessagesResponse>,
        context: ServerContext
    ) async throws {
        try await RPCErrors.serving {
            // A gateway never ends its stream while it runs, so the relay's graceful shutdown
            // ends it. A batch whose commit was under way then is committed all the same and
            // only its answer is lost: the gateway sends it again, elsewhere, and gets the
            // stored seqs back as duplicates.
            // The caller is the same for the whole stream: its certificate is read once.
            let caller = Result { try security.caller(context) }
            try await cancelWhenGracefulShutdown {
                for try await batch in request {
                    try await response.write(try await appendBatch(batch, caller))
                }
            }
        }
    }

    /// Checks and stores one batch of messages, for `AppendMessages` and `AppendStream` alike.
    private func appendBatch(
        _ request: Parley_V1_AppendMessagesRequest, _ caller: Result<PeerIdentity?, any Error>
    ) async throws -> Parley_V1_AppendMessagesResponse {
        guard request.messages.count <= Self.maxAppendBatch else {
            throw ParleyError(.invalidRequest, "at most \(Self.maxAppendBatch) messages per call")
        }
        // Each message is checked as AppendMessage checks it; refused ones get their error,
        // the others are queued together, in order, for the next commit.
        var results = [Parley_V1_AppendResult](repeating: .init(), count: request.messages.count)
        var accepted: [(index: Int, item: AppendItem, origin: String)] = []
        for (index, message) in request.messages.enumerated() {
            do {
                accepted.append((index, try appendItem(message, caller), message.originNodeID))
            } catch let error as ParleyError {
                results[index] = Self.result(error)
            }
        }
        let outcomes = await committer.submitAll(accepted.map { ($0.item, $0.origin) })
        for (entry, outcome) in zip(accepted, outcomes) {
            switch outcome {
            case .success(.failed(let error)):
                results[entry.index] = Self.result(error)
            case .success(let stored):
                results[entry.index].stored = try Self.response(stored)
            case .failure(let error):
                // The commit failed: the whole call fails, so the gateway tries another relay.
                throw error
            }
        }
        var response = Parley_V1_AppendMessagesResponse()
        response.results = results
        return response
    }

    /// A message to store, after the checks every append gets: the caller's role and node, the
    /// sender, the agent, the id and the text. `caller` is the peer's identity, or why it has none.
    private func appendItem(_ request: Parley_V1_AppendMessageRequest, _ caller: Result<PeerIdentity?, any Error>) throws -> AppendItem {
        let conversation = try parseUUID(request.conversationID, "conversation_id")
        guard let sender = Sender(rawValue: request.sender), sender != .system else {
            throw ParleyError(.invalidRequest, "sender must be visitor or agent")
        }
        if sender == .visitor {
            try ownNode(try caller.get(), request.originNodeID)
        } else {
            try InternalSecurity.check(try caller.get(), [.agentGateway])
        }
        let agent: UUID? = sender == .agent ? try parseUUID(request.agentID, "agent_id") : nil
        return AppendItem(
            conversationID: conversation, sender: sender, clientMsgID: try Validate.clientMsgID(request.clientMsgID),
            text: try Validate.text(request.text), agentID: agent)
    }

    static func response(_ outcome: AppendOutcome) throws -> Parley_V1_AppendMessageResponse {
        var response = Parley_V1_AppendMessageResponse()
        switch outcome {
        case .stored(let event, _):
            // Delivered by the committer's hook (RelayApp), in commit order.
            response.seq = event.seq
            response.createdAtMs = event.createdAtMillis
        case .duplicate(let seq, let created):
            response.seq = seq
            response.createdAtMs = created
            response.duplicate = true
        case .failed(let error):
            throw error
        }
        return response
    }

    static func result(_ error: ParleyError) -> Parley_V1_AppendResult {
        var result = Parley_V1_AppendResult()
        result.errorCode = error.code.rawValue
        result.errorMessage = error.message
        return result
    }

    func resume(request: Parley_V1_ResumeRequest, context: ServerContext) async throws -> Parley_V1_ResumeResponse {
        try await RPCErrors.serving {
            let conversation = try parseUUID(request.conversationID, "conversation_id")
            guard !request.nodeID.isEmpty else { throw ParleyError(.invalidRequest, "node_id is required") }
            try ownNode(context, request.nodeID)
            guard request.after >= 0 else { throw ParleyError(.invalidRequest, "after must not be negative") }
            // Re-pin first, then read: anything committed after the read is delivered to the new pin.
            if let previous = try await events.repin(conversationID: conversation, to: request.nodeID) {
                dispatcher.evict(at: previous, conversation: conversation)
                logger.info("conversation re-pinned", metadata: ["parley.conversation.id": "\(conversation)", "parley.target.node": "\(request.nodeID)"])
            }
            let page = try await events.events(conversationID: conversation, after: request.after, limit: Self.limit(request.limit), tail: true)
            return Self.response(page)
        }
    }

    func history(request: Parley_V1_HistoryRequest, context: ServerContext) async throws -> Parley_V1_ResumeResponse {
        try await RPCErrors.serving {
            try security.authorize(context, .visitorGateway)
            let conversation = try parseUUID(request.conversationID, "conversation_id")
            guard request.after >= 0 else { throw ParleyError(.invalidRequest, "after must not be negative") }
            let page = try await events.events(conversationID: conversation, after: request.after, limit: Self.limit(request.limit), tail: false)
            return Self.response(page)
        }
    }

    func claim(request: Parley_V1_ClaimRequest, context: ServerContext) async throws -> Parley_V1_ClaimResponse {
        try await RPCErrors.serving {
            try security.authorize(context, .agentGateway)
            let written = try await events.claim(
                conversationID: try parseUUID(request.conversationID, "conversation_id"), agentID: try parseUUID(request.agentID, "agent_id"))
            deliver(written, request.conversationID)
            var response = Parley_V1_ClaimResponse()
            response.seq = written.event.seq
            return response
        }
    }

    func close(request: Parley_V1_CloseRequest, context: ServerContext) async throws -> Parley_V1_CloseResponse {
        try await RPCErrors.serving {
            try security.authorize(context, request.agentID.isEmpty ? .visitorGateway : .agentGateway)
            let agent = request.agentID.isEmpty ? nil : try parseUUID(request.agentID, "agent_id")
            let written = try await events.close(conversationID: try parseUUID(request.conversationID, "conversation_id"), agentID: agent)
            deliver(written, request.conversationID)
            var response = Parley_V1_CloseResponse()
            response.seq = written.event.seq
            return response
        }
    }

    func transfer(request: Parley_V1_TransferRequest, context: ServerContext) async throws -> Parley_V1_TransferResponse {
        try await RPCErrors.serving {
            try security.authorize(context, .agentGateway)
            let written = try await events.transfer(
                conversationID: try parseUUID(request.conversationID, "conversation_id"), by: try parseUUID(request.byAgentID, "by_agent_id"),
                to: try parseUUID(request.toAgentID, "to_agent_id"))
            deliver(written, request.conversationID)
            var response = Parley_V1_TransferResponse()
            response.seq = written.event.seq
            return response
        }
    }

    func checkConversations(
        request: Parley_V1_CheckConversationsRequest, context: ServerContext
    ) async throws -> Parley_V1_CheckConversationsResponse {
        try await RPCErrors.serving {
            try ownNode(context, request.nodeID)
            guard request.conversations.count <= Self.maxChecked else {
                throw ParleyError(.invalidRequest, "at most \(Self.maxChecked) conversations per call")
            }
            let cursors = try request.conversations.map { (try parseUUID($0.conversationID, "conversation_id"), $0.lastSeq) }
            var response = Parley_V1_CheckConversationsResponse()
            response.staleConversationIds = try await events.stale(cursors).map { $0.uuidString.lowercased() }
            return response
        }
    }

    static let maxChecked = 1000

    func typing(request: Parley_V1_TypingRequest, context: ServerContext) async throws -> Parley_V1_TypingResponse {
        try await RPCErrors.serving {
            let conversation = try parseUUID(request.conversationID, "conversation_id")
            guard let sender = Sender(rawValue: request.sender), sender != .system else {
                throw ParleyError(.invalidRequest, "sender must be visitor or agent")
            }
            try security.authorize(context, sender == .visitor ? .visitorGateway : .agentGateway)
            if sender == .visitor {
                guard typingLimiter.take("\(conversation) \(sender.rawValue)") == nil else { return Parley_V1_TypingResponse() }
                try await events.notifyVisitorTyping(conversationID: conversation)
            } else {
                let agent = try parseUUID(request.agentID, "agent_id")
                guard let (node, name) = try await events.typingTarget(conversationID: conversation, agentID: agent) else {
                    throw ParleyError(.notAssigned, "only the agent assigned to the open conversation may signal typing")
                }
                guard typingLimiter.take("\(conversation) \(sender.rawValue)") == nil else { return Parley_V1_TypingResponse() }
                let event = ConversationEvent(
                    seq: 0, type: ConversationEvent.Kind.typing, sender: .agent, text: "", clientMsgID: nil,
                    createdAtMillis: Timestamp.nowMillis(), agent: AgentRef(id: agent.uuidString.lowercased(), name: name))
                dispatcher.deliver(to: node, conversation: conversation, events: [event])
            }
            return Parley_V1_TypingResponse()
        }
    }

    /// A visitor gateway acts for its own node only: it cannot register, pin or resume as another.
    private func ownNode(_ context: ServerContext, _ node: String) throws {
        try ownNode(try security.caller(context), node)
    }

    private func ownNode(_ identity: PeerIdentity?, _ node: String) throws {
        guard let caller = try InternalSecurity.check(identity, [.visitorGateway]) else { return }
        guard caller.node == node else {
            throw ParleyError(.forbidden, "node \(caller.node) may not act as node \(node)")
        }
    }

    private func deliver(_ written: WrittenEvent, _ conversation: String) {
        if let node = written.pinnedNode, let id = UUID(uuidString: conversation) {
            dispatcher.deliver(to: node, conversation: id, events: [written.event])
        }
    }

    static func limit(_ requested: Int32) -> Int {
        requested <= 0 ? Limits.maxEventsPerRead : min(Int(requested), Limits.maxEventsPerRead)
    }

    static func response(_ page: EventPage) -> Parley_V1_ResumeResponse {
        var response = Parley_V1_ResumeResponse()
        response.events = page.events.map(Parley_V1_Event.init)
        response.lastSeq = page.lastSeq
        response.status = page.status
        response.more = page.more
        response.floor = page.floor
        return response
    }
}
