import ParleyAdmin
import ParleyCore
import ParleyStore
import Testing

@Suite struct HAProxyConfigTests {
    let gateways = [
        NodeRecord(id: "vg-2", role: "visitor_gateway", zone: "edge", publicAddress: "10.0.0.2:8081", internalAddress: "", opsAddress: "10.0.0.2:7202"),
        NodeRecord(id: "vg-1", role: "visitor_gateway", zone: "edge", publicAddress: "10.0.0.1:8081", internalAddress: "", opsAddress: "10.0.0.1:7202"),
    ]

    @Test func routesOnTheApplicationCookieAndChecksTheOpsPort() throws {
        let config = try HAProxyConfig.render(bind: "*:8080", gateways: gateways)
        #expect(config.contains("bind *:8080"))
        #expect(config.contains("cookie parley_node\n"))
        #expect(config.contains("option httpchk GET /health"))
        #expect(config.contains("server vg-1 10.0.0.1:8081 cookie vg-1 check addr 10.0.0.1 port 7202"))
        let first = try #require(config.range(of: "server vg-1"))
        let second = try #require(config.range(of: "server vg-2"))
        #expect(first.lowerBound < second.lowerBound)
        #expect(config.contains("timeout tunnel"))
        #expect(config.contains("option http-no-delay"))
    }

    @Test func refusesNodeIDsThatWouldInjectConfiguration() {
        let evil = NodeRecord(id: "vg-1\n  bind *:22", role: "visitor_gateway", zone: "edge", publicAddress: "x:1", internalAddress: "", opsAddress: "x:2")
        #expect(throws: ParleyError.self) { try HAProxyConfig.render(bind: "*:8080", gateways: [evil]) }
    }
}
