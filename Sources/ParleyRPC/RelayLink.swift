import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ParleyCore
import ServiceLifecycle
import Synchronization

/// A gateway's connection to the relays: typed calls that throw `ParleyError`.
///
/// A cluster may run several relays; every call goes to the relay that answered last and, if
/// that one is unreachable or cannot reach PostgreSQL (`unavailable`), moves on to the next.
/// Repeating a call that may have committed is safe: messages carry their `client_msg_id`,
/// conversation ids are chosen by the gateway, resumes and history are reads. A repeated claim
/// or close that had committed answers `already_claimed` or `conversation_closed` instead of
/// its original result, and writes nothing twice. Its `services` must run in the gateway's
/// ServiceGroup.
package struct RelayLink: Sendable {
    package let grpcClients: [GRPCClient<HTTP2ClientTransport.Posix>]
    let relays: [Parley_V1_Relay.Client<HTTP2ClientTransport.Posix>]
    /// The addresses, in the order of `grpcClients`.
    package let addresses: [String]
    private let preferred: Preferred
    private let appends: AppendQueue
    private let sessions: AppendSessions

    /// - Parameter addresses: every relay's `host:port`.
    package init(addresses: [String], security: InternalSecurity) throws {
        guard !addresses.isEmpty, addresses.count <= 16 else {
            throw ParleyError(.invalidRequest, "relay.address must list 1 to 16 relays as host:port, comma-separated")
        }
        let clients = try addresses.map { address in
            do { return try InternalPlane.client(address, security: security, serverName: PeerRole.relay.dnsName) } catch {
                throw ParleyError(.invalidRequest, "a relay address must be host:port, not \(address)")
            }
        }
        self.init(grpcClients: clients, addresses: addresses, preferred: Preferred(), appends: AppendQueue())
    }

    private init(grpcClients: [GRPCClient<HTTP2ClientTransport.Posix>], addresses: [String], preferred: Preferred, appends: AppendQueue) {
        self.grpcClients = grpcClients
        self.addresses = addresses
        self.relays = grpcClients.map { Parley_V1_Relay.Client(wrapping: $0) }
        self.preferred = preferred
        self.appends = appends
        self.sessions = AppendSessions(count: grpcClients.count)
    }

    /// The services that keep the connections to the relays up, one per relay, for the
    /// gateway's ServiceGroup. At graceful shutdown each first ends the link's append stream
    /// to its relay (after the answers still due), then closes the connection.
    package var services: [any Service] {
        grpcClients.indices.map { index in
            GRPCClientService(grpcClients[index], beforeShutdown: { [sessions] in sessions.finish(index) })
        }
    }

    /// One link per relay, sharing these connections: for what each relay must hear itself
    /// (heartbeats, which carry that relay's resync requests and instance id).
    package var each: [RelayLink] {
        grpcClients.indices.map {
            RelayLink(grpcClients: [grpcClients[$0]], addresses: [addresses[$0]], preferred: Preferred(), appends: AppendQueue())
        }
    }

    /// Calls the preferred relay, then each other one while the answer is `unavailable`.
    private func call<T>(_ body: (Parley_V1_Relay.Client<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        try await callEach { try await body(relays[$0]) }
    }

    /// `call`, with the relay's index.
    private func callEach<T>(_ body: (Int) async throws -> T) async throws -> T {
        let first = preferred.index
        var lastError: ParleyError?
        for offset in 0..<relays.count {
            let index = (first + offset) % relays.count
            do {
                let result = try await RPCErrors.calling { try await body(index) }
                if offset > 0 { preferred.index = index }
                return result
            } catch let error as ParleyError where error.code == .unavailable && relays.count > 1 {
                lastError = error
            }
        }
        throw lastError ?? ParleyError(.unavailable, "no relay is reachable")
    }

    /// Messages waiting for the next batch; shared by copies of one link.
    private final class AppendQueue: Sendable {
        struct Pending {
            var request: Parley_V1_AppendMessageRequest
            var resume: @Sendable (Result<Parley_V1_AppendResult, any Error>) -> Void
        }

        private let state = Mutex((queue: [Pending](), sending: false))

        /// Queues a message; true when the caller must start sending (no call is in flight).
        func add(_ request: Parley_V1_AppendMessageRequest, _ resume: @escaping @Sendable (Result<Parley_V1_AppendResult, any Error>) -> Void) -> Bool {
            state.withLock { state in
                state.queue.append(Pending(request: request, resume: resume))
                guard !state.sending else { return false }
                state.sending = true
                return true
            }
        }

        /// The next batch, in arrival order; nil (and sending stops) when the queue is empty.
        func next(max: Int) -> [Pending]? {
            state.withLock { state in
                guard !state.queue.isEmpty else {
                    state.sending = false
                    return nil
                }
                let batch = Array(state.queue.prefix(max))
                state.queue.removeFirst(batch.count)
                return batch
            }
        }
    }

    /// The open append stream to each relay, opened on first use and again after it ends;
    /// shared by copies of one link.
    private final class AppendSessions: Sendable {
        private let open: Mutex<[StreamedCalls<Parley_V1_AppendMessagesRequest, Parley_V1_AppendMessagesResponse>?]>

        init(count: Int) { open = Mutex(Array(repeating: nil, count: count)) }

        func session(
            _ index: Int, relay: Parley_V1_Relay.Client<HTTP2ClientTransport.Posix>
        ) -> StreamedCalls<Parley_V1_AppendMessagesRequest, Parley_V1_AppendMessagesResponse> {
            open.withLock { open in
                if let session = open[index], !session.isEnded { return session }
                let session = StreamedCalls<Parley_V1_AppendMessagesRequest, Parley_V1_AppendMessagesResponse>(
                    timeout: RelayLink.options.timeout ?? .seconds(10)
                ) { try await relay.appendStream(requestProducer: $0, onResponse: $1) }
                open[index] = session
                return session
            }
        }

        func finish(_ index: Int) {
            open.withLock { $0[index] }?.finish()
        }
    }

    /// Which relay answered last; shared by copies of one link.
    private final class Preferred: Sendable {
        private let value = Mutex(0)
        var index: Int {
            get { value.withLock { $0 } }
            set { value.withLock { $0 = newValue } }
        }
    }

    static let options: CallOptions = {
        var options = CallOptions.defaults
        options.timeout = .seconds(10)
        return options
    }()

    package func register(_ request: Parley_V1_RegisterNodeRequest) async throws -> Parley_V1_RegisterNodeResponse {
        try await call { try await $0.registerNode(request, options: Self.options) }
    }

    package func start(_ request: Parley_V1_StartConversationRequest) async throws -> Parley_V1_StartConversationResponse {
        try await call { try await $0.startConversation(request, options: Self.options) }
    }

    /// Stores one message. Messages that arrive while a batch is in flight go together in the
    /// next batch, so a busy gateway pays the per-batch cost once for many. Batches go on one
    /// long-lived `AppendStream` per relay, which spares each one a call's cost.
    package func append(_ request: Parley_V1_AppendMessageRequest) async throws -> Parley_V1_AppendMessageResponse {
        try await withCheckedThrowingContinuation { continuation in
            append(request) { continuation.resume(with: $0) }
        }
    }

    /// Stores one message, as `append(_:) async` does, but queues it before returning: messages
    /// queued one after the other by one caller go to the relay in that order, without the
    /// caller waiting for each answer. `completion` runs once, with the answer.
    package func append(
        _ request: Parley_V1_AppendMessageRequest, completion: @escaping @Sendable (Result<Parley_V1_AppendMessageResponse, any Error>) -> Void
    ) {
        let start = appends.add(request) { result in
            completion(
                result.flatMap { result in
                    guard result.errorCode.isEmpty else {
                        return .failure(ParleyError(ParleyError.Code(wireValue: result.errorCode), result.errorMessage))
                    }
                    return .success(result.stored)
                })
        }
        if start { Task { await self.sendAppends() } }
    }

    /// Sends queued messages, one batch at a time, until the queue is empty.
    private func sendAppends() async {
        while let batch = appends.next(max: 256) {
            var request = Parley_V1_AppendMessagesRequest()
            request.messages = batch.map(\.request)
            do {
                let response = try await callEach { try await sessions.session($0, relay: relays[$0]).send(request) }
                guard response.results.count == batch.count else {
                    throw ParleyError(.unavailable, "the relay answered \(response.results.count) results for \(batch.count) messages")
                }
                for (pending, result) in zip(batch, response.results) { pending.resume(.success(result)) }
            } catch {
                for pending in batch { pending.resume(.failure(error)) }
            }
        }
    }

    package func resume(conversation: UUID, node: String, after: Int64) async throws -> Parley_V1_ResumeResponse {
        var request = Parley_V1_ResumeRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.nodeID = node
        request.after = after
        request.limit = Int32(Limits.maxEventsPerRead)
        return try await call { try await $0.resume(request, options: Self.options) }
    }

    package func history(conversation: UUID, after: Int64) async throws -> Parley_V1_ResumeResponse {
        var request = Parley_V1_HistoryRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.after = after
        request.limit = Int32(Limits.maxEventsPerRead)
        return try await call { try await $0.history(request, options: Self.options) }
    }

    /// Closes a conversation; `agent` is nil when the visitor closes it. Returns the closing event's seq.
    package func close(conversation: UUID, agent: UUID? = nil) async throws -> Int64 {
        var request = Parley_V1_CloseRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.agentID = agent?.uuidString.lowercased() ?? ""
        return try await call { try await $0.close(request, options: Self.options) }.seq
    }

    /// Claims a queued conversation for an agent; throws `already_claimed` for every loser.
    package func claim(conversation: UUID, agent: UUID) async throws -> Int64 {
        var request = Parley_V1_ClaimRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.agentID = agent.uuidString.lowercased()
        return try await call { try await $0.claim(request, options: Self.options) }.seq
    }

    /// Which of these conversations (at most 1000) have events after the given cursors.
    package func stale(node: String, cursors: [(UUID, Int64)]) async throws -> [UUID] {
        var request = Parley_V1_CheckConversationsRequest()
        request.nodeID = node
        request.conversations = cursors.map { id, seq in
            var cursor = Parley_V1_ConversationCursor()
            cursor.conversationID = id.uuidString.lowercased()
            cursor.lastSeq = seq
            return cursor
        }
        return try await call { try await $0.checkConversations(request, options: Self.options) }.staleConversationIds.compactMap(UUID.init(uuidString:))
    }

    /// Moves a conversation to another agent on a supervisor's or admin's behalf; returns the event's seq.
    package func transfer(conversation: UUID, by supervisor: UUID, to agent: UUID) async throws -> Int64 {
        var request = Parley_V1_TransferRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.byAgentID = supervisor.uuidString.lowercased()
        request.toAgentID = agent.uuidString.lowercased()
        return try await call { try await $0.transfer(request, options: Self.options) }.seq
    }

    /// Sends an ephemeral typing signal; `agent` is nil for the visitor.
    package func typing(conversation: UUID, agent: UUID?) async throws {
        var request = Parley_V1_TypingRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.sender = agent == nil ? Sender.visitor.rawValue : Sender.agent.rawValue
        request.agentID = agent?.uuidString.lowercased() ?? ""
        _ = try await call { try await $0.typing(request, options: Self.options) }
    }

    /// Stores an agent's message.
    package func append(conversation: UUID, agent: UUID, clientMsgID: String, text: String) async throws -> Parley_V1_AppendMessageResponse {
        try await append(Self.agentMessage(conversation: conversation, agent: agent, clientMsgID: clientMsgID, text: text))
    }

    /// An agent's message, as `append` takes it.
    package static func agentMessage(conversation: UUID, agent: UUID, clientMsgID: String, text: String) -> Parley_V1_AppendMessageRequest {
        var request = Parley_V1_AppendMessageRequest()
        request.conversationID = conversation.uuidString.lowercased()
        request.sender = Sender.agent.rawValue
        request.agentID = agent.uuidString.lowercased()
        request.clientMsgID = clientMsgID
        request.text = text
        return request
    }
}
