// Every protocol v1 command through the SDK against the real server, and every error the
// SDK can provoke, with its stable code.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Client, StratusError } from "../dist/index.js";
import { FAST, SECRET, STEP, adminPublish, jwt, next, record, startServer, until, within } from "./harness.mjs";

// Namespaces over the flags (--history 100 --client-publish subscribers).
const CONFIG = `
[namespace."live:"]
history = 0

[namespace."ro:"]
publish = "off"

[namespace."small:"]
max-message = 16

[namespace."solo:"]
max-subscribers = 1

[namespace."norec:"]
recovery = false
`;

let server;
const clients = [];

function client(options = {}) {
  const c = new Client(server.url, { getToken: () => jwt(), backoff: FAST, ...options });
  clients.push(c);
  return c;
}

async function connected(options) {
  const c = client(options);
  await within(c.connect(), STEP, "connect");
  return c;
}

/** Rejects-with-code helper: the promise must reject with a StratusError of this code. */
async function refused(promise, code) {
  const error = await within(promise.then(() => null, (e) => e), STEP, `a ${code} error`);
  assert.ok(error instanceof StratusError, `expected a StratusError ${code}, got ${error}`);
  assert.equal(error.code, code, error.message);
  return error;
}

before(async () => {
  server = await startServer({
    config: CONFIG,
    args: [
      "--auth", "hs256", "--auth-secret", SECRET,
      "--history", "100",
      "--client-publish", "subscribers",
      "--client-publish-rate", "0",
      "--max-topics", "8",
    ],
  });
});

after(() => {
  for (const c of clients) c.close();
  server?.cleanup();
});

describe("connecting", () => {
  test("the token in the query; events, state and transport", async () => {
    const c = client();
    const seen = [];
    c.on("transport", (t) => seen.push(["transport", t]));
    c.on("connected", (e) => seen.push(["connected", e.protocol]));
    assert.equal(c.state, "disconnected");
    const done = c.connect();
    assert.equal(c.state, "connecting");
    await within(done, STEP, "connect");
    assert.equal(c.state, "connected");
    assert.equal(c.transport, "websocket");
    assert.deepEqual(seen, [["transport", "websocket"], ["connected", "stratus.v1"]]);
    const disc = next(c, "disconnected");
    c.close();
    assert.deepEqual(await disc, { code: 1000, reason: "client closed", reconnect: false });
    assert.equal(c.state, "disconnected");
  });

  test("the token as a bearer subprotocol", async () => {
    const c = await connected({ tokenIn: "protocol" });
    assert.equal((await within(c.ping(), STEP, "ping")).op, "ping");
  });

  test("a refused upgrade (no valid token) is retried, and reported", async () => {
    let calls = 0;
    const c = client({ getToken: () => (++calls < 3 ? "not.a.jwt" : jwt()) });
    const errors = [];
    c.on("error", (e) => errors.push(e.code));
    await within(c.connect(), STEP, "connect on the third attempt");
    assert.equal(calls, 3);
    assert.ok(errors.includes("transport"), JSON.stringify(errors));
  });
});

describe("subscribe, publish, unsubscribe", () => {
  test("JSON and text publications from the client, with offsets and keys", async () => {
    const c = await connected();
    const sub = c.subscribe("chat:1");
    assert.equal(sub.state, "subscribing");
    const reply = await within(sub.ready, STEP, "subscribed");
    assert.equal(reply.offset, "0-0"); // a history topic with nothing yet
    assert.equal(reply.recovering, false);
    assert.equal(sub.state, "subscribed");
    const log = record(sub);
    const p1 = await c.publish("chat:1", { data: { a: [1, 2], s: "x" } }, { key: "k1" });
    const p2 = await c.publish("chat:1", { text: "hello \"x\"" });
    assert.match(p1.offset, /^\d+-\d+$/);
    await until(() => log.messages.length === 2, STEP, "both publications");
    assert.deepEqual(log.messages, [
      { topic: "chat:1", data: { a: [1, 2], s: "x" }, offset: p1.offset, key: "k1", binary: false },
      { topic: "chat:1", data: "hello \"x\"", offset: p2.offset, key: null, binary: false },
    ]);
    assert.equal(sub.offset, p2.offset);
  });

  test("admin publications: JSON, text and binary (decoded to bytes with topic, offset, key)", async () => {
    const c = await connected();
    const sub = c.subscribe("feed");
    await within(sub.ready, STEP, "subscribed");
    const log = record(sub);
    const j = await adminPublish(server, "feed", '{"price":101.5}', { type: "application/json" });
    const b = await adminPublish(server, "feed", Uint8Array.of(0, 1, 2, 255), { type: "application/octet-stream", key: "eur" });
    await until(() => log.messages.length === 2, STEP, "two publications");
    assert.deepEqual(log.messages[0], { topic: "feed", data: { price: 101.5 }, offset: j.offset, key: null, binary: false });
    const m = log.messages[1];
    assert.equal(m.binary, true);
    assert.ok(m.data instanceof Uint8Array);
    assert.deepEqual([...m.data], [0, 1, 2, 255]);
    assert.equal(m.offset, b.offset);
    assert.equal(m.key, "eur");
  });

  test("a topic without history: offset null, publications without offsets", async () => {
    const c = await connected();
    const sub = c.subscribe("live:x");
    assert.deepEqual(
      { offset: (await within(sub.ready, STEP, "subscribed")).offset },
      { offset: null },
    );
    const m = next(sub, "message");
    const r = await c.publish("live:x", { text: "now" });
    assert.equal(r.offset, null);
    assert.deepEqual(await m, { topic: "live:x", data: "now", offset: null, key: null, binary: false });
  });

  test("subscribe with since: \"$\" and with an offset (resume)", async () => {
    const c = await connected();
    const first = c.subscribe("resume:1");
    await within(first.ready, STEP, "subscribed");
    const a = await c.publish("resume:1", { text: "a" });
    const b = await c.publish("resume:1", { text: "b" });
    await first.unsubscribe();

    const d = await connected();
    const now = d.subscribe("resume:1", { since: "$" });
    assert.equal((await within(now.ready, STEP, "subscribed")).offset, b.offset);
    const e = await connected();
    const from = e.subscribe("resume:1", { since: a.offset });
    const log = record(from);
    const reply = await within(from.ready, STEP, "subscribed");
    assert.equal(reply.recovering, true);
    await until(() => log.messages.length === 1, STEP, "the missed publication");
    assert.deepEqual(log.messages.map((m) => m.data), ["b"]);
  });

  test("subscribing twice to a topic gives the same subscription", async () => {
    const c = await connected();
    const s1 = c.subscribe("twice");
    assert.equal(c.subscribe("twice"), s1);
    await within(s1.ready, STEP, "subscribed");
    assert.equal(c.subscriptions.size, 1);
  });

  test("unsubscribe: state, no more messages, no state left in the client", async () => {
    const c = await connected();
    const sub = c.subscribe("gone");
    await within(sub.ready, STEP, "subscribed");
    const log = record(sub);
    const states = [];
    sub.on("state", (s) => states.push(s));
    await within(sub.unsubscribe(), STEP, "unsubscribed");
    assert.equal(sub.state, "unsubscribed");
    assert.deepEqual(states, ["unsubscribed"]);
    assert.equal(c.subscriptions.has("gone"), false);
    await adminPublish(server, "gone", "after");
    await c.ping(); // the publication would have arrived before this reply
    assert.equal(log.messages.length, 0);
    // Unsubscribing again is a no-op; a new subscribe is a new subscription.
    await sub.unsubscribe();
    const again = c.subscribe("gone");
    assert.notEqual(again, sub);
    await within(again.ready, STEP, "subscribed again");
  });

  test("the unsubscribe command: reply, then not_subscribed", async () => {
    const c = await connected();
    const sub = c.subscribe("unsub:cmd");
    await within(sub.ready, STEP, "subscribed");
    const reply = await c.unsubscribe("unsub:cmd");
    assert.deepEqual({ op: reply.op, topic: reply.topic }, { op: "unsubscribe", topic: "unsub:cmd" });
    assert.equal(sub.state, "unsubscribed");
    const err = await refused(c.unsubscribe("unsub:cmd"), "not_subscribed");
    assert.equal(err.topic, "unsub:cmd");
    assert.equal(err.op, "unsubscribe");
  });

  test("Subscription.unsubscribe() treats not_subscribed as done", async () => {
    const c = await connected();
    const sub = c.subscribe("unsub:twice");
    await within(sub.ready, STEP, "subscribed");
    await c.unsubscribe("unsub:twice").catch(() => {});
    // The server has no subscription now; the Subscription object already ended.
    await within(sub.unsubscribe(), STEP, "a second unsubscribe to resolve");
  });
});

describe("history and ping", () => {
  test("pages, since, limit, more, and binary payloads as bytes", async () => {
    const c = await connected();
    const sub = c.subscribe("hist");
    await within(sub.ready, STEP, "subscribed");
    const offsets = [];
    for (const text of ["h1", "h2", "h3"]) offsets.push((await c.publish("hist", { text })).offset);
    const bin = await adminPublish(server, "hist", Uint8Array.of(65, 66), { type: "application/octet-stream", key: "k" });
    offsets.push(bin.offset);

    const page = await c.history("hist", { limit: 2 });
    assert.equal(page.op, "history");
    assert.equal(page.more, true);
    assert.equal(page.gap, null);
    assert.deepEqual(page.publications.map((p) => [p.data, p.offset]), [["h1", offsets[0]], ["h2", offsets[1]]]);
    const rest = await c.history("hist", { since: offsets[1] });
    assert.equal(rest.more, false);
    assert.equal(rest.gap, null);
    assert.deepEqual(rest.publications.map((p) => p.offset), offsets.slice(2));
    const last = rest.publications[1];
    assert.equal(last.binary, true);
    assert.deepEqual([...last.data], [65, 66]);
    assert.equal(last.key, "k");
    const none = await c.history("hist", { since: "$" });
    assert.deepEqual(none.publications, []);
  });

  test("ping answers with its round trip", async () => {
    const c = await connected();
    const r = await within(c.ping(), STEP, "ping");
    assert.equal(r.op, "ping");
    assert.ok(r.rtt >= 0);
  });
});

describe("refresh", () => {
  test("a valid token: expires; a bad one: invalid_token; another subject: invalid_token", async () => {
    const c = await connected();
    const exp = Math.floor(Date.now() / 1000) + 7200;
    const refreshed = next(c, "refreshed");
    const reply = await c.refresh(jwt({ exp }));
    assert.equal(reply.expires, exp);
    assert.equal((await refreshed).expires, exp);
    await refused(c.refresh("not.a.jwt"), "invalid_token");
    await refused(c.refresh(jwt({}, "another-secret-another-secret-another-secret")), "invalid_token");
    await refused(c.refresh(jwt({ sub: "mallory" })), "invalid_token");
    // The connection is unaffected.
    assert.equal((await c.ping()).op, "ping");
  });

  test("refresh() without a token asks getToken for one", async () => {
    const reasons = [];
    const c = await connected({ getToken: (ctx) => (reasons.push(ctx.reason), jwt()) });
    await c.refresh();
    assert.deepEqual(reasons, ["connect", "refresh"]);
  });

  test("a refreshed token that no longer allows a topic ends its subscription (unsubscribed)", async () => {
    const c = await connected();
    const keep = c.subscribe("keep:1");
    const drop = c.subscribe("drop:1");
    await within(Promise.all([keep.ready, drop.ready]), STEP, "both subscribed");
    const notice = next(drop, "unsubscribed");
    await c.refresh(jwt({ topics: ["keep:*"] }));
    const n = await notice;
    assert.equal(n.topic, "drop:1");
    assert.equal(drop.state, "unsubscribed");
    assert.equal(keep.state, "subscribed");
    assert.deepEqual([...c.subscriptions.keys()], ["keep:1"]);
  });
});

describe("errors, each with its code", () => {
  test("forbidden: a topic outside the token's claim (the subscription fails)", async () => {
    const c = await connected({ getToken: () => jwt({ topics: ["mine.*"] }) });
    const sub = c.subscribe("theirs");
    const err = await refused(sub.ready, "forbidden");
    assert.equal(err.topic, "theirs");
    assert.equal(sub.state, "failed");
    assert.equal(c.subscriptions.has("theirs"), false);
    await refused(c.history("theirs"), "forbidden");
    const ok = c.subscribe("mine.a");
    await within(ok.ready, STEP, "an allowed topic");
  });

  test("forbidden: publish where publishing is off, and before subscribing", async () => {
    const c = await connected();
    const ro = c.subscribe("ro:x");
    await within(ro.ready, STEP, "subscribed");
    await refused(c.publish("ro:x", { text: "no" }), "forbidden");
    await refused(c.publish("not-subscribed", { text: "no" }), "forbidden");
  });

  test("invalid_topic: subscribe, publish, history", async () => {
    const c = await connected();
    const sub = c.subscribe("a b");
    await refused(sub.ready, "invalid_topic");
    assert.equal(sub.state, "failed");
    await refused(c.publish("a b", { text: "x" }), "invalid_topic");
    await refused(c.history("x".repeat(129)), "invalid_topic");
  });

  test("no_history: since on a topic without history, history of one, resume where recovery is off", async () => {
    const c = await connected();
    await refused(c.subscribe("live:h", { since: "$" }).ready, "no_history");
    await refused(c.history("live:h"), "no_history");
    await refused(c.subscribe("norec:a", { since: "1-0" }).ready, "no_history");
    const ok = c.subscribe("norec:b", { since: "$" });
    assert.match((await within(ok.ready, STEP, "since $ where recovery is off")).offset, /^\d+-\d+$/);
  });

  test("too_large: over the namespace's max-message", async () => {
    const c = await connected();
    const sub = c.subscribe("small:x");
    await within(sub.ready, STEP, "subscribed");
    await c.publish("small:x", { text: "sixteen bytes..." });
    const err = await refused(c.publish("small:x", { text: "seventeen bytes.." }), "too_large");
    assert.equal(err.op, "publish");
  });

  test("bad_request: a key over 128 bytes", async () => {
    const c = await connected();
    const sub = c.subscribe("keys");
    await within(sub.ready, STEP, "subscribed");
    await refused(c.publish("keys", { text: "x" }, { key: "k".repeat(129) }), "bad_request");
    await c.publish("keys", { text: "x" }, { key: "k".repeat(128) });
  });

  test("too_many_topics: past --max-topics the subscription fails", async () => {
    const c = await connected();
    const subs = Array.from({ length: 8 }, (_, i) => c.subscribe(`many:${i}`));
    await within(Promise.all(subs.map((s) => s.ready)), STEP, "eight subscriptions");
    const ninth = c.subscribe("many:8");
    await refused(ninth.ready, "too_many_topics");
    assert.equal(ninth.state, "failed");
    await subs[0].unsubscribe();
    await within(c.subscribe("many:8").ready, STEP, "a ninth after one left");
  });

  test("topic_full is retried with backoff until there is room", async () => {
    const a = await connected();
    const first = a.subscribe("solo:1");
    await within(first.ready, STEP, "the first subscriber");
    const b = await connected();
    const second = b.subscribe("solo:1");
    const err = await next(second, "error");
    assert.equal(err.code, "topic_full");
    assert.equal(err.retryable, true);
    assert.equal(second.state, "subscribing");
    await first.unsubscribe();
    await within(second.ready, STEP, "the retried subscription");
    assert.equal(second.state, "subscribed");
  });

  test("SDK-side: timeout, queue_full, closed", async () => {
    const c = client({ commandTimeout: 100, maxOfflineQueue: 1 });
    // Not connected: the first waits in the queue (and times out), the second does not fit.
    const p1 = c.ping();
    await refused(c.ping(), "queue_full");
    await refused(p1, "timeout");
    const p2 = c.history("x");
    c.close();
    await refused(p2, "closed");
  });
});

describe("rate limits (a server with small budgets)", () => {
  let tight;
  before(async () => {
    tight = await startServer({ args: ["--history", "10", "--client-publish", "subscribers", "--client-publish-rate", "2", "--message-rate", "20"] });
  });
  after(() => tight?.cleanup());

  test("rate_limited publishes past --client-publish-rate", async () => {
    const c = new Client(tight.url, { backoff: FAST });
    clients.push(c);
    await within(c.connect(), STEP, "connect");
    const sub = c.subscribe("rl");
    await within(sub.ready, STEP, "subscribed");
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => c.publish("rl", { text: `m${i}` }).then(() => "ok", (e) => e.code)),
    );
    assert.ok(results.includes("rate_limited"), JSON.stringify(results));
    assert.ok(results.includes("ok"), JSON.stringify(results));
  });

  test("rate_limited subscribes past --message-rate are retried until they succeed", async () => {
    const c = new Client(tight.url, { backoff: { initial: 200, max: 1000, jitter: 0.2 } });
    clients.push(c);
    await within(c.connect(), STEP, "connect");
    const subs = ["r1", "r2", "r3", "r4"].map((t) => c.subscribe(t));
    const errors = [];
    for (const s of subs) s.on("error", (e) => errors.push(e.code));
    await within(Promise.all(subs.map((s) => s.ready)), STEP, "every subscription, after retries");
    assert.ok(errors.includes("rate_limited"), JSON.stringify(errors));
    assert.ok(subs.every((s) => s.state === "subscribed"));
  });
});

describe("compression with Node's built-in WebSocket", () => {
  let deflating;
  before(async () => {
    // The server's default, named: shared permessage-deflate.
    deflating = await startServer({ args: ["--deflate", "shared"] });
  });
  after(() => deflating?.cleanup());

  test("compressed publications arrive intact, one after another (no final block ends the inflater)", async () => {
    const c = new Client(deflating.url, { backoff: { initial: 5000, max: 5000 } });
    clients.push(c);
    await within(c.connect(), STEP, "connect");
    const sub = c.subscribe("z");
    const outcome = new Promise((resolve) => {
      sub.on("message", (m) => resolve({ message: m }));
      c.on("error", (e) => e.code === "protocol_error" && resolve({ error: e }));
    });
    await within(sub.ready, STEP, "subscribed");
    const body = "x".repeat(300);
    await adminPublish(deflating, "z", body);
    const r = await within(outcome, STEP, "the message or an error");
    assert.equal(r.error, undefined, `the SDK could not read a compressed message: ${r.error?.message}`);
    assert.equal(r.message.data, body);
    // Later compressed messages too: an inflater kept across messages still reads them.
    const more = [];
    sub.on("message", (m) => more.push(m.data));
    for (let i = 0; i < 3; i++) await adminPublish(deflating, "z", `${i}`.repeat(200));
    await until(() => more.length === 3, STEP, "three more compressed messages");
    assert.deepEqual(more, ["0", "1", "2"].map((d) => d.repeat(200)));
    c.close();
  });
});
