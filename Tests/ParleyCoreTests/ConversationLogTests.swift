import ParleyCore
import Synchronization
import Testing

func event(_ seq: Int64, _ text: String = "hi", sender: Sender = .visitor) -> ConversationEvent {
    ConversationEvent(seq: seq, type: ConversationEvent.Kind.message, sender: sender, text: text, clientMsgID: "m\(seq)", createdAtMillis: 1_700_000_000_000 + seq)
}

@Suite struct ConversationLogTests {
    @Test func appliesConsecutiveEventsAndSkipsDuplicates() {
        let log = ConversationLog(floor: 0)
        #expect(log.apply([event(1), event(2)]) == .applied)
        #expect(log.apply([event(2)]) == .duplicate)
        #expect(log.apply([event(3), event(2)]) == .applied)
        #expect(log.read(after: 0) == .events([event(1), event(2), event(3)], lastSeq: 3, more: false))
        #expect(log.read(after: 2) == .events([event(3)], lastSeq: 3, more: false))
    }

    @Test func refusesToLeaveAGap() {
        let log = ConversationLog(floor: 0, events: [event(1)])
        #expect(log.apply([event(3)]) == .gap(lastSeq: 1))
        #expect(log.lastSeq == 1)
        #expect(log.apply([event(2), event(3)]) == .applied)
        #expect(log.lastSeq == 3)
    }

    @Test func trimsToCapacityAndReportsWhatIsNotCovered() {
        let log = ConversationLog(floor: 0, capacity: 3)
        log.apply((1...10).map { event($0) })
        #expect(log.floor == 7)
        #expect(log.read(after: 6) == .notCovered(floor: 7))
        #expect(log.read(after: 7) == .events([event(8), event(9), event(10)], lastSeq: 10, more: false))
        #expect(log.read(after: 11) == .cursorAhead(lastSeq: 10))
    }

    @Test func readsArePagedWithMore() {
        let log = ConversationLog(floor: 0)
        log.apply((1...5).map { event($0) })
        #expect(log.read(after: 1, limit: 2) == .events([event(2), event(3)], lastSeq: 5, more: true))
        #expect(log.read(after: 3, limit: 2) == .events([event(4), event(5)], lastSeq: 5, more: false))
    }

    @Test func aResumedLogStartsAtItsFloor() {
        let log = ConversationLog(floor: 40, events: [event(41), event(42)])
        #expect(log.read(after: 40) == .events([event(41), event(42)], lastSeq: 42, more: false))
        #expect(log.read(after: 39) == .notCovered(floor: 40))
    }

    @Test func waitReturnsWhenAnEventArrives() async {
        let log = ConversationLog(floor: 0)
        async let result = log.wait(after: 0, timeout: .seconds(30))
        // Apply until the waiter has seen it: the waiter may register before or after the apply.
        log.apply([event(1)])
        #expect(await result == .events([event(1)], lastSeq: 1, more: false))
    }

    @Test func waitTimesOutWithNoEvents() async {
        let log = ConversationLog(floor: 0, events: [event(1)])
        #expect(await log.wait(after: 1, timeout: .milliseconds(20)) == .events([], lastSeq: 1, more: false))
    }

    @Test func markMovedWakesWaiters() async {
        let log = ConversationLog(floor: 0)
        async let result = log.wait(after: 0, timeout: .seconds(30))
        log.markMoved()
        #expect(await result == .moved)
    }

    @Test func cancellationEndsAWait() async {
        let log = ConversationLog(floor: 0)
        let task = Task { await log.wait(after: 0, timeout: .seconds(30)) }
        task.cancel()
        #expect(await task.value == .events([], lastSeq: 0, more: false))
    }

    @Test func aWakeFiresOnceOnTheNextChangeAndCountsAsAWaiter() {
        let log = ConversationLog(floor: 0, events: [event(1)])
        let wakes = Mutex(0)
        // Something after the cursor already: no wake is left, the caller reads instead.
        #expect(log.wakeOnChange(after: 0) { wakes.withLock { $0 += 1 } } == nil)
        let token = log.wakeOnChange(after: 1) { wakes.withLock { $0 += 1 } }
        #expect(token != nil)
        // A registered wake keeps the conversation from idle eviction, like a waiting reader.
        #expect(log.activity.waiters == 1)
        log.apply([event(1)])
        #expect(wakes.withLock { $0 } == 0)
        log.apply([event(2)])
        log.apply([event(3)])
        #expect(wakes.withLock { $0 } == 1)
        #expect(log.activity.waiters == 0)
    }

    @Test func typingAndMovesWakeToo() {
        let log = ConversationLog(floor: 0)
        let wakes = Mutex(0)
        _ = log.wakeOnChange(after: 0) { wakes.withLock { $0 += 1 } }
        log.signal(ConversationEvent(seq: 0, type: ConversationEvent.Kind.typing, sender: .agent, text: "", clientMsgID: nil, createdAtMillis: 0))
        #expect(wakes.withLock { $0 } == 1)
        _ = log.wakeOnChange(after: 0) { wakes.withLock { $0 += 1 } }
        log.markMoved()
        #expect(wakes.withLock { $0 } == 2)
        #expect(log.wakeOnChange(after: 0) { wakes.withLock { $0 += 1 } } == nil)
    }

    @Test func aCancelledWakeNeverFires() {
        let log = ConversationLog(floor: 0)
        let wakes = Mutex(0)
        let token = log.wakeOnChange(after: 0) { wakes.withLock { $0 += 1 } }!
        log.cancelWake(token)
        log.cancelWake(token)  // twice, or after it fired: nothing happens
        log.apply([event(1)])
        #expect(wakes.withLock { $0 } == 0)
        #expect(log.activity.waiters == 0)
    }
}
