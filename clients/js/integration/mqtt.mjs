// Drives MQTT.js, the client the Cloudflare seed recommends, against a
// running edge for the e2e tests. Environment: URL (ws://host:port/mqtt),
// TOKEN, CLIENT_ID, VERSION (4 or 5), FILTERS ("order/#:1,user/+:0"). It
// prints one JSON line per happening ({"connected":…}, {"subscribed":[…]},
// {"message":{topic,qos,payload}}, {"published":topic} or {"error":…})
// and takes commands on stdin: "publish TOPIC PAYLOAD" at QoS 1, "quit".
import { createInterface } from "node:readline";
import mqtt from "mqtt";

const out = (v) => process.stdout.write(JSON.stringify(v) + "\n");

const client = mqtt.connect(process.env.URL, {
  clientId: process.env.CLIENT_ID,
  username: "device",
  password: process.env.TOKEN,
  protocolVersion: Number(process.env.VERSION || 5),
  reconnectPeriod: 0,
  clean: true,
});

client.on("connect", () => {
  out({ connected: true });
  const filters = Object.fromEntries(
    (process.env.FILTERS || "").split(",").filter(Boolean).map((f) => {
      const i = f.lastIndexOf(":");
      return [f.slice(0, i), { qos: Number(f.slice(i + 1)) }];
    }),
  );
  client.subscribe(filters, (err, granted) => {
    if (err) out({ error: String(err) });
    else out({ subscribed: granted.map((g) => ({ topic: g.topic, qos: g.qos })) });
  });
});
client.on("message", (topic, payload, packet) => {
  out({ message: { topic, qos: packet.qos, payload: JSON.parse(payload.toString()) } });
});
client.on("error", (err) => out({ error: String(err) }));
client.on("close", () => out({ closed: true }));

createInterface({ input: process.stdin }).on("line", (line) => {
  const [cmd, topic, ...rest] = line.split(" ");
  if (cmd === "publish") {
    client.publish(topic, rest.join(" "), { qos: 1 }, (err) => out(err ? { error: String(err) } : { published: topic }));
  } else if (cmd === "quit") {
    client.end(true, () => process.exit(0));
  }
});
