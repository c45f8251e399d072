// Presence through the SDK against the real server: occupancy and members as promises,
// join and leave events on the subscription, and no_presence where a namespace has it off.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, StratusError } from "../dist/index.js";
import { FAST, SECRET, STEP, jwt, next, startServer, within } from "./harness.mjs";

const CONFIG = `
[namespace."room:"]
presence = "members"
presence-events = true

[namespace."quiet:"]
presence = "off"
`;

let server;
const clients = [];

async function connected(sub, info) {
  const c = new Client(server.url, { getToken: () => jwt({ sub, info }), backoff: FAST });
  clients.push(c);
  await within(c.connect(), STEP, "connect");
  return c;
}

before(async () => {
  server = await startServer({
    config: CONFIG,
    args: ["--auth", "hs256", "--auth-secret", SECRET, "--presence-interval", "0.1"],
  });
});

after(() => {
  for (const c of clients) c.close();
  server?.cleanup();
});

test("occupancy, members, and joins and leaves as subscription events", async () => {
  const watcher = await connected("watcher", { name: "W" });
  const room = watcher.subscribe("room:1");
  await within(room.ready, STEP, "subscribed");
  const bob = await connected("bob", { name: "Bob" });
  const joined = next(room, "join", (m) => m.user === "bob");
  const bobs = bob.subscribe("room:1");
  await within(bobs.ready, STEP, "bob subscribed");
  const [member] = await joined;
  assert.deepEqual(member.info, { name: "Bob" });

  const occupancy = await within(watcher.occupancy("room:1"), STEP, "occupancy");
  assert.equal(occupancy.connections, 2);
  assert.equal(occupancy.users, 2);
  const presence = await within(watcher.presence("room:1"), STEP, "presence");
  assert.equal(presence.complete, true);
  assert.deepEqual(presence.members.map((m) => m.user).sort(), ["bob", "watcher"]);

  const left = next(room, "leave", (m) => m.user === "bob");
  await within(bobs.unsubscribe(), STEP, "bob unsubscribed");
  const [gone] = await left;
  assert.equal(gone.client, member.client);
});

test("presence off: no_presence, with its stable code", async () => {
  const c = await connected("carol");
  const error = await within(c.occupancy("quiet:x").then(() => null, (e) => e), STEP, "refusal");
  assert.ok(error instanceof StratusError, String(error));
  assert.equal(error.code, "no_presence");
});
