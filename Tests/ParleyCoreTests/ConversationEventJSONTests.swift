import Foundation
import ParleyCore
import Testing

/// `ConversationEvent.json` must say what `JSONEncoder` says: the same keys and values, which
/// decode to the same event (the encoder's key order is its own, and varies between processes).
@Suite struct ConversationEventJSONTests {
    let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    /// Whether `event.json` and the encoder's JSON are the same object, and decode to `event`.
    func same(_ event: ConversationEvent) throws -> Bool {
        let ours = Data(event.json.utf8)
        let theirs = try encoder.encode(event)
        let a = try JSONSerialization.jsonObject(with: ours) as? NSDictionary
        let b = try JSONSerialization.jsonObject(with: theirs) as? NSDictionary
        let decoded = try JSONDecoder().decode(ConversationEvent.self, from: ours)
        return a != nil && a == b && decoded == event
    }

    @Test func everyKindOfEventSaysWhatTheEncoderSays() throws {
        let events = [
            ConversationEvent(seq: 1, type: "message", sender: .visitor, text: "hello", clientMsgID: "m-1", createdAtMillis: 1_795_400_000_123),
            ConversationEvent(
                seq: 9_000_000_000, type: "message", sender: .agent, text: "a/b \"q\" \\ é 𝄞 👩‍👩‍👧", clientMsgID: nil, createdAtMillis: 0,
                agent: AgentRef(id: "4f0c…", name: "Ann \"the\" /agent\\")),
            ConversationEvent(seq: 3, type: "agent_joined", sender: .system, text: "", clientMsgID: nil, createdAtMillis: -1),
            ConversationEvent(seq: 0, type: "typing", sender: .agent, text: "", clientMsgID: nil, createdAtMillis: 1, agent: AgentRef(id: "", name: "")),
        ]
        for event in events { #expect(try same(event)) }
    }

    @Test func everyScalarBelowU0800AndTheLineSeparatorsSurviveTheRoundTrip() throws {
        // Every control character, quote, backslash and slash, and the scalars around them, alone,
        // after a combining mark and before one (a quote followed by U+0301 is one Character).
        var scalars = Array(0..<0x800).compactMap(Unicode.Scalar.init)
        scalars += [Unicode.Scalar(0x2028)!, Unicode.Scalar(0x2029)!, Unicode.Scalar(0xFEFF)!, Unicode.Scalar(0x1F600)!]
        for scalar in scalars {
            let text = "\(scalar)x\u{301}\(scalar)\u{301}"
            let event = ConversationEvent(seq: 2, type: "message", sender: .visitor, text: text, clientMsgID: "\(scalar)", createdAtMillis: 5)
            #expect(try same(event), "U+\(String(scalar.value, radix: 16))")
        }
    }
}
