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
