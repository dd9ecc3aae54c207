// The package's types as CommonJS sees them.
import eventbus = require("@eventbus-suite/client");

const bus = new eventbus.EventBus("http://localhost:8081", { minWebSocketRetry: 1000 });
export const transport: eventbus.Transport = bus.transport;
