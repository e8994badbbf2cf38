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
    let audit: AuditLog
    let relay: RelayLink
    let feed: AgentFeed
    let secureCookies: Bool
    let throttle = LoginThrottle()
    let sessions = SessionCache()

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

    struct TransferBody: Decodable {
        var agentID: String?
        enum CodingKeys: String, CodingKey { case agentID = "agent_id" }
    }

    /// A conversation's whole history, as a supervisor exports it.
    struct Transcript: Encodable {
        var conversation: ConversationSummary
        var events: [ConversationEvent]
        var exportedAt: String
        enum CodingKeys: String, CodingKey {
            case conversation, events
            case exportedAt = "exported_at"
        }
    }

    /// Transcripts longer than this are refused rather than held in memory whole.
    static let maxExportEvents = 20_000

    struct Session: Encodable {
        var token: String
        var agent: AgentView
    }

    func register(on router: Router<Context>) {
        let api = router.group("v1/agent")
        api.post("session") { request, _ in try await login(request) }
        api.delete("session") { request, context in
            let (agent, token) = try await authenticate(request, context, stateChanging: true)
            try await agents.deleteSession(token)
            sessions.forget(token)
            try await audit.record(actor: AuditLog.agent(agent.id), action: AuditLog.Action.logout)
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
            return EventsPage(events: page.events, lastSeq: page.lastSeq, more: page.more).response()
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
        api.post("conversations/:id/transfer") { request, context in
            let (agent, _) = try await authenticate(request, context, role: .supervisor, stateChanging: true)
            let body = try await JSONBody.decode(TransferBody.self, from: request)
            guard let raw = body.agentID, let target = UUID(uuidString: raw) else {
                throw ParleyError(.invalidRequest, "agent_id must be the id of the agent to transfer to")
            }
            let seq = try await relay.transfer(conversation: try conversationID(context), by: agent.id, to: target)
            return try JSONBody.response(["seq": seq])
        }
        api.get("conversations/:id/export") { request, context in
            let (agent, _) = try await authenticate(request, context, role: .supervisor)
            let id = try conversationID(context)
            guard let summary = try await queries.summary(id: id) else { throw ParleyError(.notFound, "no such conversation") }
            guard summary.lastSeq <= Self.maxExportEvents else {
                throw ParleyError(.invalidRequest, "the conversation has more than \(Self.maxExportEvents) events; page it with /events")
            }
            var events: [ConversationEvent] = []
            var after: Int64 = 0
            while true {
                let page = try await queries.events(conversationID: id, after: after, limit: Limits.maxEventsPerRead)
                events += page.events
                after = page.events.last?.seq ?? after
                if !page.more || page.events.isEmpty { break }
            }
            // Recorded before the transcript leaves, so that no export goes unrecorded.
            try await audit.record(
                actor: AuditLog.agent(agent.id), action: AuditLog.Action.export, subject: summary.id, detail: "\(events.count) events")
            return try JSONBody.response(
                Transcript(conversation: summary, events: events, exportedAt: Timestamp.format(Timestamp.nowMillis())),
                headers: [.contentDisposition: "attachment; filename=\"conversation-\(summary.id).json\""])
        }
        api.get("agents") { request, context in
            _ = try await authenticate(request, context, role: .supervisor)
            return try JSONBody.response(["agents": try await agents.list().filter { !$0.disabled }.map(AgentView.init)])
        }
        api.get("audit") { request, context in
            _ = try await authenticate(request, context, role: .admin)
            let query = request.uri.queryParameters
            let before = try query["before"].map { text -> Int64 in
                guard let value = Int64(text), value > 0 else { throw ParleyError(.invalidRequest, "before must be a positive entry id") }
                return value
            }
            let limit = try query["limit"].map { text -> Int in
                guard let value = Int(text), (1...500).contains(value) else { throw ParleyError(.invalidRequest, "limit must be an integer from 1 to 500") }
                return value
            } ?? 100
            let action = query["action"].map(String.init)
            if let action, action.count > 32 { throw ParleyError(.invalidRequest, "action is too long") }
            return try JSONBody.response(["entries": try await audit.list(before: before, action: action, limit: limit)])
        }
        api.ws("ws") { request, context in
            do {
                _ = try await authenticate(request, context)
                _ = try AgentSocket.events(for: request)
                return .upgrade([:])
            } catch {
                return .dontUpgrade
            }
        } onUpgrade: { inbound, outbound, context in
            // The upgrade was authenticated a moment ago: this finds the session in the cache.
            let (_, token) = try await authenticate(context.request, context.requestContext)
            let socket = AgentSocket(
                api: self, token: token, refusal: AgentSocket.refusal(for: context.request, secureCookies: secureCookies), events: try AgentSocket.events(for: context.request))
            try await socket.run(inbound: inbound, outbound: outbound)
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
            try await audit.record(actor: "email:\(email.lowercased())", action: AuditLog.Action.loginFailed)
            throw ParleyError(.unauthorized, "wrong email or password")
        }
        throttle.succeeded(email.lowercased())
        let token = try await agents.createSession(agentID: agent.id)
        try await audit.record(actor: AuditLog.agent(agent.id), action: AuditLog.Action.login)
        return try JSONBody.response(Session(token: token, agent: AgentView(agent)), headers: [.setCookie: cookie(token, maxAge: 12 * 3600)])
    }

    /// The agent behind a request: a Bearer token, or the session cookie. A cookie-authenticated
    /// state-changing request must carry `X-Parley-CSRF`, which a cross-site form cannot add.
    /// Every endpoint names the least role it needs; a lower one gets 403.
    func authenticate(
        _ request: Request, _ context: Context, role: AgentRole = .agent, stateChanging: Bool = false
    ) async throws -> (Agent, String) {
        var token: String?
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            token = String(header.dropFirst(7))
        } else if let cookie = request.cookies[Self.sessionCookie]?.value {
            if stateChanging && request.headers[HTTPField.Name("X-Parley-CSRF")!] == nil {
                throw ParleyError(.forbidden, "cookie-authenticated requests that change state need the X-Parley-CSRF header")
            }
            token = cookie
        }
        guard let token, !token.isEmpty, let agent = try await sessions.agent(forSession: token, lookup: agents.agent(forSession:)) else {
            throw ParleyError(.unauthorized, "log in first")
        }
        guard let held = AgentRole(rawValue: agent.role), held >= role else {
            throw ParleyError(.forbidden, "this needs the \(role.rawValue) role")
        }
        return (agent, token)
    }

    func cookie(_ token: String, maxAge: Int) -> String {
        "\(Self.sessionCookie)=\(token); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict\(secureCookies ? "; Secure" : "")"
    }
}

/// What an agent account may do; each role may do everything the ones below it may.
///
/// - agent: the queue, claiming, replying to and closing their own conversations.
/// - supervisor: also transferring and closing anyone's conversations, exporting transcripts,
///   listing agents.
/// - admin: also reading the audit log.
enum AgentRole: String, Comparable, Sendable {
    case agent, supervisor, admin

    var rank: Int {
        switch self {
        case .agent: 0
        case .supervisor: 1
        case .admin: 2
        }
    }

    static func < (lhs: AgentRole, rhs: AgentRole) -> Bool { lhs.rank < rhs.rank }
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
