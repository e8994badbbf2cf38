import Crypto
import Foundation
import ParleyCore
import ParleyRPC
import SwiftASN1
import X509

/// The cluster's private certificate authority for the internal plane's mutual TLS.
///
/// Lives in one folder: `ca.pem` (public, given to every node) and `ca.key` (private, kept by
/// the administrator, mode 0600). Node certificates name their role and node id in DNS subject
/// alternative names (see `PeerRole`), plus any host names and addresses the node is reached at.
public struct CertificateAuthority {
    public let folder: URL
    let certificate: Certificate
    let key: P256.Signing.PrivateKey

    static let caValidity: TimeInterval = 10 * 365 * 86_400
    static let nodeValidity: TimeInterval = 397 * 86_400

    /// Creates a new CA in `folder`; refuses to overwrite one.
    public static func create(in folder: URL, name: String = "Parley internal CA") throws -> CertificateAuthority {
        let manager = FileManager.default
        try manager.createDirectory(at: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let certPath = folder.appendingPathComponent("ca.pem"), keyPath = folder.appendingPathComponent("ca.key")
        guard !manager.fileExists(atPath: certPath.path), !manager.fileExists(atPath: keyPath.path) else {
            throw ParleyError(.invalidRequest, "\(folder.path) already holds a CA; remove it first to start over")
        }
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("Parley")
            CommonName(name)
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(caValidity),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key))
        try write(key.pemRepresentation, to: keyPath, mode: 0o600)
        try write(try certificate.serializeAsPEM().pemString, to: certPath, mode: 0o644)
        return CertificateAuthority(folder: folder, certificate: certificate, key: key)
    }

    /// Opens the CA in `folder`.
    public static func open(_ folder: URL) throws -> CertificateAuthority {
        let certPath = folder.appendingPathComponent("ca.pem"), keyPath = folder.appendingPathComponent("ca.key")
        do {
            let certificate = try Certificate(pemEncoded: String(contentsOf: certPath, encoding: .utf8))
            let key = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOf: keyPath, encoding: .utf8))
            return CertificateAuthority(folder: folder, certificate: certificate, key: key)
        } catch {
            throw ParleyError(.invalidRequest, "no CA in \(folder.path) (run parleyctl certs init): \(error)")
        }
    }

    /// Issues a node certificate and key into `output` as `<node>.pem` and `<node>.key`, and
    /// returns their paths.
    public func issue(role: PeerRole, node: String, hosts: [String], output: URL) throws -> (certificate: URL, key: URL) {
        guard !node.isEmpty, node.count <= 64, node.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
            throw ParleyError(.invalidRequest, "the node id must be 1 to 64 ASCII letters, digits or -, to fit in a DNS name")
        }
        var names: [GeneralName] = [.dnsName(role.dnsName), .dnsName(PeerRole.nodeDNSName(node))]
        for host in hosts where !host.isEmpty {
            if let address = Self.ipBytes(host) {
                names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(address))))
            } else {
                guard host.count <= 253, host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") }) else {
                    throw ParleyError(.invalidRequest, "\(host) is neither an IP address nor a host name")
                }
                names.append(.dnsName(host))
            }
        }
        let key = P256.Signing.PrivateKey()
        let now = Date()
        let authorityKey = try certificate.extensions.subjectKeyIdentifier?.keyIdentifier
        let issued = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Self.nodeValidity),
            issuer: certificate.subject,
            subject: try DistinguishedName {
                OrganizationName("Parley")
                OrganizationalUnitName(role.rawValue)
                CommonName(node)
            },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(names)
                AuthorityKeyIdentifier(keyIdentifier: authorityKey)
            },
            issuerPrivateKey: .init(self.key))
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        let certPath = output.appendingPathComponent("\(node).pem"), keyPath = output.appendingPathComponent("\(node).key")
        try Self.write(key.pemRepresentation, to: keyPath, mode: 0o600)
        try Self.write(try issued.serializeAsPEM().pemString, to: certPath, mode: 0o644)
        return (certPath, keyPath)
    }

    static func write(_ text: String, to url: URL, mode: Int) throws {
        let manager = FileManager.default
        if manager.fileExists(atPath: url.path) { try manager.removeItem(at: url) }
        guard manager.createFile(atPath: url.path, contents: Data(text.utf8), attributes: [.posixPermissions: mode]) else {
            throw ParleyError(.invalidRequest, "cannot write \(url.path)")
        }
    }

    /// The bytes of an IPv4 or IPv6 literal, or nil.
    static func ipBytes(_ host: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")), &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}
