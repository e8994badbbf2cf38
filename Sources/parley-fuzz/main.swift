// A libFuzzer target for what Parley decodes from the outside: visitor tokens, base64url,
// request bodies and query values, key lists. Built by `make fuzz` with
// `-sanitize=fuzzer,address -DPARLEY_FUZZ`, it hands control to libFuzzer's driver; in a normal
// build it is an executable that does nothing. The first input byte picks the decoder.
//
// Every decoder must either succeed or throw `ParleyError`; anything else (a crash, a trap,
// a different error, a token that verifies without the key) stops the fuzzer.

import Foundation
import ParleyCore

enum Fixture {
    static let conversation = UUID(uuidString: "6f1a3c8e-0d5b-4c1e-9a7f-2b8d4e6f0a11")!
    static let signer = try! VisitorTokenSigner(keys: ["k1": Array(repeating: 7, count: 32)], currentKeyID: "k1")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    guard let selector = bytes.first else { return 0 }
    let data = Data(bytes.dropFirst())
    let text = String(decoding: data, as: UTF8.self)
    do {
        switch selector % 6 {
        case 0:
            // A token the fuzzer made up must never verify: it does not know the key.
            try Fixture.signer.verify(text, conversationID: Fixture.conversation)
            fatalError("a made-up token verified: \(text)")
        case 1:
            if let decoded = Base64URL.decode(text), Base64URL.encode(decoded) != text {
                fatalError("a non-canonical base64url was accepted: \(text)")
            }
        case 2:
            let body = try JSONDecoder().decode(MessageBody.self, from: data)
            _ = try Validate.clientMsgID(body.clientMsgID)
            _ = try Validate.text(body.text)
        case 3:
            _ = try Validate.email(text)
            _ = try Validate.optionalField(text, name: "name", maxLength: Limits.nameMaxLength)
        case 4:
            _ = try Validate.cursor(text)
            _ = try Validate.waitSeconds(text)
        default:
            _ = try VisitorTokenSigner.parseKeys(text)
        }
    } catch is ParleyError, is DecodingError {
        // A clear refusal: what every bad input must get.
    } catch {
        fatalError("unexpected error \(error)")
    }
    return 0
}

#if PARLEY_FUZZ
// SwiftPM links executables with their `main` renamed, so libFuzzer's own `main` cannot be
// used; its driver entry point does the same job.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafeRawPointer, Int) -> CInt
) -> CInt

var arguments = CommandLine.argc
var vector = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&arguments, &vector, { fuzz($0, $1) }))
#endif
