// Command line of the npm peers (bun.mjs, uws.mjs), the flags of `stratus-load peer`:
//   --listen HOST:PORT   WebSocket listener (echo on any path; `?topic=T` subscribes to T)
//   --admin HOST:PORT    publish API: `POST /publish/{topic}`, body sent to the topic's
//                        subscribers as one text message, answer `{"recipients":N}`
//   --deflate off|shared permessage-deflate (shared: no context takeover, as `stratus serve`)
// Every connection is also an echo: what a client sends comes back, so one process serves
// compare-echo.sh, compare-fanout.sh and the idle-connection comparison alike.

/** Stratus's defaults, so the comparison is like for like: `--max-send-queue` 1 MiB, past
 * which a slow subscriber is closed (`--slow-consumer close`), not silently skipped. */
export const SEND_QUEUE_LIMIT = 1 << 20;

/** The largest publish and message accepted, as Stratus's `--max-publish`. */
export const MAX_MESSAGE = 1 << 20;

function hostPort(flag, value) {
  const at = value.lastIndexOf(":");
  const port = Number(value.slice(at + 1));
  if (at < 1 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`${flag} ${value}: expected HOST:PORT`);
  }
  return { host: value.slice(0, at), port };
}

export function parseArgs(argv) {
  const args = { listen: "127.0.0.1:9002", admin: "127.0.0.1:9092", deflate: "off" };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    const key = flag.replace(/^--/, "");
    if (!(key in args) || value === undefined) {
      throw new Error(`unknown or incomplete flag ${flag}: use --listen, --admin, --deflate`);
    }
    args[key] = value;
  }
  if (args.deflate !== "off" && args.deflate !== "shared") {
    throw new Error(`--deflate ${args.deflate}: expected off or shared`);
  }
  return { listen: hostPort("--listen", args.listen), admin: hostPort("--admin", args.admin), deflate: args.deflate };
}

/** The `topic` of a query string (`a=1&topic=T`), or null. */
export function topicOf(query) {
  const match = /(?:^|&)topic=([^&]*)/.exec(query ?? "");
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

/** The topic of a publish path (`/publish/T`), or null. */
export function publishTopic(path) {
  if (!path.startsWith("/publish/")) return null;
  try {
    const topic = decodeURIComponent(path.slice("/publish/".length));
    return topic.length > 0 ? topic : null;
  } catch {
    return null;
  }
}
