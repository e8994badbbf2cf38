import Foundation
import Logging
import ParleyCore
@testable import ParleyStore
import PostgresNIO
import Testing

/// Integration tests against the real PostgreSQL that `make test` starts (PARLEY_TEST_DATABASE_URL).
let testDatabaseURL = ProcessInfo.processInfo.environment["PARLEY_TEST_DATABASE_URL"]

func withDatabase<T: Sendable>(_ body: @Sendable (PostgresClient, Logger) async throws -> T) async throws -> T {
    let url = try DatabaseURL(try #require(testDatabaseURL))
    var logger = Logger(label: "store-tests")
    logger.logLevel = .error
    let client = PostgresClient(configuration: url.clientConfiguration(maxConnections: 20), backgroundLogger: logger)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            await client.run()
            return nil
        }
        defer { group.cancelAll() }
        try await Migrations.migrate(client, logger: logger)
        return try await body(client, logger)
    }
}

func makeAgent(_ client: PostgresClient, _ logger: Logger, name: String = "Ann", role: String = "agent") async throws -> Agent {
    try await AgentStore(client: client, logger: logger).add(
        email: "\(UUID().uuidString.prefix(8))@agents.test", name: name, role: role, passwordHash: "x")
}

@Suite(.enabled(if: testDatabaseURL != nil, "needs PARLEY_TEST_DATABASE_URL (make test sets it)"))
struct StoreTests {
    @Test func migrationsAreIdempotent() async throws {
        try await withDatabase { client, logger in
            let applied = try await Migrations.migrate(client, logger: logger)
            #expect(applied.isEmpty)
        }
    }

    @Test func sequenceNumbersAreConsecutiveAndRetriesStoreNothing() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (id, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "V", visitorEmail: "", topic: "")
            let outcomes = try await store.append([
                AppendItem(conversationID: id, sender: .visitor, clientMsgID: "a", text: "one"),
                AppendItem(conversationID: id, sender: .visitor, clientMsgID: "b", text: "two"),
                AppendItem(conversationID: id, sender: .visitor, clientMsgID: "a", text: "one again in the same batch"),
            ])
            guard case .stored(let first, let node) = outcomes[0], case .stored(let second, _) = outcomes[1],
                case .duplicate(let again, _) = outcomes[2]
            else {
                Issue.record("unexpected outcomes \(outcomes)")
                return
            }
            #expect(node == "vg-t")
            #expect([first.seq, second.seq, again] == [1, 2, 1])
            let retry = try await store.append([AppendItem(conversationID: id, sender: .visitor, clientMsgID: "b", text: "two")])
            if case .duplicate(let seq, _) = retry[0] { #expect(seq == 2) } else { Issue.record("retry was stored again") }
            let page = try await store.events(conversationID: id, after: 0, limit: 10)
            #expect(page.events.map(\.seq) == [1, 2])
            #expect(page.events.map(\.text) == ["one", "two"])
            #expect(page.lastSeq == 2)
        }
    }

    @Test(.timeLimit(.minutes(1))) func messagesTravelInsideNotificationsUnlessTooLarge() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (small, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            let (large, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            let ann = try await makeAgent(client, logger)
            _ = try await store.claim(conversationID: small, agentID: ann.id)
            let (smallID, largeID) = (small.uuidString.lowercased(), large.uuidString.lowercased())
            let lines = try await client.withConnection { connection in
                let notifications = try await connection.listen(EventStore.notifyChannel)
                var iterator = notifications.makeAsyncIterator()
                _ = try await store.append([
                    AppendItem(conversationID: small, sender: .visitor, clientMsgID: "m1", text: "hi \"there\"\nline two"),
                    AppendItem(conversationID: large, sender: .visitor, clientMsgID: "m2", text: String(repeating: "é", count: 4000)),
                    AppendItem(conversationID: small, sender: .agent, clientMsgID: "m3", text: "again", agentID: ann.id),
                    AppendItem(conversationID: large, sender: .visitor, clientMsgID: "m4", text: "small, after a large one"),
                ])
                // Other tests notify on the same channel: keep this test's conversations' lines.
                var lines: [String] = []
                while lines.count < 3, let notification = try await iterator.next() {
                    #expect(notification.payload.utf8.count <= 7000)
                    lines += notification.payload.split(separator: "\n").map(String.init).filter { $0.contains(smallID) || $0.contains(largeID) }
                }
                return lines
            }
            // The large event's conversation gets its range to read; the others travel inline,
            // one line each (a newline in the text stays escaped), exactly as clients get them.
            #expect(lines.count == 3)
            #expect(lines.contains("e \(largeID) 1 2"))
            let inline = lines.filter { $0.hasPrefix("E \(smallID) {") }
            #expect(inline.count == 2)
            let events = try inline.map { try JSONDecoder().decode(ConversationEvent.self, from: Data($0.split(separator: " ", maxSplits: 2)[2].utf8)) }
            #expect(events.map(\.seq) == [2, 3])
            #expect(events.map(\.text) == ["hi \"there\"\nline two", "again"])
            #expect(events[1].agent == AgentRef(id: ann.id.uuidString.lowercased(), name: "Ann"))
            // The time is the stored one, to the millisecond.
            let stored = try await store.events(conversationID: small, after: 1, limit: 10).events
            #expect(events.map(\.createdAtMillis) == stored.map(\.createdAtMillis))
        }
    }

    /// A batch of one message goes to `parley_append_one`, a batch of more to `parley_append`:
    /// the same story told both ways gets the same answers.
    @Test func oneMessageAloneIsAnsweredAsInABatch() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let ann = try await makeAgent(client, logger)
            let bob = try await makeAgent(client, logger, name: "Bob")
            var told: [[String]] = []
            for alone in [true, false] {
                let (id, _) = try await store.startConversation(pinnedNode: "vg-a", visitorName: "", visitorEmail: "", topic: "")
                let (other, _) = try await store.startConversation(pinnedNode: "vg-a", visitorName: "", visitorEmail: "", topic: "")
                _ = try await store.claim(conversationID: id, agentID: ann.id)
                var beside = 0
                // In a batch, each message goes beside one to another conversation, and first.
                let append = { (item: AppendItem) async throws -> AppendOutcome in
                    beside += 1
                    let extra = AppendItem(conversationID: other, sender: .visitor, clientMsgID: "o\(beside)", text: "beside")
                    return try await store.append(alone ? [item] : [item, extra])[0]
                }
                var outcomes = [
                    try await append(AppendItem(conversationID: id, sender: .visitor, clientMsgID: "v1", text: "hello")),
                    try await append(AppendItem(conversationID: id, sender: .agent, clientMsgID: "a1", text: "hi", agentID: ann.id)),
                    try await append(AppendItem(conversationID: id, sender: .visitor, clientMsgID: "v1", text: "hello, again")),
                    try await append(AppendItem(conversationID: id, sender: .agent, clientMsgID: "b1", text: "me?", agentID: bob.id)),
                    try await append(AppendItem(conversationID: id, sender: .agent, clientMsgID: "n1", text: "nobody")),
                    try await append(AppendItem(conversationID: UUID(), sender: .visitor, clientMsgID: "x1", text: "nowhere")),
                    try await append(AppendItem(conversationID: id, sender: .visitor, clientMsgID: "v2", text: String(repeating: "é", count: 4000))),
                ]
                _ = try await store.close(conversationID: id, agentID: ann.id)
                outcomes.append(try await append(AppendItem(conversationID: id, sender: .visitor, clientMsgID: "v3", text: "late")))
                told.append(outcomes.map { outcome in
                    switch outcome {
                    case .stored(let event, let node):
                        "stored \(event.seq) \(event.sender.rawValue) \(event.text.prefix(8)) \(event.agent?.name ?? "-") \(node ?? "-")"
                    case .duplicate(let seq, _): "duplicate \(seq)"
                    case .failed(let error): "failed \(error.code)"
                    }
                })
            }
            #expect(told[0] == told[1])
            #expect(told[0] == [
                "stored 2 visitor hello - vg-a", "stored 3 agent hi Ann vg-a", "duplicate 2", "failed not_assigned", "failed not_assigned",
                "failed not_found", "stored 4 visitor éééééééé - vg-a", "failed conversation_closed",
            ])
        }
    }

    @Test(.timeLimit(.minutes(1))) func oneMessageAloneTravelsInsideItsNotificationUnlessTooLarge() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (id, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            let ann = try await makeAgent(client, logger)
            _ = try await store.claim(conversationID: id, agentID: ann.id)
            let conversation = id.uuidString.lowercased()
            let lines = try await client.withConnection { connection in
                let notifications = try await connection.listen(EventStore.notifyChannel)
                var iterator = notifications.makeAsyncIterator()
                _ = try await store.append([AppendItem(conversationID: id, sender: .agent, clientMsgID: "m1", text: "hi \"there\"", agentID: ann.id)])
                _ = try await store.append([AppendItem(conversationID: id, sender: .visitor, clientMsgID: "m2", text: String(repeating: "é", count: 4000))])
                var lines: [String] = []
                while lines.count < 2, let notification = try await iterator.next() {
                    lines += notification.payload.split(separator: "\n").map(String.init).filter { $0.contains(conversation) }
                }
                return lines
            }
            #expect(lines.count == 2)
            #expect(lines.last == "e \(conversation) 3 3")
            let inline = try #require(lines.first)
            #expect(inline.hasPrefix("E \(conversation) {"))
            let event = try JSONDecoder().decode(ConversationEvent.self, from: Data(inline.split(separator: " ", maxSplits: 2)[2].utf8))
            let stored = try await store.events(conversationID: id, after: 1, limit: 1).events
            #expect(event == stored.first)
            #expect(event.agent == AgentRef(id: ann.id.uuidString.lowercased(), name: "Ann"))
        }
    }

    /// A connection keeps the plan it made on its first batch. Made on a new database's empty
    /// tables, that plan must still probe the indexes once `events` is large, not read it whole.
    @Test func aBatchReadsOnlyItsOwnRowsWhateverTheTablesWereWhenPlanned() async throws {
        let name = "parley_plan_\(UUID().uuidString.prefix(8).lowercased())"
        try await withDatabase { client, _ in try await client.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)")) }
        var url = try DatabaseURL(try #require(testDatabaseURL))
        url.database = name
        var logger = Logger(label: "store-tests")
        logger.logLevel = .error
        // One connection: the plan made by the first batch is the one the last batch runs.
        let client = PostgresClient(configuration: url.clientConfiguration(maxConnections: 1), backgroundLogger: logger)
        let read = try await withThrowingTaskGroup(of: Int64?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            defer { group.cancelAll() }
            try await Migrations.migrate(client, logger: logger)
            let store = EventStore(client: client, logger: logger)
            let (id, _) = try await store.startConversation(pinnedNode: "vg-p", visitorName: "", visitorEmail: "", topic: "")
            let (other, _) = try await store.startConversation(pinnedNode: "vg-p", visitorName: "", visitorEmail: "", topic: "")
            _ = try await store.append([
                AppendItem(conversationID: id, sender: .visitor, clientMsgID: "p1", text: "x"),
                AppendItem(conversationID: id, sender: .visitor, clientMsgID: "p2", text: "y"),
            ])
            try await client.query(
                """
                INSERT INTO events (conversation_id, seq, type, sender, text, client_msg_id)
                SELECT \(other), n, 'message', 'visitor', 'filler', 'f' || n FROM generate_series(1, 5000) AS n
                """, logger: logger)
            try await client.query("UPDATE conversations SET last_seq = 5000 WHERE id = \(other)", logger: logger)
            return try await client.withTransaction(logger: logger) { tx in
                let outcomes = try await tx.query(
                    """
                    SELECT o_outcome FROM parley_append(\([id, other]), \(["visitor", "visitor"]), \(["z", "z"]), \(["p3", "p4"]), \(["", ""]))
                    """, logger: logger)
                for try await outcome in outcomes.decode(String.self) { #expect(outcome == "stored") }
                let rows = try await tx.query(
                    "SELECT pg_stat_get_xact_tuples_returned('events'::regclass) + pg_stat_get_xact_tuples_fetched('events'::regclass)",
                    logger: logger)
                for try await count in rows.decode(Int64.self) { return count }
                return -1
            }
        }
        try await withDatabase { client, _ in try await client.query(PostgresQuery(unsafeSQL: "DROP DATABASE \(name) WITH (FORCE)")) }
        // Two duplicate probes; the 5,000 rows of the other conversation stay unread.
        #expect((0..<50).contains(read), "the batch read \(read) rows of events")
    }

    @Test func concurrentBatchesNeverShareOrSkipASequenceNumber() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (id, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<8 {
                    group.addTask {
                        for n in 0..<10 {
                            _ = try await store.append([AppendItem(conversationID: id, sender: .visitor, clientMsgID: "w\(worker)-\(n)", text: "x")])
                        }
                    }
                }
                try await group.waitForAll()
            }
            let page = try await store.events(conversationID: id, after: 0, limit: 500)
            #expect(page.events.map(\.seq) == Array(1...80))
        }
    }

    @Test func exactlyOneOfManyConcurrentClaimsWins() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (id, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            var agents: [Agent] = []
            for n in 0..<6 { agents.append(try await makeAgent(client, logger, name: "Agent \(n)")) }
            let results = await withTaskGroup(of: Result<WrittenEvent, any Error>.self) { group in
                for agent in agents {
                    group.addTask {
                        do { return .success(try await store.claim(conversationID: id, agentID: agent.id)) } catch { return .failure(error) }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let winners = results.compactMap { try? $0.get() }
            #expect(winners.count == 1)
            for case .failure(let error) in results {
                #expect((error as? ParleyError)?.code == .alreadyClaimed)
            }
            #expect(winners.first?.event.type == ConversationEvent.Kind.agentJoined)
        }
    }

    @Test func onlyTheAssignedAgentWritesAndClosedConversationsRefuse() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (id, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            let ann = try await makeAgent(client, logger)
            let bob = try await makeAgent(client, logger, name: "Bob")
            _ = try await store.claim(conversationID: id, agentID: ann.id)
            let outcomes = try await store.append([
                AppendItem(conversationID: id, sender: .agent, clientMsgID: "x", text: "from bob", agentID: bob.id),
                AppendItem(conversationID: id, sender: .agent, clientMsgID: "y", text: "from ann", agentID: ann.id),
                AppendItem(conversationID: UUID(), sender: .visitor, clientMsgID: "z", text: "nowhere"),
            ])
            #expect(outcomes[0] == .failed(ParleyError(.notAssigned, "only the agent assigned to the conversation may write to it")))
            guard case .stored(let event, _) = outcomes[1] else { Issue.record("ann's message was not stored"); return }
            #expect(event.agent?.name == "Ann")
            #expect(event.seq == 2)
            if case .failed(let error) = outcomes[2] { #expect(error.code == .notFound) } else { Issue.record("unknown conversation accepted") }
            _ = try await store.close(conversationID: id, agentID: ann.id)
            let late = try await store.append([AppendItem(conversationID: id, sender: .visitor, clientMsgID: "late", text: "hello?")])
            if case .failed(let error) = late[0] { #expect(error.code == .conversationClosed) } else { Issue.record("closed conversation accepted a message") }
            let page = try await store.events(conversationID: id, after: 0, limit: 10)
            #expect(page.events.map(\.type) == ["agent_joined", "message", "closed"])
            #expect(page.status == "closed")
        }
    }

    @Test func onlySupervisorsTransferAndEachChangeIsAuditedWithIt() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (id, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            let ann = try await makeAgent(client, logger)
            let bob = try await makeAgent(client, logger, name: "Bob")
            let sue = try await makeAgent(client, logger, name: "Sue", role: "supervisor")
            _ = try await store.claim(conversationID: id, agentID: ann.id)
            // An agent cannot move a conversation, not even their own; a supervisor can.
            await #expect(throws: ParleyError(.forbidden, "only supervisors and admins may transfer conversations")) {
                try await store.transfer(conversationID: id, by: ann.id, to: bob.id)
            }
            let moved = try await store.transfer(conversationID: id, by: sue.id, to: bob.id)
            #expect(moved.event.type == ConversationEvent.Kind.transferred && moved.event.agent?.name == "Bob" && moved.event.seq == 2)
            // Ann no longer writes; Bob does; Sue may close though not assigned.
            let outcomes = try await store.append([
                AppendItem(conversationID: id, sender: .agent, clientMsgID: "a", text: "ann", agentID: ann.id),
                AppendItem(conversationID: id, sender: .agent, clientMsgID: "b", text: "bob", agentID: bob.id),
            ])
            #expect(outcomes[0] == .failed(ParleyError(.notAssigned, "only the agent assigned to the conversation may write to it")))
            await #expect(throws: ParleyError.self) { try await store.close(conversationID: id, agentID: ann.id) }
            _ = try await store.close(conversationID: id, agentID: sue.id)
            let subject = id.uuidString.lowercased()
            let entries = try await AuditLog(client: client, logger: logger).list(limit: 500).filter { $0.subject == subject }
            #expect(entries.map(\.action) == ["close", "transfer", "claim"])
            #expect(entries.map(\.actor) == [AuditLog.agent(sue.id), AuditLog.agent(sue.id), AuditLog.agent(ann.id)])
        }
    }

    @Test func staleNamesOnlyConversationsWithNewerEvents() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (a, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            let (b, _) = try await store.startConversation(pinnedNode: "vg-t", visitorName: "", visitorEmail: "", topic: "")
            _ = try await store.append([AppendItem(conversationID: a, sender: .visitor, clientMsgID: "s1", text: "hi")])
            #expect(try await store.stale([(a, 0), (b, 0), (UUID(), 0)]) == [a])
            #expect(try await store.stale([(a, 1), (b, 0)]).isEmpty)
        }
    }

    @Test func tailReadsMoveAFarCursorUpAndRepinReportsThePreviousNode() async throws {
        try await withDatabase { client, logger in
            let store = EventStore(client: client, logger: logger)
            let (id, _) = try await store.startConversation(pinnedNode: "vg-a", visitorName: "", visitorEmail: "", topic: "")
            _ = try await store.append((1...30).map { AppendItem(conversationID: id, sender: .visitor, clientMsgID: "m\($0)", text: "t\($0)") })
            let tail = try await store.events(conversationID: id, after: 0, limit: 10, tail: true)
            #expect(tail.floor == 20)
            #expect(tail.events.map(\.seq) == Array(21...30))
            let paged = try await store.events(conversationID: id, after: 0, limit: 10)
            #expect(paged.more)
            #expect(paged.events.map(\.seq) == Array(1...10))
            let previousPin = try await store.repin(conversationID: id, to: "vg-b")
            #expect(previousPin == "vg-a")
            let samePin = try await store.repin(conversationID: id, to: "vg-b")
            #expect(samePin == nil)
            await #expect(throws: ParleyError.self) { try await store.events(conversationID: id, after: 31, limit: 10) }
        }
    }

    @Test func registryTracksDrainAndRemoval() async throws {
        try await withDatabase { client, logger in
            let registry = Registry(client: client, logger: logger)
            let id = "vg-\(UUID().uuidString.prefix(6))"
            let node = NodeRecord(id: id, role: "visitor_gateway", zone: "edge", publicAddress: "127.0.0.1:1", internalAddress: "127.0.0.1:2", opsAddress: "127.0.0.1:3")
            let registered = try await registry.register(node)
            #expect(registered.draining == false)
            let drained = try await registry.setState(id: id, draining: true)
            #expect(drained)
            let beat = try await registry.heartbeat(id: id, connections: 3)
            #expect(beat.draining)
            // A restart keeps the administrator's drain.
            let reregistered = try await registry.register(node)
            #expect(reregistered.draining)
            let shown = try await registry.node(id: id)
            #expect(shown?.health == "up")
            let removed = try await registry.remove(id: id)
            #expect(removed)
            let afterRemoval = try await registry.heartbeat(id: id, connections: 0)
            #expect(afterRemoval.removed)
            let removedAgain = try await registry.remove(id: id)
            #expect(removedAgain == false)
        }
    }

    @Test func sessionsAuthenticateUntilDisabled() async throws {
        try await withDatabase { client, logger in
            let agents = AgentStore(client: client, logger: logger)
            let agent = try await makeAgent(client, logger)
            let token = try await agents.createSession(agentID: agent.id)
            let sessionAgent = try await agents.agent(forSession: token)
            #expect(sessionAgent?.id == agent.id)
            let wrongToken = try await agents.agent(forSession: token + "x")
            #expect(wrongToken == nil)
            await #expect(throws: ParleyError.self) {
                try await agents.add(email: agent.email.uppercased(), name: "dup", role: "agent", passwordHash: "x")
            }
            let disabled = try await agents.disable(email: agent.email)
            #expect(disabled)
            let afterDisable = try await agents.agent(forSession: token)
            #expect(afterDisable == nil)
        }
    }
}

@Suite struct NotifyChunkTests {
    @Test func chunksStayUnderPostgresLimitAndKeepEveryLine() {
        let lines = (0..<600).map { "e \(UUID().uuidString.lowercased()) \($0) \($0 + 1)" }
        let chunks = EventStore.chunks(lines)
        #expect(chunks.count > 1)
        #expect(chunks.allSatisfy { $0.utf8.count <= 7000 })
        #expect(chunks.flatMap { $0.split(separator: "\n").map(String.init) } == lines)
        #expect(EventStore.chunks([]).isEmpty)
    }
}

/// Runs `body` connected as `login` instead of the test URL's user.
func withLogin(_ login: String, _ body: @Sendable (PostgresClient, Logger) async throws -> Void) async throws {
    var url = try DatabaseURL(try #require(testDatabaseURL))
    url.username = login
    url.password = nil
    var logger = Logger(label: "store-tests")
    logger.logLevel = .error
    let client = PostgresClient(configuration: url.clientConfiguration(maxConnections: 2), backgroundLogger: logger)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await client.run() }
        defer { group.cancelAll() }
        try await body(client, logger)
    }
}

/// Whether PostgreSQL refuses `sql` for lack of privilege (SQLSTATE 42501).
func refused(_ client: PostgresClient, _ logger: Logger, _ sql: String) async -> Bool {
    do {
        try await client.query(PostgresQuery(unsafeSQL: sql), logger: logger)
        return false
    } catch let error as PSQLError {
        return error.serverInfo?[.sqlState] == "42501"
    } catch {
        return false
    }
}

@Suite(.enabled(if: testDatabaseURL != nil, "needs PARLEY_TEST_DATABASE_URL (make test sets it)"))
struct RoleTests {
    @Test func eachServiceLoginHoldsOnlyItsOwnGrants() async throws {
        let suffix = UUID().uuidString.prefix(8).lowercased()
        let relay = "t_relay_\(suffix)", agentGateway = "t_agw_\(suffix)"
        let conversation = try await withDatabase { client, logger in
            try await DatabaseRole.relay.createLogin(relay, password: nil, client: client, logger: logger)
            try await DatabaseRole.agentGateway.createLogin(agentGateway, password: "it's secret", client: client, logger: logger)
            _ = try await makeAgent(client, logger)
            return try await EventStore(client: client, logger: logger)
                .startConversation(pinnedNode: "vg-r", visitorName: "", visitorEmail: "", topic: "").id
        }
        let id = conversation.uuidString.lowercased()
        try await withLogin(relay) { client, logger in
            // What the relay does works ...
            let stored = try await EventStore(client: client, logger: logger).append([
                AppendItem(conversationID: conversation, sender: .visitor, clientMsgID: "r1", text: "hello")
            ])
            guard case .stored = stored[0] else {
                Issue.record("the relay's login could not store a message: \(stored)")
                return
            }
            _ = try await Registry(client: client, logger: logger).register(
                NodeRecord(id: "vg-r", role: "visitor_gateway", zone: "edge", publicAddress: "", internalAddress: "", opsAddress: ""))
            // ... and nothing else.
            #expect(await refused(client, logger, "DELETE FROM events WHERE conversation_id = '\(id)'"))
            #expect(await refused(client, logger, "UPDATE events SET text = 'changed' WHERE conversation_id = '\(id)'"))
            #expect(await refused(client, logger, "SELECT password_hash FROM agents"))
            #expect(await refused(client, logger, "UPDATE nodes SET state = 'active' WHERE id = 'vg-r'"))
            #expect(await refused(client, logger, "DELETE FROM agent_sessions"))
            #expect(await refused(client, logger, "CREATE TABLE intruder (x int)"))
            // The audit log takes new entries and nothing else.
            try await AuditLog(client: client, logger: logger).record(actor: "test", action: "probe")
            #expect(await refused(client, logger, "UPDATE audit_log SET actor = 'x'"))
            #expect(await refused(client, logger, "DELETE FROM audit_log"))
            #expect(await refused(client, logger, "SELECT * FROM audit_log"))
        }
        try await withLogin(agentGateway) { client, logger in
            let summary = try await ConversationQueries(client: client, logger: logger).summary(id: conversation)
            #expect(summary != nil)
            #expect(await refused(client, logger, "INSERT INTO events (conversation_id, seq, type, sender) VALUES ('\(id)', 99, 'message', 'agent')"))
            #expect(await refused(client, logger, "UPDATE conversations SET status = 'closed' WHERE id = '\(id)'"))
            #expect(await refused(client, logger, "UPDATE agents SET role = 'admin'"))
            #expect(await refused(client, logger, "DELETE FROM nodes"))
            #expect(await refused(client, logger, "DELETE FROM audit_log"))
            #expect(await refused(client, logger, "TRUNCATE audit_log"))
            #expect(await refused(client, logger, "SELECT * FROM parley_append(ARRAY['\(id)'::uuid], ARRAY['visitor'], ARRAY['x'], ARRAY['ag-1'], ARRAY[''])"))
            #expect(await refused(client, logger, "SELECT * FROM parley_append_one('\(id)'::uuid, 'visitor', 'x', 'ag-2', '')"))
            #expect(await refused(client, logger, "CREATE TABLE intruder (x int)"))
        }
    }
}
