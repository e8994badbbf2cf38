import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdBcrypt
import HummingbirdWebSocket
import Logging
import NIOPosix
import ParleyCore
import ParleyRPC
import ParleyRuntime
import ParleyStore

/// The agent HTTP API and event WebSocket of one agent gateway.
struct AgentAPI: Sendable {
    typealias Context = BasicWebSocketRequestContext

    let agents: AgentStore
    let queries: ConversationQueries
    let relay: RelayLink
    let feed: AgentFeed
    let secureCookies: Bool
    let throttle = LoginThrottle()

    static let sessionCookie = "parley_agent_session"

    struct LoginBody: Decodable {
        var email: String?
        var password: String?
    }

    struct AgentView: Encodable {
        var id: String
        var email: String
        var name: String
        var role: String
        init(_ agent: Agent) {
            id = agent.id.uuidString.lowercased()
            email = agent.email
            name = agent.name
            role = agent.role
        }
    }

    struct Session: Encodable {
        var token: String
        var agent: AgentView
    }

    func register(on router: Router<Context>) {
        let api = router.group("v1/agent")
        api.post("session") { request, _ in try await login(request) }
        api.delete("session") { request, context in
            let (_, token) = try await authenticate(request, context, stateChanging: true)
            try await agents.deleteSession(token)
            return try JSONBody.response(["ok": true], headers: [.setCookie: cookie("", maxAge: 0)])
        }
        api.get("me") { request, context in
            let (agent, _) = try await authenticate(request, context)
            return try JSONBody.response(["agent": AgentView(agent)])
        }
        api.get("conversations") { request, context in
            _ = try await authenticate(request, context)
            let status = request.uri.queryParameters["status"].map(String.init) ?? "queued"
            guard ["queued", "open", "closed"].contains(status) else {
                throw ParleyError(.invalidRequest, "status must be queued, open or closed")
            }
            return try JSONBody.response(["conversations": try await queries.list(status: status)])
        }
        api.get("conversations/:id") { request, context in
            _ = try await authenticate(request, context)
            guard let summary = try await queries.summary(id: try conversationID(context)) else {
                throw ParleyError(.notFound, "no such conversation")
            }
            return try JSONBody.response(["conversation": summary])
        }
        api.post("conversations/:id/claim") { request, context in
            let (agent, _) = try await authenticate(request, context, stateChanging: true)
            let seq = try await relay.claim(conversation: try conversationID(context), agent: agent.id)
            return try JSONBody.response(["seq": seq])
        }
        api.get("conversations/:id/events") { request, context in
            _ = try await authenticate(request, context)
            let after = try Validate.cursor(request.uri.queryParameters["after"].map(String.init))
            let limitText = request.uri.queryParameters["limit"].map(String.init) ?? "\(Limits.maxEventsPerRead)"
            guard let limit = Int(limitText), (1...Limits.maxEventsPerRead).contains(limit) else {
                throw ParleyError(.invalidRequest, "limit must be an integer from 1 to \(Limits.maxEventsPerRead)")
            }
            let page = try await queries.events(conversationID: try conversationID(context), after: after, limit: limit)
            return try JSONBody.response(EventsPage(events: page.events, lastSeq: page.lastSeq, more: page.more))
        }
        api.post("conversations/:id/messages") { request, context in
            let (agent, _) = try await authenticate(request, context, stateChanging: true)
            let body = try await JSONBody.decode(MessageBody.self, from: request)
            let stored = try await relay.append(
                conversation: try conversationID(context), agent: agent.id, clientMsgID: try Validate.clientMsgID(body.clientMsgID),
                text: try Validate.text(body.text))
            return try JSONBody.response(
                SeqReply(seq: stored.seq, createdAt: Timestamp.format(stored.createdAtMs), duplicate: stored.duplicate),
                status: stored.duplicate ? .ok : .created)
        }
        api.post("conversations/:id/typing") { request, context in
            let (agent, _) = try await authenticate(request, context, stateChanging: true)
            try await relay.typing(conversation: try conversationID(context), agent: agent.id)
            return Response(status: .noContent)
        }
        api.post("conversations/:id/close") { request, context in
            let (agent, _) = try await authenticate(request, context, stateChanging: true)
            let seq = try await relay.close(conversation: try conversationID(context), agent: agent.id)
            return try JSONBody.response(["seq": seq])
        }
        api.ws("ws") { request, context in
            do {
                _ = try await authenticate(request, context)
                return .upgrade([:])
            } catch {
                return .dontUpgrade
            }
        } onUpgrade: { inbound, outbound, context in
            let (id, frames) = feed.subscribe()
            defer { feed.unsubscribe(id) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await frame in frames { try await outbound.write(.text(frame)) }
                }
                group.addTask {
                    // Agents send nothing yet; reading keeps close and ping frames flowing.
                    for try await _ in inbound.messages(maxSize: 4096) {}
                }
                try await group.next()
                group.cancelAll()
            }
        }
    }

    func conversationID(_ context: Context) throws -> UUID {
        guard let raw = context.parameters.get("id"), let id = UUID(uuidString: raw) else {
            throw ParleyError(.notFound, "no such conversation")
        }
        return id
    }

    func login(_ request: Request) async throws -> Response {
        let body = try await JSONBody.decode(LoginBody.self, from: request)
        guard let email = body.email, let password = body.password, email.count <= Limits.emailMaxLength, password.count <= 256 else {
            throw ParleyError(.invalidRequest, "email and password are required")
        }
        try throttle.check(email.lowercased())
        let found = try await agents.credentials(email: email)
        // Verify against a dummy hash when the account does not exist, so timing does not reveal accounts.
        let hash = found?.1 ?? "$2b$10$CwTycUXWue0Thq9StjUM0uJ8.3ixjgM8RxxD0gqZxC3dq2U7nW3.6"
        let valid = try await NIOThreadPool.singleton.runIfActive { Bcrypt.verify(password, hash: hash) }
        guard valid, let (agent, _) = found else {
            throttle.failed(email.lowercased())
            throw ParleyError(.unauthorized, "wrong email or password")
        }
        throttle.succeeded(email.lowercased())
        let token = try await agents.createSession(agentID: agent.id)
        return try JSONBody.response(Session(token: token, agent: AgentView(agent)), headers: [.setCookie: cookie(token, maxAge: 12 * 3600)])
    }

    /// The agent behind a request: a Bearer token, or the session cookie. A cookie-authenticated
    /// state-changing request must carry `X-Parley-CSRF`, which a cross-site form cannot add.
    func authenticate(_ request: Request, _ context: Context, stateChanging: Bool = false) async throws -> (Agent, String) {
        var token: String?
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            token = String(header.dropFirst(7))
        } else if let cookie = request.cookies[Self.sessionCookie]?.value {
            if stateChanging && request.headers[HTTPField.Name("X-Parley-CSRF")!] == nil {
                throw ParleyError(.forbidden, "cookie-authenticated requests that change state need the X-Parley-CSRF header")
            }
            token = cookie
        }
        guard let token, !token.isEmpty, let agent = try await agents.agent(forSession: token) else {
            throw ParleyError(.unauthorized, "log in first")
        }
        return (agent, token)
    }

    func cookie(_ token: String, maxAge: Int) -> String {
        "\(Self.sessionCookie)=\(token); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict\(secureCookies ? "; Secure" : "")"
    }
}

struct SeqReply: Encodable {
    var seq: Int64
    var createdAt: String
    var duplicate: Bool
    enum CodingKeys: String, CodingKey {
        case seq, duplicate
        case createdAt = "created_at"
    }
}
