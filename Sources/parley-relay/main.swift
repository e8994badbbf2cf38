import ParleyRelay
import ParleyRuntime

// parley-relay: the only writer of conversation events. Settings: see `RelayConfiguration`.
Entrypoint.useEventLoopsForConcurrency()
await Entrypoint.run {
    let configuration = try RelayConfiguration(settings: Settings())
    let logger = ParleyLogging.logger(label: "parley.relay", nodeID: configuration.nodeID, level: configuration.logLevel)
    try await RelayApp.serviceGroup(configuration: configuration, logger: logger).run()
}
