import GRPCCore
import ServiceLifecycle

/// A gRPC server as a service of the binary's ServiceGroup: serves until graceful shutdown.
package struct GRPCServerService<Transport: ServerTransport>: Service {
    package let server: GRPCServer<Transport>

    package init(_ server: GRPCServer<Transport>) { self.server = server }

    package func run() async throws {
        try await withGracefulShutdownHandler {
            try await server.serve()
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}

/// A gRPC client's connections as a service: kept up until graceful shutdown.
package struct GRPCClientService<Transport: ClientTransport>: Service {
    package let client: GRPCClient<Transport>
    /// Ends the long-lived calls, which graceful shutdown would otherwise wait for.
    let beforeShutdown: @Sendable () -> Void

    package init(_ client: GRPCClient<Transport>, beforeShutdown: @escaping @Sendable () -> Void = {}) {
        self.client = client
        self.beforeShutdown = beforeShutdown
    }

    package func run() async throws {
        try await withGracefulShutdownHandler {
            try await client.runConnections()
        } onGracefulShutdown: {
            beforeShutdown()
            client.beginGracefulShutdown()
        }
    }
}
