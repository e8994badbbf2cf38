import Foundation
import ParleyCore
import Testing

@Suite struct ValidationTests {
    @Test(arguments: ["", String(repeating: "x", count: 65), "has space", "tab\there"])
    func badClientMessageIDs(_ id: String) {
        #expect(throws: ParleyError.self) { try Validate.clientMsgID(id) }
    }

    @Test func goodClientMessageIDs() throws {
        #expect(try Validate.clientMsgID("a") == "a")
        #expect(try Validate.clientMsgID(String(repeating: "x", count: 64)).count == 64)
        #expect(try Validate.clientMsgID(UUID().uuidString).count == 36)
    }

    @Test(arguments: ["", "   \n ", String(repeating: "x", count: 4001), "nul\u{0}byte"])
    func badTexts(_ text: String) {
        #expect(throws: ParleyError.self) { try Validate.text(text) }
    }

    @Test func textsAreKeptVerbatim() throws {
        let markup = "<script>alert('x')</script> ' OR 1=1; -- 💬"
        #expect(try Validate.text(markup) == markup)
        #expect(try Validate.text(String(repeating: "é", count: 4000)).count == 4000)
    }

    @Test func cursorsAndWaits() throws {
        #expect(try Validate.cursor(nil) == 0)
        #expect(try Validate.cursor("42") == 42)
        #expect(throws: ParleyError.self) { try Validate.cursor("-1") }
        #expect(throws: ParleyError.self) { try Validate.cursor("abc") }
        #expect(try Validate.waitSeconds(nil) == 25)
        #expect(try Validate.waitSeconds("60") == 60)
        #expect(throws: ParleyError.self) { try Validate.waitSeconds("61") }
    }

    @Test func emails() throws {
        #expect(try Validate.email("a@b.example") == "a@b.example")
        #expect(try Validate.email(nil) == "")
        #expect(throws: ParleyError.self) { try Validate.email("not-an-email") }
    }

    @Test func eventJSONRoundTrips() throws {
        let event = ConversationEvent(
            seq: 3, type: "message", sender: .agent, text: "hello", clientMsgID: "c1", createdAtMillis: 1_763_800_000_123,
            agent: AgentRef(id: "a", name: "Ann"))
        let json = try JSONEncoder().encode(event)
        let object = try JSONSerialization.jsonObject(with: json) as? [String: Any]
        #expect(object?["created_at"] as? String == "2025-11-22T08:26:40.123Z")
        #expect(object?["client_msg_id"] as? String == "c1")
        #expect(try JSONDecoder().decode(ConversationEvent.self, from: json) == event)
    }
}

@Suite struct TimestampTests {
    @Test(arguments: [Int64(0), 1_763_800_000_123, 951_782_400_999, -1, 4_102_444_800_000])
    func formatsAndParsesExactly(_ millis: Int64) {
        #expect(Timestamp.parse(Timestamp.format(millis)) == millis)
    }

    @Test func knownValues() {
        #expect(Timestamp.format(0) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.format(951_782_400_999) == "2000-02-29T00:00:00.999Z")
        #expect(Timestamp.parse("2025-11-22T09:26:40.123+01:00") == 1_763_800_000_123)
        #expect(Timestamp.parse("yesterday") == nil)
    }
}

@Suite struct HexTests {
    @Test func bytesBecomeLowercaseHexTwoDigitsEach() {
        #expect([UInt8]().lowercaseHex == "")
        #expect([0x00, 0x0f, 0xa0, 0xff].lowercaseHex == "000fa0ff")
    }
}
