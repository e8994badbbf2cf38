import Foundation
import Logging
import ParleyCore
import ParleyStore
import Synchronization
import Testing

@testable import ParleyRelay

/// An in-memory stand-in for the database: records each batch and stores everything.
/// With `holdFirst`, the first transaction waits until `release()` is called.
final class RecordingCommit: Sendable {
    let batches = Mutex<[[AppendItem]]>([])
    let failNext = Mutex(false)
    private let held = Mutex<(hold: Bool, waiting: CheckedContinuation<Void, Never>?, released: Bool)>((false, nil, false))

    init(holdFirst: Bool = false) {
        held.withLock { $0.hold = holdFirst }
    }

    func release() {
        held.withLock { state -> CheckedContinuation<Void, Never>? in
            state.released = true
            defer { state.waiting = nil }
            return state.waiting
        }?.resume()
    }

    var started: Bool { batches.withLock { !$0.isEmpty } }

    func commit(_ items: [AppendItem]) async throws -> [AppendOutcome] {
        batches.withLock { $0.append(items) }
        await withCheckedContinuation { continuation in
            let wait = held.withLock { state -> Bool in
                guard state.hold, !state.released else { return false }
                state.hold = false
                state.waiting = continuation
                return true
            }
            if !wait { continuation.resume() }
        }
        if failNext.withLock({ value in defer { value = false }; return value }) {
            throw ParleyError(.unavailable, "database down")
        }
        return items.enumerated().map { index, item in
            .stored(
                ConversationEvent(seq: Int64(index + 1), type: "message", sender: item.sender, text: item.text, clientMsgID: item.clientMsgID, createdAtMillis: 0),
                pinnedNode: nil)
        }
    }
}

func item(_ n: Int) -> AppendItem {
    AppendItem(conversationID: UUID(), sender: .visitor, clientMsgID: "m\(n)", text: "t\(n)")
}

@Suite struct GroupCommitterTests {
    @Test func messagesArrivingWhileABatchCommitsShareTheNextTransaction() async throws {
        let store = RecordingCommit(holdFirst: true)
        let committer = GroupCommitter(maxBatch: 100, window: .zero, logger: Logger(label: "test")) { try await store.commit($0) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await committer.run() }
            group.addTask { _ = try await committer.submit(item(0)) }
            while !store.started { try await Task.sleep(for: .milliseconds(1)) }
            let outcomes = try await withThrowingTaskGroup(of: AppendOutcome.self) { senders in
                for n in 1...10 { senders.addTask { try await committer.submit(item(n)) } }
                while committer.queued < 10 { try await Task.sleep(for: .milliseconds(1)) }
                store.release()
                return try await senders.reduce(into: []) { $0.append($1) }
            }
            #expect(outcomes.count == 10)
            #expect(store.batches.withLock { $0.map(\.count) } == [1, 10])
            group.cancelAll()
        }
    }

    @Test func batchesAreCappedAndKeepArrivalOrder() async throws {
        let store = RecordingCommit()
        let committer = GroupCommitter(maxBatch: 4, window: .milliseconds(20), logger: Logger(label: "test")) { try await store.commit($0) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await committer.run() }
            for n in 0..<10 { _ = try await committer.submit(item(n)) }
            let all = store.batches.withLock { $0 }
            #expect(all.allSatisfy { $0.count <= 4 })
            #expect(all.flatMap { $0 }.map(\.clientMsgID) == (0..<10).map { "m\($0)" })
            group.cancelAll()
        }
    }

    @Test func aFailedCommitFailsEveryMessageOfTheBatchAndTheNextOneWorks() async throws {
        let store = RecordingCommit()
        store.failNext.withLock { $0 = true }
        let committer = GroupCommitter(maxBatch: 10, window: .zero, logger: Logger(label: "test")) { try await store.commit($0) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await committer.run() }
            await #expect(throws: ParleyError.self) { try await committer.submit(item(1)) }
            let outcome = try await committer.submit(item(1))
            guard case .stored = outcome else { Issue.record("retry was not stored: \(outcome)"); return }
            group.cancelAll()
        }
    }
}

@Suite struct DeliveryRequestTests {
    @Test func outboxItemsBecomeOneRequestInOrder() {
        let a = UUID()
        let b = UUID()
        let event = ConversationEvent(seq: 4, type: "message", sender: .agent, text: "hi", clientMsgID: "c", createdAtMillis: 5, agent: AgentRef(id: "x", name: "Ann"))
        let request = DeliveryDispatcher.request([.events(a, [event]), .evict(b), .events(a, [event])])
        #expect(request.batches.map(\.conversationID) == [a.uuidString.lowercased(), a.uuidString.lowercased()])
        #expect(request.evictConversationIds == [b.uuidString.lowercased()])
        #expect(request.batches[0].events[0].agentName == "Ann")
    }
}
