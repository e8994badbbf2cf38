import Foundation
import ParleyCore
import Testing

@Suite struct VisitorTokenTests {
    let key = [UInt8](repeating: 7, count: 32)
    let other = [UInt8](repeating: 9, count: 32)

    @Test func aTokenVerifiesForItsConversationOnly() throws {
        let signer = try VisitorTokenSigner(keys: ["k1": key], currentKeyID: "k1")
        let conversation = UUID()
        let token = signer.sign(conversationID: conversation)
        try signer.verify(token, conversationID: conversation)
        #expect(throws: ParleyError.self) { try signer.verify(token, conversationID: UUID()) }
    }

    @Test func expiredForgedAndMalformedTokensAreRefused() throws {
        let signer = try VisitorTokenSigner(keys: ["k1": key], currentKeyID: "k1", lifetimeSeconds: 60)
        let conversation = UUID()
        let token = signer.sign(conversationID: conversation, now: Date(timeIntervalSinceNow: -120))
        #expect(throws: ParleyError.self) { try signer.verify(token, conversationID: conversation) }

        let fresh = signer.sign(conversationID: conversation)
        var forged = fresh
        forged.removeLast()
        forged += fresh.hasSuffix("A") ? "B" : "A"
        for bad in [forged, "", "pv1", "pv1.k1.x.y.z", fresh + ".extra", String(repeating: "a", count: 5000)] {
            #expect(throws: ParleyError.self) { try signer.verify(bad, conversationID: conversation) }
        }
        // Another spelling of the same MAC (the last character's unused low bits set) is refused too.
        let last = fresh.last!, alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        let sibling = alphabet[(alphabet.firstIndex(of: last)! & ~3) | ((alphabet.firstIndex(of: last)! & 3) ^ 1)]
        #expect(throws: ParleyError.self) { try signer.verify(String(fresh.dropLast()) + String(sibling), conversationID: conversation) }
        let forger = try VisitorTokenSigner(keys: ["k1": other], currentKeyID: "k1")
        #expect(throws: ParleyError.self) { try signer.verify(forger.sign(conversationID: conversation), conversationID: conversation) }
    }

    @Test func keysRotate() throws {
        let old = try VisitorTokenSigner(keys: ["k1": key], currentKeyID: "k1")
        let rotated = try VisitorTokenSigner(keys: ["k1": key, "k2": other], currentKeyID: "k2")
        let conversation = UUID()
        try rotated.verify(old.sign(conversationID: conversation), conversationID: conversation)
        #expect(rotated.sign(conversationID: conversation).hasPrefix("pv1.k2."))
    }

    @Test func shortKeysAndBadSpecsAreRejected() {
        #expect(throws: ParleyError.self) { try VisitorTokenSigner(keys: ["k1": [1, 2, 3]], currentKeyID: "k1") }
        #expect(throws: ParleyError.self) { try VisitorTokenSigner(keys: ["k1": key], currentKeyID: "k2") }
        #expect(throws: ParleyError.self) { try VisitorTokenSigner.parseKeys("no-colon") }
        #expect((try? VisitorTokenSigner.parseKeys("a:\(Data(key).base64EncodedString())"))?["a"] == key)
    }

    @Test func identityHashesVerifyOnlyForTheirUser() throws {
        let identity = try IdentityVerifier(secret: key, required: true)
        let hash = identity.hash(userID: "alice")
        try identity.verify(userID: "alice", hash: hash)
        try identity.verify(userID: "alice", hash: hash.uppercased())
        for (user, bad) in [("bob", hash), ("alice", identity.hash(userID: "bob")), ("alice", ""), ("alice", String(hash.dropLast())),
                            ("alice", String(hash.dropLast()) + "g"), ("", identity.hash(userID: ""))] {
            #expect(throws: ParleyError.self) { try identity.verify(userID: user, hash: bad) }
        }
        #expect(throws: ParleyError.self) { try IdentityVerifier(secret: [1, 2, 3], required: false) }
    }

    @Test func aTokenBoundToAUserVerifiesOnlyWithThatUser() throws {
        let signer = try VisitorTokenSigner(keys: ["k1": key], currentKeyID: "k1")
        let conversation = UUID()
        let bound = signer.sign(conversationID: conversation, userID: "alice")
        try signer.verify(bound, conversationID: conversation, userID: "alice")
        #expect(throws: ParleyError.self) { try signer.verify(bound, conversationID: conversation) }
        #expect(throws: ParleyError.self) { try signer.verify(bound, conversationID: conversation, userID: "bob") }
        let anonymous = signer.sign(conversationID: conversation)
        #expect(throws: ParleyError.self) { try signer.verify(anonymous, conversationID: conversation, userID: "alice") }
    }
}

@Suite struct Base64URLTests {
    @Test func encodesTheRFC4648VectorsWithoutPadding() {
        let vectors = ["": "", "f": "Zg", "fo": "Zm8", "foo": "Zm9v", "foob": "Zm9vYg", "fooba": "Zm9vYmE", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64URL.encode(Data(plain.utf8)) == encoded)
            #expect(Base64URL.decode(encoded) == Data(plain.utf8))
        }
        #expect(Base64URL.encode(Data([0xfb, 0xff])) == "-_8")
    }

    @Test func agreesWithFoundationOnEveryLength() {
        var generator = SystemRandomNumberGenerator()
        for length in 0...70 {
            let bytes = Data((0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) })
            let reference = bytes.base64EncodedString().replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
            #expect(Base64URL.encode(bytes) == reference)
            #expect(Base64URL.decode(reference) == bytes)
        }
    }

    @Test func refusesAnythingButTheCanonicalSpelling() {
        // A lone character, padding, the standard alphabet, and unused low bits that are not zero.
        for text in ["Z", "Zg==", "Zm9v=", "Zm+v", "Zm/v", "Zh", "Zm9", "Zm9vYh", "Zm é"] {
            #expect(Base64URL.decode(text) == nil, "\(text)")
        }
    }
}
