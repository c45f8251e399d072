// Reconnects against the real server: killed (SIGKILL) and restarted on the same port,
// with a history that survives the restart (Redis) — nothing lost, nothing duplicated —
// and with one that does not (the node's memory) — a gap event; stopped (SIGTERM, Close
// 1001); a history trimmed past the client's offset (a gap event); and the offline queue
// drained on connect.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../dist/index.js";
import { FAST, STEP, adminPublish, freePort, next, record, scope, startRedis, until, within } from "./harness.mjs";

const { cleanups, track, serve } = scope();

test("SIGKILL and restart with Redis history: every publication once, in order, no gap", async () => {
  const redis = await startRedis();
  cleanups.push(() => redis.cleanup());
  const args = ["--broker", redis.url, "--history", "1000"];
  // Node A holds the client; node B publishes throughout, also while A is dead.
  let a = await serve({ args });
  const port = a.port;
  const b = await serve({ args });

  const c = track(new Client(a.url, { backoff: FAST }));
  await within(c.connect(), STEP, "connect");
  const sub = c.subscribe("orders");
  await within(sub.ready, STEP, "subscribed");
  const log = record(sub);
  const replies = [];
  sub.on("subscribed", (r) => replies.push(r));

  let n = 0;
  const publish = async (count) => {
    for (let i = 0; i < count; i++) await adminPublish(b, "orders", JSON.stringify({ n: ++n }), { type: "application/json" });
  };
  await publish(20);
  await until(() => log.messages.length === 20, STEP, "the first 20 publications");

  const down = next(c, "disconnected");
  await a.kill();
  assert.equal((await down).code, 1006);
  await publish(30); // published while the client's node is dead
  a = await serve({ args, port });
  await publish(30); // published while the client reconnects and resumes
  await until(() => log.messages.length >= 80, 20_000, "80 publications");
  await publish(5);
  await until(() => log.messages.length >= 85, STEP, "85 publications");
  await c.ping(); // anything still in flight arrives before the reply

  assert.deepEqual(
    log.messages.map((m) => m.data.n),
    Array.from({ length: 85 }, (_, i) => i + 1),
  );
  assert.deepEqual(log.gaps, []);
  assert.equal(replies.length, 1, "one resubscribe");
  assert.equal(replies[0].offset, log.messages[19].offset, "resumed from the last offset delivered");
  const offsets = log.messages.map((m) => m.offset);
  assert.equal(new Set(offsets).size, 85);
});

test("SIGKILL and restart with the node's own history (lost): a gap event, then live publications", async () => {
  let s = await serve({ args: ["--history", "100"] });
  const port = s.port;
  const c = track(new Client(s.url, { backoff: FAST }));
  await within(c.connect(), STEP, "connect");
  const sub = c.subscribe("news");
  await within(sub.ready, STEP, "subscribed");
  const log = record(sub);
  for (const t of ["a", "b", "c"]) await adminPublish(s, "news", t);
  await until(() => log.messages.length === 3, STEP, "three publications");

  // Listening before the restart: the client may be back before `serve` returns.
  const gapSeen = next(sub, "gap", () => true, 20_000);
  const resubscribed = next(sub, "subscribed", () => true, 20_000);
  await s.kill();
  s = await serve({ args: ["--history", "100"], port });
  const gap = await gapSeen;
  assert.equal(gap.topic, "news");
  assert.equal(typeof gap.reason, "string");
  await resubscribed;
  await adminPublish(s, "news", "d");
  await until(() => log.messages.length === 4, STEP, "a publication after the restart");
  assert.deepEqual(log.all.map((e) => e.kind === "gap" ? "gap" : e.data), ["a", "b", "c", "gap", "d"]);
});

test("SIGTERM (Close 1001 server shutting down): the client reconnects once the server is back", async () => {
  let s = await serve({ args: ["--drain-timeout", "2"] });
  const port = s.port;
  const c = track(new Client(s.url, { backoff: FAST }));
  await within(c.connect(), STEP, "connect");
  const sub = c.subscribe("t");
  await within(sub.ready, STEP, "subscribed");
  const down = next(c, "disconnected", () => true, 20_000);
  await s.stop();
  const d = await down;
  assert.equal(d.code, 1001);
  assert.equal(d.reason, "server shutting down");
  assert.equal(d.reconnect, true);
  assert.equal(sub.state, "subscribing");
  const resubscribed = next(sub, "subscribed", () => true, 20_000); // before it is back
  s = await serve({ port });
  await within(resubscribed, 20_000, "resubscribed");
  const m = next(sub, "message");
  await adminPublish(s, "t", "back");
  assert.equal((await m).data, "back");
});

test("a history trimmed past the client's offset: a gap event, then what is kept, then live", async () => {
  const s = await serve({ args: ["--history", "2"] });
  const c = track(new Client(s.url, { backoff: FAST }));
  await within(c.connect(), STEP, "connect");
  const sub = c.subscribe("short");
  await within(sub.ready, STEP, "subscribed");
  const log = record(sub);
  await adminPublish(s, "short", "m0");
  await until(() => log.messages.length === 1, STEP, "m0");
  c.close();
  for (let i = 1; i <= 5; i++) await adminPublish(s, "short", `m${i}`);
  await within(c.connect(), STEP, "reconnect");
  await until(() => log.messages.length === 3, STEP, "what the history kept");
  await adminPublish(s, "short", "m6");
  await until(() => log.messages.length === 4, STEP, "live");
  assert.deepEqual(log.all.map((e) => (e.kind === "gap" ? "gap" : e.data)), ["m0", "gap", "m4", "m5", "m6"]);
  assert.match(log.gaps[0].reason, /no longer reaches/);
});

test("the offline queue: commands made before the server is up are sent on connect, past the cap queue_full", async () => {
  const port = await freePort();
  const c = track(new Client(`ws://127.0.0.1:${port}/ws`, { backoff: FAST, maxOfflineQueue: 3 }));
  const failures = [];
  c.on("error", (e) => failures.push(e.code));
  c.connect();
  await until(() => failures.length >= 2, STEP, "failed attempts while nothing listens");
  assert.equal(c.state, "connecting");
  const queued = [c.ping(), c.history("q"), c.ping()];
  const over = await c.ping().then(() => null, (e) => e);
  assert.equal(over.code, "queue_full");
  assert.equal(c.queued, 3);
  const sub = c.subscribe("q"); // subscriptions are not commands in the queue: no cap
  await serve({ port, args: ["--history", "10"] });
  const [p1, page, p2] = await within(Promise.all(queued), STEP, "the queued commands");
  assert.equal(p1.op, "ping");
  assert.equal(page.op, "history");
  assert.equal(p2.op, "ping");
  await within(sub.ready, STEP, "the subscription");
  assert.equal(c.queued, 0);
  assert.equal(c.pending, 0);
});
