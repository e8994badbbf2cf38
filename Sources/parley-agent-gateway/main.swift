import ParleyAgentGateway
import ParleyRuntime

// parley-agent-gateway: the agent API and console. Settings: see `AgentGatewayConfiguration`.
Entrypoint.useEventLoopsForConcurrency()
await Entrypoint.run {
    let configuration = try AgentGatewayConfiguration(settings: Settings())
    let logger = ParleyLogging.logger(label: "parley.agent-gateway", nodeID: configuration.nodeID, level: configuration.logLevel)
    try await AgentGatewayApp.serviceGroup(configuration: configuration, logger: logger).run()
}
