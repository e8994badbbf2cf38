import ParleyCore
import ParleyRPC
import Synchronization
import Testing

/// `StreamedCalls` against in-memory calls: answers go to callers in order, and nothing waits
/// for ever once the call is gone.
@Suite struct StreamedCallsTests {
    @Test func answersGoToTheirRequestsInOrder() async throws {
        let calls = StreamedCalls<Int, Int>(timeout: .seconds(30)) { requests, answer in
            for await request in requests { try answer(request * 10) }
        }
        try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            for request in 0..<50 { group.addTask { (request, try await calls.send(request)) } }
            for try await (request, response) in group { #expect(response == request * 10) }
        }
        #expect(!calls.isEnded)
        calls.finish()
    }

    @Test func finishEndsTheCallOnceTheAnswersDueAreIn() async throws {
        let received = Atomic(0)
        // Answers nothing until its requests end, as a peer might that is slow to reply.
        let calls = StreamedCalls<Int, Int>(timeout: .seconds(30)) { requests, answer in
            var held: [Int] = []
            for await request in requests {
                held.append(request)
                received.add(1, ordering: .sequentiallyConsistent)
            }
            for request in held { try answer(request * 10) }
        }
        async let first = calls.send(1)
        async let second = calls.send(2)
        let deadline = ContinuousClock.now + .seconds(10)
        while received.load(ordering: .sequentiallyConsistent) < 2, ContinuousClock.now < deadline { await Task.yield() }
        calls.finish()
        #expect(try await first == 10)
        #expect(try await second == 20)
        let ended = ContinuousClock.now + .seconds(10)
        while !calls.isEnded, ContinuousClock.now < ended { await Task.yield() }
        #expect(calls.isEnded)
    }

    @Test func requestsWaitingWhenTheCallFailsFailAsUnavailable() async throws {
        let received = Atomic(0)
        let calls = StreamedCalls<Int, Int>(timeout: .seconds(30)) { requests, _ in
            // Takes two requests, answers neither, and fails.
            for await _ in requests where received.add(1, ordering: .sequentiallyConsistent).newValue == 2 {
                throw ParleyError(.internalError, "the peer broke")
            }
        }
        async let first = failure { try await calls.send(1) }
        async let second = failure { try await calls.send(2) }
        #expect(await first == .unavailable)
        #expect(await second == .unavailable)
        #expect(calls.isEnded)
        // A spent instance refuses at once.
        #expect(await failure { try await calls.send(3) } == .unavailable)
    }

    @Test func aRequestLeftUnansweredEndsTheCallAfterTheTimeout() async throws {
        let calls = StreamedCalls<Int, Int>(timeout: .milliseconds(100)) { requests, _ in
            for await _ in requests {}
        }
        let error = await #expect(throws: ParleyError.self) { try await calls.send(1) }
        #expect(error?.code == .unavailable)
        #expect(calls.isEnded)
    }

    @Test func anAnswerNoRequestWaitsForEndsTheCall() async throws {
        let calls = StreamedCalls<Int, Int>(timeout: .seconds(30)) { requests, answer in
            for await request in requests {
                try answer(request)
                try answer(request)
            }
        }
        #expect(try await calls.send(7) == 7)
        let deadline = ContinuousClock.now + .seconds(10)
        while !calls.isEnded, ContinuousClock.now < deadline { await Task.yield() }
        #expect(calls.isEnded)
        await #expect(throws: ParleyError.self) { try await calls.send(8) }
    }
}

/// The code of the error `body` throws; nil when it returns.
private func failure(_ body: () async throws -> Int) async -> ParleyError.Code? {
    do {
        _ = try await body()
        return nil
    } catch let error as ParleyError {
        return error.code
    } catch {
        return .internalError
    }
}
