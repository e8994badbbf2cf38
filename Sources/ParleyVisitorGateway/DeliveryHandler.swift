import Foundation
import GRPCCore
import Metrics
import ParleyCore
import ParleyRPC
import ServiceLifecycle

/// Receives committed events from the relay for the conversations pinned here.
struct DeliveryHandler: Parley_V1_Delivery.SimpleServiceProtocol {
    let hub: ConversationHub
    let security: InternalSecurity
    private let deliveredEvents = Counter(label: "parley_gateway_delivered_events_total")
    private let deliveries = Counter(label: "parley_gateway_deliveries_total")

    init(hub: ConversationHub, security: InternalSecurity) {
        self.hub = hub
        self.security = security
    }

    func deliver(request: Parley_V1_DeliverRequest, context: ServerContext) async throws -> Parley_V1_DeliverResponse {
        // Only a relay writes into this node's memory.
        _ = try await RPCErrors.serving { try security.authorize(context, .relay) }
        await apply(request)
        return Parley_V1_DeliverResponse()
    }

    func deliverStream(
        request: RPCAsyncSequence<Parley_V1_DeliverRequest, any Error>, response: RPCWriter<Parley_V1_DeliverResponse>,
        context: ServerContext
    ) async throws {
        _ = try await RPCErrors.serving { try security.authorize(context, .relay) }
        // A relay keeps its stream open, so the gateway's graceful shutdown ends it; the relay
        // then finds the gateway gone and has its conversations resync, as for any lost node.
        try await cancelWhenGracefulShutdown {
            for try await delivery in request {
                await apply(delivery)
                try await response.write(Parley_V1_DeliverResponse())
            }
        }
    }

    private func apply(_ request: Parley_V1_DeliverRequest) async {
        deliveries.increment()
        for batch in request.batches {
            guard let id = UUID(uuidString: batch.conversationID) else { continue }
            deliveredEvents.increment(by: batch.events.count)
            await hub.delivered(id, events: batch.events.map(\.domain))
        }
        for evicted in request.evictConversationIds {
            if let id = UUID(uuidString: evicted) { hub.evict(id) }
        }
    }
}
