// Browser end-to-end test of the JavaScript SDK (clients/js) in a page: e2e/pages/sdk.html,
// served with clients/js/dist by a file server of the test's own (so on another origin than
// the server's, which --allowed-origins lets in), imports the SDK without a bundler and
// shows on `window.e2e` (and in the DOM) what its client receives. Against the real
// `stratus` with a Redis broker and history, the test checks that the page
// 1. receives what the admin API publishes: every sequence number, in order, with its
//    topic and the offset the publish answered;
// 2. publishes through the SDK: the reply's offset is in the topic's history (admin API)
//    and comes back to the page's own subscription;
// 3. survives a server restart (SIGKILL, nothing published while down, back on the same
//    ports with the same Redis; published to right after it listens, before the page has
//    reconnected, then again once it has): every sequence number exactly once, in order,
//    no gap, back over WebSocket;
// 4. falls back to Server-Sent Events when WebSocket upgrades are refused (a proxy between
//    page and server answers every upgrade 403 and forwards other requests, streaming):
//    the client (default transports) says its transport is "sse", receives what is
//    published, and its publish is refused with `receive_only`.
// Exits non-zero with the reason (and the server's last log lines) on any failure, and
// after 60 s in all; always stops the server, Redis, the proxy, the file server and the
// browser.
//
// Usage: STRATUS_BIN=path/to/stratus node sdk-page.mjs   (scripts/e2e.sh sets it up: it
// builds clients/js first, and installs redis-server)

import { existsSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  Failure, STEP_MS, adminPublish, check, expect, onCleanup, openPage, restartablePorts, run, serveFiles, sleep, startRedis, startServer, stopServer,
  until, untilReady, within,
} from "./harness.mjs";

const OVERALL_MS = 60_000;
const HERE = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.join(HERE, "..", "clients", "js", "dist");
const OFFSET = /^\d+-\d+$/;

// Headers that belong to one hop, not forwarded by the proxy.
const HOP = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"];

// A proxy on its own loopback port in front of the server at `target` ("127.0.0.1:port"):
// it answers every WebSocket upgrade with 403, and forwards every other request (headers,
// Origin included, as they came) and streams the answer back. Resolves to { addr, seen },
// where seen.upgrades and seen.forwarded list the requests ({ url, origin }).
async function refusingProxy(target) {
  const [host, port] = target.split(":");
  const seen = { upgrades: [], forwarded: [] };
  const strip = (headers) => Object.fromEntries(Object.entries(headers).filter(([name]) => !HOP.includes(name)));
  const proxy = createServer((req, res) => {
    seen.forwarded.push({ method: req.method, url: req.url, origin: req.headers.origin ?? null });
    const upstream = httpRequest({ host, port: Number(port), method: req.method, path: req.url, headers: { ...strip(req.headers), host: target } });
    upstream.on("response", (answer) => {
      res.writeHead(answer.statusCode, strip(answer.headers));
      res.flushHeaders();
      answer.pipe(res);
    });
    upstream.on("error", () => {
      if (res.headersSent) res.destroy();
      else res.writeHead(502, { "Content-Type": "text/plain" }).end("bad gateway\n");
    });
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  proxy.on("upgrade", (req, socket) => {
    seen.upgrades.push({ url: req.url, origin: req.headers.origin ?? null });
    socket.on("error", () => {});
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nforbidden\n");
  });
  await new Promise((resolve, reject) => {
    proxy.once("error", reject);
    proxy.listen(0, "127.0.0.1", resolve);
  });
  onCleanup(() => new Promise((resolve) => {
    proxy.closeAllConnections();
    proxy.close(resolve);
  }));
  return { addr: `127.0.0.1:${proxy.address().port}`, seen };
}

// Opens the SDK page on a client of `ws` subscribed to `topics`, with `options` for
// `new Client`; resolves once every subscription has its first reply.
async function sdkPage(files, ws, topics, options) {
  const { page } = await openPage();
  const scriptErrors = [];
  page.on("pageerror", (err) => scriptErrors.push(err.message));
  const query = new URLSearchParams({ ws, topics: topics.join(","), options: JSON.stringify(options) });
  const response = await page.goto(`${files.origin}/pages/sdk.html?${query}`);
  check(response?.status() === 200, `the page answered ${response?.status()}`);
  await expect(`the page's client connects and subscribes to ${topics.join(", ")}`, page.waitForFunction(
    (n) => window.e2e?.subscribed === n || window.e2e?.failed.length > 0, topics.length));
  const failed = await page.evaluate(() => window.e2e.failed);
  check(failed.length === 0, `the page's subscriptions failed: ${failed.join(" | ")}`);
  return { page, scriptErrors };
}

const state = (page) => page.evaluate(() => ({
  state: window.e2e.client.state,
  transport: window.e2e.client.transport,
  events: window.e2e.events,
  gaps: window.e2e.gaps,
  errors: window.e2e.errors,
}));
const messages = (page, topic) => page.evaluate((topic) => window.e2e.messages.filter((m) => m.topic === topic), topic);
const connects = (events) => events.filter((event) => event.kind === "connected");

// Publishes { seq } for each of `seqs` on `topic` through the admin API; resolves to what
// the page should receive, in order ({ topic, offset, data }).
async function publishSeqs(admin, topic, seqs) {
  const sent = [];
  for (const seq of seqs) {
    const answer = await adminPublish(admin, topic, { seq });
    check(typeof answer.offset === "string" && OFFSET.test(answer.offset), `the publish of ${seq} has an offset: ${JSON.stringify(answer)}`);
    sent.push({ topic, offset: answer.offset, data: { seq } });
  }
  return sent;
}

// Waits until the page has `expected.length` messages on `topic`, then checks they are
// exactly `expected` (topic, offset, data), in order.
async function receivedExactly(page, what, topic, expected) {
  const short = (list) => list.map((m) => `${m.data?.seq ?? JSON.stringify(m.data)}@${m.offset}`).join(" ");
  try {
    await until(`the page receives ${what} (${expected.length} on ${topic})`, async () => (await messages(page, topic)).length >= expected.length);
  } catch (err) {
    const now = await state(page);
    throw new Failure(`${err.message}; it has ${short(await messages(page, topic))}; the client is ${now.state} over ${now.transport}; ` +
      `gaps ${JSON.stringify(now.gaps)}; errors ${JSON.stringify(now.errors)}; events ${JSON.stringify(now.events.map(({ at, ...e }) => e))}`);
  }
  await sleep(200); // anything delivered twice would be here by now
  const got = await messages(page, topic);
  check(JSON.stringify(got) === JSON.stringify(expected),
    `the page received ${what}, each once, in order, with its topic and offset:\n  expected ${short(expected)}\n  got      ${short(got)}`);
}

async function test() {
  check(existsSync(path.join(DIST, "index.js")), `no ${DIST}/index.js: build the SDK (cd clients/js && npm ci && npm run build)`);
  const files = await serveFiles({ "/pages/": path.join(HERE, "pages"), "/dist/": DIST });
  const redis = await startRedis();
  const args = ["--workers", "1", "--broker", redis.url, "--history", "1000", "--client-publish", "subscribers",
    "--allowed-origins", files.origin];
  // Ports a restart can take again (see restartablePorts).
  const ports = await restartablePorts();
  let addr = await startServer(args, ports);
  await untilReady(addr.admin);
  const base = `e2e-${process.pid}`;
  const [seqTopic, chatTopic, sseTopic] = [`${base}/seq`, `${base}/chat`, `${base}/sse`];

  // The page reconnects 3 s after a drop, every 3 s (no jitter): the restart below
  // publishes well before that.
  const RECONNECT_MS = 3_000;
  const { page, scriptErrors } = await sdkPage(files, `ws://${addr.ws}/ws`, [seqTopic, chatTopic],
    { backoff: { initial: RECONNECT_MS, max: RECONNECT_MS, factor: 1, jitter: 0 } });
  let now = await state(page);
  check(now.state === "connected" && now.transport === "websocket", `the page's client: ${now.state} over ${now.transport}`);
  const [connected] = connects(now.events);
  check(connected?.transport === "websocket" && connected.protocol === "stratus.v1",
    `the connected event: ${JSON.stringify(connected)}`);

  // 1. What the admin API publishes reaches the page: every one, in order, topic and offset.
  const expected = await publishSeqs(addr.admin, seqTopic, Array.from({ length: 20 }, (_, i) => i + 1));
  await receivedExactly(page, "20 publications from the admin API", seqTopic, expected);
  const shown = await page.locator(`[data-testid="messages"] > li[data-topic="${seqTopic}"]`).evaluateAll(
    (items) => items.map((item) => `${item.textContent}@${item.dataset.offset}`));
  check(JSON.stringify(shown) === JSON.stringify(expected.map((m) => `${JSON.stringify(m.data)}@${m.offset}`)),
    `the page shows the 20 in order: ${shown.join(" ")}`);

  // 2. The page publishes through the SDK: in the history, and back to its subscription.
  const mine = { from: "page", note: "<b>hello</b> & 'bye'" };
  const reply = await within("the page's publish", page.evaluate(([t, d]) => window.e2e.publish(t, d), [chatTopic, mine]));
  check(reply.ok && OFFSET.test(reply.offset ?? ""), `the page's publish: ${JSON.stringify(reply)}`);
  const response = await fetch(`http://${addr.admin}/history/${encodeURIComponent(chatTopic)}`, { signal: AbortSignal.timeout(STEP_MS) });
  const history = await response.json();
  check(response.status === 200 && JSON.stringify(history.publications) === JSON.stringify([{ data: mine, offset: reply.offset }]),
    `the topic's history holds the page's publication at ${reply.offset}: ${JSON.stringify(history)}`);
  await receivedExactly(page, "its own publication", chatTopic, [{ topic: chatTopic, offset: reply.offset, data: mine }]);

  // 3. SIGKILL; nothing published while down (the server is down); back on the same ports
  // with the same Redis, and published to before the page has reconnected, then after.
  await stopServer(addr, "SIGKILL");
  await expect("the page's client notices the server is gone", page.waitForFunction(() => window.e2e.client.state !== "connected"));
  addr = await startServer(args, ports);
  await untilReady(addr.admin); // Redis reached: a few ms after "listening"
  expected.push(...await publishSeqs(addr.admin, seqTopic, Array.from({ length: 10 }, (_, i) => 21 + i)));
  now = await state(page);
  check(connects(now.events).length === 1 && now.state !== "connected",
    `21 to 30 were published before the page reconnected: ${now.state}, ${connects(now.events).length} connects`);
  await expect("the page's client reconnects", page.waitForFunction(
    () => window.e2e.events.filter((event) => event.kind === "connected").length === 2, null, { timeout: STEP_MS }));
  expected.push(...await publishSeqs(addr.admin, seqTopic, Array.from({ length: 10 }, (_, i) => 31 + i)));
  await receivedExactly(page, "all 40 across the restart", seqTopic, expected);
  now = await state(page);
  check(now.gaps.length === 0, `no gap: ${JSON.stringify(now.gaps)}`);
  const again = connects(now.events)[1];
  check(again.transport === "websocket" && now.transport === "websocket", `back over WebSocket: ${JSON.stringify(again)}, ${now.transport}`);
  check(scriptErrors.length === 0, `script errors in the page: ${scriptErrors.join(" | ")}`);
  await page.close();

  // 4. Through a proxy that refuses WebSocket upgrades: the client falls back to SSE.
  const proxy = await refusingProxy(addr.ws);
  const fallback = await sdkPage(files, `ws://${proxy.addr}/ws`, [sseTopic], { backoff: { initial: 200, max: 1_000 } });
  now = await state(fallback.page);
  check(now.state === "connected" && now.transport === "sse", `the client behind the proxy: ${now.state} over ${now.transport}`);
  check(now.events.some((event) => event.kind === "transport" && event.transport === "sse"), `a transport event "sse": ${JSON.stringify(now.events)}`);
  const viaSse = connects(now.events).at(-1);
  check(viaSse?.transport === "sse", `the connected event says sse: ${JSON.stringify(viaSse)}`);
  check(proxy.seen.upgrades.length >= 1 && proxy.seen.upgrades.every((u) => u.url.startsWith("/ws")),
    `the client tried WebSocket first (refused): ${JSON.stringify(proxy.seen.upgrades)}`);
  const streams = proxy.seen.forwarded.filter((r) => r.method === "GET" && r.url.startsWith("/sse?"));
  check(streams.length >= 1 && streams.every((r) => r.origin === files.origin && new URLSearchParams(r.url.split("?")[1]).getAll("topic").includes(sseTopic)),
    `the event stream was asked for ${sseTopic}, with the page's Origin: ${JSON.stringify(proxy.seen.forwarded)}`);
  const overSse = await publishSeqs(addr.admin, sseTopic, [1, 2, 3, 4, 5]);
  await receivedExactly(fallback.page, "five publications over SSE", sseTopic, overSse);
  const refused = await within("the publish over SSE", fallback.page.evaluate((t) => window.e2e.publish(t, { from: "page" }), sseTopic));
  check(!refused.ok && refused.code === "receive_only", `a publish over SSE is refused with receive_only: ${JSON.stringify(refused)}`);
  check((await messages(fallback.page, sseTopic)).length === 5, "the refused publish reached nobody");
  check(fallback.scriptErrors.length === 0, `script errors in the page: ${fallback.scriptErrors.join(" | ")}`);
}

run("SDK page", test, OVERALL_MS);
