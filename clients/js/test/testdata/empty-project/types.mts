// The package's types as an ES module sees them.
import { EventBus, type Transport } from "@eventbus-suite/client";

const bus = new EventBus("http://localhost:8081", { onTransport: (t: Transport) => t });
export const transport: Transport = bus.transport;
