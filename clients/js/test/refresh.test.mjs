// Token refresh against the real server: the server's `refresh` notice makes the SDK call
// getToken and send `refresh`, and the connection outlives the first token; when the
// refresh fails the server closes with 1008 "token expired" and the SDK reconnects with a
// fresh token, resuming its subscription.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client } from "../dist/index.js";
import { FAST, SECRET, STEP, adminPublish, jwt, next, record, startServer, until, within } from "./harness.mjs";

let server;
const clients = [];
const nowSec = () => Math.floor(Date.now() / 1000);

before(async () => {
  // --refresh-lead 60 (the default): a token with less left is asked to refresh at once.
  server = await startServer({ args: ["--auth", "hs256", "--auth-secret", SECRET, "--history", "100"] });
});

after(() => {
  for (const c of clients) c.close();
  server?.cleanup();
});

test("the refresh notice is answered and the connection survives past the first token's exp", async () => {
  const firstExp = nowSec() + 3;
  const calls = [];
  const c = new Client(server.url, {
    backoff: FAST,
    getToken: (ctx) => {
      calls.push(ctx);
      return calls.length === 1 ? jwt({ exp: firstExp }) : jwt({ exp: nowSec() + 3600 });
    },
  });
  clients.push(c);
  const disconnects = [];
  c.on("disconnected", (e) => disconnects.push(e));
  const refreshed = next(c, "refreshed");
  await within(c.connect(), STEP, "connect");
  const sub = c.subscribe("r:1");
  await within(sub.ready, STEP, "subscribed");
  const reply = await refreshed;
  assert.equal(calls[1].reason, "refresh");
  assert.equal(calls[1].expires, firstExp);
  assert.ok(reply.expires > firstExp + 3000);
  // Past the first token's exp (the server checks at least once a second, with no skew).
  await until(() => Date.now() > (firstExp + 2) * 1000, STEP, "the first token's expiry to pass");
  const log = record(sub);
  await adminPublish(server, "r:1", "still here");
  await until(() => log.messages.length === 1, STEP, "a publication after the first exp");
  assert.equal((await c.ping()).op, "ping");
  assert.deepEqual(disconnects, []);
  assert.equal(calls.length, 2);
});

test("a refused refresh: invalid_token reported, then 1008 token expired, a fresh token, resumed", async () => {
  const calls = [];
  const c = new Client(server.url, {
    backoff: FAST,
    getToken: (ctx) => {
      calls.push(ctx.reason);
      if (ctx.reason === "refresh") return "not.a.jwt";
      if (ctx.reason === "expired") return jwt({ exp: nowSec() + 3600 });
      return jwt({ exp: nowSec() + 2 });
    },
  });
  clients.push(c);
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  await within(c.connect(), STEP, "connect");
  const sub = c.subscribe("r:2");
  await within(sub.ready, STEP, "subscribed");
  const log = record(sub);
  const before = await adminPublish(server, "r:2", "before");
  await until(() => log.messages.length === 1, STEP, "the first publication");

  const closed = await next(c, "disconnected", () => true, 15_000);
  assert.equal(closed.code, 1008);
  assert.equal(closed.reason, "token expired");
  assert.equal(closed.reconnect, true);
  assert.ok(errors.includes("invalid_token"), JSON.stringify(errors));
  // Published while the client is away: the resume brings it.
  await adminPublish(server, "r:2", "while away");
  const resubscribed = await next(sub, "subscribed");
  assert.equal(resubscribed.offset, before.offset);
  await adminPublish(server, "r:2", "after");
  await until(() => log.messages.length === 3, STEP, "three publications");
  assert.deepEqual(log.messages.map((m) => m.data), ["before", "while away", "after"]);
  assert.deepEqual(calls.slice(0, 3), ["connect", "refresh", "expired"]);
  assert.equal(log.gaps.length, 0);
});
