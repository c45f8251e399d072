// The Server-Sent Events transport against the real server (docs/protocol.md section 21):
// forced SSE (two topics, unsubscribing one reopens the stream with the other, commands
// refused with receive_only); the fallback through a proxy that refuses every WebSocket
// upgrade; reconnects after SIGKILL with a Redis history (nothing lost, nothing twice)
// and with the node's own history (a gap event); tokens (getToken per request, a 401,
// a topic the token does not allow, the stream ended by the token's expiry).

import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { Client } from "../dist/index.js";
import { FAST, SECRET, STEP, adminPublish, jwt, next, record, scope, startRedis, until, within } from "./harness.mjs";

const { cleanups, track, serve } = scope();

const json = { type: "application/json" };
const nowSec = () => Math.floor(Date.now() / 1000);

/** Resolves with the StratusError `promise` rejects with (fails the test if it resolves). */
async function rejection(promise) {
  const error = await within(promise.then(() => null, (e) => e), STEP, "a rejection");
  assert.ok(error, "expected a rejection");
  return error;
}

/**
 * A proxy in front of `server` that answers every WebSocket upgrade with 403 (as a proxy
 * without WebSocket support might) and forwards plain requests, streaming the answer.
 */
async function refusingProxy(server) {
  const [host, port] = server.ws.split(":");
  const stats = { upgrades: 0, requests: [] };
  const proxy = http.createServer((req, res) => {
    stats.requests.push(req.url);
    const upstream = http.request({ host, port: Number(port), method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      res.flushHeaders();
      answer.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  proxy.on("upgrade", (_req, socket) => {
    stats.upgrades++;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const close = () => {
    proxy.closeAllConnections();
    proxy.close();
  };
  cleanups.push(close);
  return { url: `ws://127.0.0.1:${proxy.address().port}/ws`, stats, close };
}

test("forced SSE: two topics, publications with topic/offset/data; unsubscribing one reopens with the other; commands are receive_only", async () => {
  const s = await serve({ args: ["--history", "100"] });
  const c = track(new Client(s.url, { transports: ["sse"], backoff: FAST }));
  const seen = [];
  c.on("transport", (t) => seen.push(t));
  c.on("connected", (e) => seen.push(e.transport));
  await within(c.connect(), STEP, "connect");
  assert.equal(c.transport, "sse");
  assert.deepEqual(seen, ["sse", "sse"]);

  const a = c.subscribe("sse:a");
  const b = c.subscribe("sse:b");
  await within(Promise.all([a.ready, b.ready]), STEP, "subscribed");
  const la = record(a);
  const lb = record(b);
  const pa = await adminPublish(s, "sse:a", JSON.stringify({ n: 1, s: "x" }), json);
  const pb = await adminPublish(s, "sse:b", "line one\nline two");
  await until(() => la.messages.length === 1 && lb.messages.length === 1, STEP, "one publication on each");
  assert.deepEqual(la.messages[0], { topic: "sse:a", data: { n: 1, s: "x" }, offset: pa.offset, key: null, binary: false });
  assert.deepEqual(lb.messages[0], { topic: "sse:b", data: "line one\nline two", offset: pb.offset, key: null, binary: false });

  await a.unsubscribe();
  assert.equal(a.state, "unsubscribed");
  // Published while the stream reopens without sse:a: the resume point covers it.
  await adminPublish(s, "sse:b", "during the reopen");
  await adminPublish(s, "sse:a", "not wanted");
  await adminPublish(s, "sse:b", "after");
  await until(() => lb.messages.length === 3, STEP, "three on sse:b");
  assert.deepEqual(lb.messages.map((m) => m.data), ["line one\nline two", "during the reopen", "after"]);
  assert.equal(la.messages.length, 1);
  assert.equal(b.state, "subscribed");
  assert.deepEqual(lb.gaps, []);

  for (const p of [c.publish("sse:b", { text: "x" }), c.history("sse:b"), c.ping(), c.presence("sse:b"), c.occupancy("sse:b")]) {
    const e = await rejection(p);
    assert.equal(e.code, "receive_only", e.message);
  }
  assert.equal(c.queued, 0);
});

test("fallback: a proxy refuses WebSocket upgrades; the client ends up on SSE and gets its messages", async () => {
  const s = await serve({ args: ["--history", "100"] });
  const proxy = await refusingProxy(s);
  const c = track(new Client(proxy.url, { backoff: FAST }));
  assert.equal(c.sseUrl, proxy.url.replace("ws:", "http:").replace("/ws", "/sse"));
  const transports = [];
  const connected = [];
  c.on("transport", (t) => transports.push(t));
  c.on("connected", (e) => connected.push(e));
  const sub = c.subscribe("fb");
  const queued = c.ping();
  await within(c.connect(), STEP, "connect");
  assert.equal(c.transport, "sse");
  assert.deepEqual(transports, ["sse"]);
  assert.equal(connected.length, 1);
  assert.equal(connected[0].transport, "sse");
  assert.equal(connected[0].url, c.sseUrl);
  assert.equal(proxy.stats.upgrades, 2, "a WebSocket attempt, and one more once HTTP answered");
  assert.equal((await rejection(queued)).code, "receive_only");
  await within(sub.ready, STEP, "subscribed");
  const log = record(sub);
  const p = await adminPublish(s, "fb", "through the proxy");
  await until(() => log.messages.length === 1, STEP, "the publication");
  assert.equal(log.messages[0].data, "through the proxy");
  assert.equal(log.messages[0].offset, p.offset);
  // Requests: the topic-less check, then the stream; both plain GETs with the token-free query.
  assert.equal(proxy.stats.requests.length, 2);
  assert.equal(proxy.stats.requests[0], "/sse");
  assert.equal(proxy.stats.requests[1], "/sse?topic=fb&since=%24");
  c.close();
  proxy.close();
});

test("SSE reconnect after SIGKILL with Redis history: every publication once, in order, no gap", async () => {
  const redis = await startRedis();
  cleanups.push(() => redis.cleanup());
  const args = ["--broker", redis.url, "--history", "1000"];
  let a = await serve({ args });
  const port = a.port;
  const b = await serve({ args });

  let n = 0;
  const publish = async (count) => {
    for (let i = 0; i < count; i++) await adminPublish(b, "orders", JSON.stringify({ n: ++n }), json);
  };
  // Start after a known offset, so that no publication can slip by before the stream's
  // subscription reaches Redis.
  // (Node B answers 503 until its broker connection is up.)
  const start = await until(
    () => adminPublish(b, "orders", JSON.stringify({ n: 1 }), json).catch(() => null),
    STEP,
    "node B's broker",
  );
  n = 1;
  const c = track(new Client(a.url, { transports: ["sse"], backoff: FAST }));
  const sub = c.subscribe("orders", { since: start.offset });
  const log = record(sub);
  const subscribed = [];
  sub.on("subscribed", (r) => subscribed.push(r));
  await within(c.connect(), STEP, "connect");
  await publish(20);
  await until(() => log.messages.length === 20, STEP, "the first 20 publications");

  const down = next(c, "disconnected");
  await a.kill();
  assert.equal((await down).code, 1006);
  assert.equal(sub.state, "subscribing");
  await publish(30); // while the client's node is dead
  a = await serve({ args, port });
  await publish(30); // while the client reconnects and resumes
  await until(() => log.messages.length >= 80, 20_000, "80 publications");
  await publish(5);
  await until(() => log.messages.length >= 85, STEP, "85 publications");
  await new Promise((r) => setTimeout(r, 100)); // anything late (a duplicate) would show

  assert.deepEqual(
    log.messages.map((m) => m.data.n),
    Array.from({ length: 85 }, (_, i) => i + 2),
  );
  assert.deepEqual(log.gaps, []);
  assert.equal(new Set(log.messages.map((m) => m.offset)).size, 85);
  assert.equal(subscribed.length, 2, "subscribed at first and after the reconnect");
  assert.equal(subscribed[1].offset, log.messages[19].offset, "resumed from the last offset delivered");
  assert.equal(c.transport, "sse");
});

test("SSE reconnect after SIGKILL with the node's own history (lost): a gap event, then live", async () => {
  let s = await serve({ args: ["--history", "100"] });
  const port = s.port;
  const c = track(new Client(s.url, { transports: ["sse"], backoff: FAST }));
  const sub = c.subscribe("news");
  await within(c.connect(), STEP, "connect");
  await within(sub.ready, STEP, "subscribed");
  const log = record(sub);
  for (const t of ["a", "b", "c"]) await adminPublish(s, "news", t);
  await until(() => log.messages.length === 3, STEP, "three publications");

  await s.kill();
  s = await serve({ args: ["--history", "100"], port });
  await until(() => log.gaps.length === 1, 15_000, "a gap event");
  const gap = log.gaps[0];
  assert.equal(gap.topic, "news");
  assert.equal(typeof gap.reason, "string");
  await adminPublish(s, "news", "d");
  await until(() => log.messages.length === 4, STEP, "a publication after the restart");
  assert.deepEqual(log.all.map((e) => (e.kind === "gap" ? "gap" : e.data)), ["a", "b", "c", "gap", "d"]);
});

test("tokens over SSE: getToken before each request, a 401 (then reason expired), a topic the token does not allow, the stream ended at exp", async () => {
  const s = await serve({ args: ["--auth", "hs256", "--auth-secret", SECRET, "--history", "100"] });

  // A bad token: 401, invalid_token; the next getToken is asked for reason "expired".
  const reasons = [];
  const c = track(
    new Client(s.url, {
      transports: ["sse"],
      backoff: FAST,
      getToken: (ctx) => {
        reasons.push(ctx.reason);
        if (reasons.length === 1) return jwt({}, "not-the-secret-0123456789abcdef0123456789");
        return jwt({ topics: ["auth:*"] });
      },
    }),
  );
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  const disconnects = [];
  c.on("disconnected", (e) => disconnects.push([e.code, e.reason]));
  const sub = c.subscribe("auth:1");
  await within(c.connect(), STEP, "connect");
  assert.deepEqual(errors, ["invalid_token"]);
  assert.deepEqual(disconnects, [[1008, "token expired"]]);
  assert.deepEqual(reasons, ["connect", "expired"]);
  await within(sub.ready, STEP, "subscribed");
  const log = record(sub);
  await adminPublish(s, "auth:1", "hello");
  await until(() => log.messages.length === 1, STEP, "a publication");

  // A topic outside the token's: the reopened stream is refused (403); that subscription
  // fails, the other keeps going.
  const other = c.subscribe("other");
  const refusal = await rejection(other.ready);
  assert.equal(refusal.code, "forbidden");
  assert.equal(other.state, "failed");
  await adminPublish(s, "auth:1", "still");
  await until(() => log.messages.length === 2, STEP, "a publication after the refusal");
  assert.equal(c.state, "connected");
  assert.ok(reasons.length >= 4, `getToken before each request: ${reasons}`);

  // A token that expires: the server ends the stream at exp; the client comes back with a
  // new token (reason "expired"), resuming: what was published meanwhile arrives once.
  const calls = [];
  const d = track(
    new Client(s.url, {
      transports: ["sse"],
      backoff: FAST,
      getToken: (ctx) => {
        calls.push(ctx.reason);
        return calls.length === 1 ? jwt({ exp: nowSec() + 2 }) : jwt({});
      },
    }),
  );
  const short = d.subscribe("exp");
  await within(d.connect(), STEP, "connect");
  await within(short.ready, STEP, "subscribed");
  const slog = record(short);
  await adminPublish(s, "exp", "before");
  await until(() => slog.messages.length === 1, STEP, "the first publication");
  const closed = await next(d, "disconnected", () => true, 15_000);
  const resubscribed = next(short, "subscribed");
  assert.deepEqual([closed.code, closed.reason], [1008, "token expired"]);
  await adminPublish(s, "exp", "while away");
  await resubscribed;
  await adminPublish(s, "exp", "after");
  await until(() => slog.messages.length === 3, STEP, "three publications");
  assert.deepEqual(slog.messages.map((m) => m.data), ["before", "while away", "after"]);
  assert.deepEqual(calls, ["connect", "expired"]);
  assert.deepEqual(slog.gaps, []);
});
