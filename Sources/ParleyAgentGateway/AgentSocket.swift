import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import ParleyCore
import ParleyRPC
import Synchronization

/// One agent's WebSocket (`/v1/agent/ws`): the cluster's events out, and the agent's replies in.
///
/// A reply is a frame `{"type":"message","conversation_id","client_msg_id","text"}`, checked as
/// the `POST …/messages` body is, and answered by an `ack` (`seq`, `created_at`, `duplicate`)
/// or an `error` frame that names its `client_msg_id`. Replies are queued for the relay in the
/// order their frames came, without waiting for each answer, so a busy agent is not held to one
/// commit at a time; once `maxUnanswered` wait, the socket reads no more frames until one is
/// answered, and TCP holds the client back. The session is checked again for every reply, as
/// for every request: a logout elsewhere stops the socket's replies within the session cache's
/// second.
struct AgentSocket: Sendable {
    /// Replies sent and not yet answered, per socket; past it the socket stops reading.
    static let maxUnanswered = 256

    let api: AgentAPI
    let token: String
    /// Why this socket may not send replies, if it may not: a cookie-authenticated socket opened
    /// from another origin (the session cookie is `SameSite=Strict`, and this is the second lock).
    let refusal: ParleyError?

    /// Whether a socket authenticated by its request may send: Bearer tokens always; the cookie
    /// only from the console's own origin, `https://` + its host when cookies are `Secure`
    /// (`secure.cookies`), else that or `http://` + its host.
    static func refusal(for request: Request, secureCookies: Bool) -> ParleyError? {
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") { return nil }
        let origins = request.headers[values: .origin]
        guard let host = request.head.authority, !origins.isEmpty,
            origins.allSatisfy({ $0 == "https://\(host)" || (!secureCookies && $0 == "http://\(host)") })
        else {
            return ParleyError(.forbidden, "a cookie-authenticated socket sends only from the console's own origin")
        }
        return nil
    }

    struct Inbound: Decodable {
        var type: String?
        var conversationID: String?
        var clientMsgID: String?
        var text: String?
        enum CodingKeys: String, CodingKey {
            case type, text
            case conversationID = "conversation_id"
            case clientMsgID = "client_msg_id"
        }
    }

    /// Whether the socket carries the feed's events (`?events=none` turns them off).
    let events: Bool

    /// Reads `events` from the upgrade request: `all` (the default) or `none`.
    static func events(for request: Request) throws -> Bool {
        switch request.uri.queryParameters["events"].map(String.init) {
        case nil, "all": true
        case "none": false
        default: throw ParleyError(.invalidRequest, "events must be all or none")
        }
    }

    func run(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async throws {
        let (id, frames, out) = api.feed.subscribe(events: events)
        defer { api.feed.unsubscribe(id, out) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await frame in frames { try await outbound.write(.text(frame)) }
            }
            group.addTask {
                let unanswered = Unanswered()
                for try await message in inbound.messages(maxSize: Limits.requestBodyMaxBytes) {
                    guard case .text(let text) = message else {
                        out.yield(Self.error(nil, nil, ParleyError(.invalidRequest, "frames must be JSON objects with a type")))
                        continue
                    }
                    await receive(text, unanswered: unanswered, out: out)
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    private func receive(_ text: String, unanswered: Unanswered, out: AsyncStream<String>.Continuation) async {
        guard let frame = try? JSONDecoder().decode(Inbound.self, from: Data(text.utf8)), let type = frame.type else {
            out.yield(Self.error(nil, nil, ParleyError(.invalidRequest, "frames must be JSON objects with a type")))
            return
        }
        // Answers name the reply only by ids that passed their checks: a client cannot make the
        // gateway hold copies of large strings it never reads.
        let conversationID = frame.conversationID.flatMap(UUID.init(uuidString:))
        let conversation = conversationID?.uuidString.lowercased()
        let echoedID = (try? Validate.clientMsgID(frame.clientMsgID)) ?? ""
        guard type == "message" else {
            out.yield(Self.error(conversation, echoedID, ParleyError(.invalidRequest, "an agent socket takes frames of type message")))
            return
        }
        do {
            if let refusal { throw refusal }
            guard let id = conversationID else {
                throw ParleyError(.invalidRequest, "conversation_id must be a conversation's id")
            }
            let clientMsgID = try Validate.clientMsgID(frame.clientMsgID)
            let text = try Validate.text(frame.text)
            guard let agent = try await api.sessions.agent(forSession: token, lookup: api.agents.agent(forSession:)) else {
                throw ParleyError(.unauthorized, "the session has ended; log in again")
            }
            await unanswered.take()
            let request = RelayLink.agentMessage(conversation: id, agent: agent.id, clientMsgID: clientMsgID, text: text)
            api.relay.append(request) { result in
                unanswered.release()
                switch result {
                case .success(let stored):
                    out.yield(
                        #"{"type":"ack","conversation_id":"\#(id.uuidString.lowercased())","client_msg_id":\#(JSONText.quoted(clientMsgID)),"seq":\#(stored.seq),"created_at":"\#(Timestamp.format(stored.createdAtMs))","duplicate":\#(stored.duplicate)}"#
                    )
                case .failure(let error as ParleyError):
                    out.yield(Self.error(conversation, clientMsgID, error))
                case .failure:
                    // Maybe stored, maybe not: sent again with the same id, it is stored once.
                    out.yield(Self.error(conversation, clientMsgID, ParleyError(.unavailable, "the message may not have been stored; send it again")))
                }
            }
        } catch let error as ParleyError {
            out.yield(Self.error(conversation, echoedID, error))
        } catch {
            out.yield(Self.error(conversation, echoedID, ParleyError(.unavailable, "the message may not have been stored; send it again")))
        }
    }

    static func error(_ conversation: String?, _ clientMsgID: String?, _ error: ParleyError) -> String {
        #"{"type":"error","conversation_id":\#(JSONText.quoted(conversation ?? "")),"client_msg_id":\#(JSONText.quoted(clientMsgID ?? "")),"error":{"code":"\#(error.code.rawValue)","message":\#(JSONText.quoted(error.message))}}"#
    }
}

/// A socket's replies waiting for their answer: a counting semaphore for its one reader.
private final class Unanswered: Sendable {
    private let state = Mutex<(count: Int, waiter: CheckedContinuation<Void, Never>?)>((0, nil))

    /// Counts one more, first waiting while `AgentSocket.maxUnanswered` wait already. The
    /// relay answers every reply, or fails it within its call timeout, so the wait ends.
    func take() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.count < AgentSocket.maxUnanswered {
                    state.count += 1
                    return true
                }
                state.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// One was answered: its place goes to the waiting reply, if there is one.
    func release() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.count -= 1
            return nil
        }
        waiter?.resume()
    }
}
