import Testing

@testable import ParleyVisitorGateway

@Suite struct PingSweepTests {
    @Test func eachSocketIsPingedOncePerIntervalHoweverFewThereAre() {
        var sweep = PingSweep<Int>(slices: 300)
        var pinged: [Int: Int] = [:]
        for _ in 0..<(3 * 300) {
            for socket in sweep.next(open: { [1, 2] }) { pinged[socket, default: 0] += 1 }
        }
        #expect(pinged == [1: 3, 2: 3])
    }

    @Test func manySocketsAreSpreadEvenlyOverTheSlices() {
        var sweep = PingSweep<Int>(slices: 30)
        var perSlice: [Int] = []
        var pinged = Set<Int>()
        for _ in 0..<30 {
            let now = sweep.next(open: { Array(0..<19_000) })
            perSlice.append(now.count)
            pinged.formUnion(now)
        }
        #expect(pinged.count == 19_000)
        #expect(perSlice.max()! <= 634)
    }

    @Test func socketsOpenedDuringAnIntervalWaitForTheNext() {
        var sweep = PingSweep<Int>(slices: 4)
        var open = [1]
        #expect(sweep.next(open: { open }) == [1])
        open = [1, 2]
        for _ in 0..<3 { #expect(sweep.next(open: { open }).isEmpty) }
        var next: [Int] = []
        for _ in 0..<4 { next += sweep.next(open: { open }) }
        #expect(next.sorted() == [1, 2])
    }
}
