// Bun as a peer (`bun loadtest/peers/bun.mjs --listen A --admin B [--deflate shared]`):
// `Bun.serve` with WebSocket handlers runs uWebSockets inside, and `server.publish` is
// uWebSockets' own topic fan-out (the message framed once, written to every subscriber).
// Each connection echoes what it receives; `?topic=T` in the upgrade URL subscribes it to T
// (raw mode: a publish arrives as the message itself). The publish API is Stratus's:
// `POST /publish/{topic}` on --admin, answered `{"recipients":N}`.
import { MAX_MESSAGE, SEND_QUEUE_LIMIT, parseArgs, publishTopic, topicOf } from "./args.mjs";

const args = parseArgs(process.argv.slice(2));
const compressor = args.deflate === "shared" ? "shared" : "disable";
// With --deflate shared a publish is compressed (once, by uWebSockets' shared compressor, for
// every subscriber that negotiated permessage-deflate): `publish`'s `compress` flag, which
// is off by default, as Stratus compresses every broadcast when deflate is on.
const compress = compressor === "shared";

const ws = Bun.serve({
  hostname: args.listen.host,
  port: args.listen.port,
  fetch(req, server) {
    const query = req.url.indexOf("?");
    const topic = query < 0 ? null : topicOf(req.url.slice(query + 1));
    // The topic is the connection's only state (`ws.data`).
    if (server.upgrade(req, { data: topic })) return undefined;
    return new Response("WebSocket only\n", { status: 426 });
  },
  websocket: {
    open(socket) {
      if (socket.data !== null) socket.subscribe(socket.data);
    },
    message(socket, message) {
      socket.send(message);
    },
    perMessageDeflate: { compress: compressor, decompress: compressor },
    maxPayloadLength: MAX_MESSAGE,
    backpressureLimit: SEND_QUEUE_LIMIT,
    closeOnBackpressureLimit: true,
  },
});

Bun.serve({
  hostname: args.admin.host,
  port: args.admin.port,
  maxRequestBodySize: MAX_MESSAGE,
  async fetch(req) {
    const topic = req.method === "POST" ? publishTopic(new URL(req.url).pathname) : null;
    if (topic === null) return new Response("POST /publish/{topic}\n", { status: 404 });
    ws.publish(topic, await req.text(), compress);
    return Response.json({ recipients: ws.subscriberCount(topic) });
  },
});

console.log(
  `bun ${Bun.version} (uWebSockets) echo and pub/sub on ${args.listen.host}:${args.listen.port}, ` +
    `publish API on ${args.admin.host}:${args.admin.port}, deflate ${args.deflate}`,
);
