import ParleyRuntime
import ParleyVisitorGateway

// parley-visitor-gateway: the edge node visitors are pinned to. Settings: see `VisitorGatewayConfiguration`.
Entrypoint.useEventLoopsForConcurrency()
await Entrypoint.run {
    let configuration = try VisitorGatewayConfiguration(settings: Settings())
    let logger = ParleyLogging.logger(label: "parley.visitor-gateway", nodeID: configuration.nodeID, level: configuration.logLevel)
    try await VisitorGatewayApp.serviceGroup(configuration: configuration, logger: logger).run()
}
