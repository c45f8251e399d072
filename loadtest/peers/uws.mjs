// uWebSockets.js as a peer (`node loadtest/peers/uws.mjs --listen A --admin B [--deflate
// shared]`): the native uWS.js v20.30 build that @trufflesuite/uws-js-unofficial publishes
// on npm (the official builds are not on the registry; the one that is, v20.57 under
// @btc-vision, needs glibc 2.38, newer than Debian 12's). The binary is loaded by path: that
// package's loader falls back to a slow `ws` emulation when the binary does not load, and a
// fallback must not be measured as uWebSockets.
// Each connection echoes what it receives; `?topic=T` in the upgrade URL subscribes it to T
// (raw mode: a publish arrives as the message itself), and `app.publish` is uWebSockets' own
// topic fan-out. The publish API is Stratus's: `POST /publish/{topic}` on --admin, answered
// `{"recipients":N}`.
import { createRequire } from "node:module";
import { MAX_MESSAGE, SEND_QUEUE_LIMIT, parseArgs, publishTopic, topicOf } from "./args.mjs";

const require = createRequire(import.meta.url);
const { platform, arch } = process;
const uWS = require(
  `@trufflesuite/uws-js-unofficial/binaries/uws_${platform}_${arch}_${process.versions.modules}.node`,
);

const args = parseArgs(process.argv.slice(2));
// With --deflate shared a publish is compressed (once, by the shared compressor, for every
// subscriber that negotiated permessage-deflate): `app.publish`'s `compress` flag, which is
// off by default, as Stratus compresses every broadcast when deflate is on.
const compress = args.deflate === "shared";

function listen(app, { host, port }, what) {
  app.listen(host, port, (socket) => {
    if (!socket) {
      console.error(`uws: could not listen on ${host}:${port} (${what})`);
      process.exit(1);
    }
  });
}

const app = uWS.App().ws("/*", {
  compression: args.deflate === "shared" ? uWS.SHARED_COMPRESSOR : uWS.DISABLED,
  maxPayloadLength: MAX_MESSAGE,
  maxBackpressure: SEND_QUEUE_LIMIT,
  closeOnBackpressureLimit: 1,
  upgrade(res, req, context) {
    res.upgrade(
      { topic: topicOf(req.getQuery()) },
      req.getHeader("sec-websocket-key"),
      req.getHeader("sec-websocket-protocol"),
      req.getHeader("sec-websocket-extensions"),
      context,
    );
  },
  open(ws) {
    const { topic } = ws.getUserData();
    if (topic !== null) ws.subscribe(topic);
  },
  message(ws, message, isBinary) {
    ws.send(message, isBinary);
  },
});
listen(app, args.listen, "WebSocket");

const admin = uWS.App()
  .post("/publish/*", (res, req) => {
    const topic = publishTopic(req.getUrl());
    if (topic === null) {
      res.writeStatus("404 Not Found").end("POST /publish/{topic}\n");
      return;
    }
    let aborted = false;
    let size = 0;
    const chunks = [];
    res.onAborted(() => {
      aborted = true;
    });
    res.onData((chunk, isLast) => {
      if (aborted) return;
      size += chunk.byteLength;
      if (size > MAX_MESSAGE) {
        aborted = true;
        res.cork(() => res.writeStatus("413 Payload Too Large").end("", true));
        return;
      }
      // uWS reuses the chunk's memory once this returns: copy it.
      chunks.push(Buffer.from(chunk.slice(0)));
      if (!isLast) return;
      const body = Buffer.concat(chunks);
      app.publish(topic, body, false, compress);
      const answer = `{"recipients":${app.numSubscribers(topic)}}`;
      res.cork(() => res.writeHeader("Content-Type", "application/json").end(answer));
    });
  })
  .any("/*", (res) => {
    res.writeStatus("404 Not Found").end("POST /publish/{topic}\n");
  });
listen(admin, args.admin, "publish API");

console.log(
  `uWebSockets.js (node ${process.version}) echo and pub/sub on ${args.listen.host}:${args.listen.port}, ` +
    `publish API on ${args.admin.host}:${args.admin.port}, deflate ${args.deflate}`,
);
