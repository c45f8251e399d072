// Unit tests without a server: the backoff function, offsets and deduplication, the binary
// layout, and the client's state machine driven through a scripted fake WebSocket
// (resubscribe with `since`, duplicate frames, caps, timeouts, a wrong subprotocol, an
// unreadable frame).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  Client,
  OffsetTracker,
  StratusError,
  backoffDelay,
  compareOffsets,
  decodeBinaryPublication,
  encodeBinaryPublication,
  offsetBefore,
  parseOffset,
  resolveBackoff,
} from "../dist/index.js";
import { next, within } from "./harness.mjs";

describe("backoff", () => {
  test("grows by the factor up to the max, and jitter takes at most its share", () => {
    const b = resolveBackoff({ initial: 100, max: 5000, factor: 2, jitter: 0.5 });
    const top = () => 0; // random() = 0: no jitter taken, the full base delay
    const bottom = () => 0.999999;
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, b, top)),
      [100, 200, 400, 800, 1600, 3200, 5000, 5000],
    );
    for (let n = 0; n < 10; n++) {
      const base = Math.min(5000, 100 * 2 ** n);
      const low = backoffDelay(n, b, bottom);
      assert.ok(low >= base * 0.5 && low <= base * 0.5 + 0.01, `attempt ${n}: ${low} vs base ${base}`);
    }
  });

  test("is bounded by max for any attempt and any random value, even huge and broken ones", () => {
    const b = resolveBackoff({ initial: 250, max: 30_000, factor: 3, jitter: 1 });
    for (const attempt of [0, 1, 10, 100, 1e6, Infinity]) {
      for (const r of [0, 0.3, 0.999, 1, -5, 7, NaN]) {
        const d = backoffDelay(attempt, b, () => r);
        assert.ok(Number.isFinite(d) && d >= 0 && d <= 30_000, `attempt ${attempt}, random ${r}: ${d}`);
      }
    }
  });

  test("jitter 0 gives fixed delays; defaults fill in; nonsense is refused", () => {
    const b = resolveBackoff({ initial: 10, max: 40, jitter: 0 });
    assert.deepEqual([0, 1, 2, 3].map((n) => backoffDelay(n, b, Math.random)), [10, 20, 40, 40]);
    assert.deepEqual(resolveBackoff(), { initial: 500, max: 30_000, factor: 2, jitter: 0.5 });
    assert.throws(() => resolveBackoff({ max: -1 }), RangeError);
    assert.throws(() => resolveBackoff({ initial: 100, max: 50 }), RangeError);
    assert.throws(() => resolveBackoff({ factor: 0.5 }), RangeError);
    assert.throws(() => resolveBackoff({ jitter: 2 }), RangeError);
  });

  test("the client draws its reconnect delays from the injected random source", async () => {
    const draws = [];
    const random = () => {
      draws.push(1);
      return 0;
    };
    const c = new Client("ws://127.0.0.1:9/ws", {
      WebSocket: scripted(() => ({ open: false })),
      backoff: { initial: 40, max: 100, factor: 2, jitter: 0.5 },
      random,
    });
    const delays = [];
    c.on("disconnected", (e) => delays.push(e.delay));
    c.connect();
    await within(
      new Promise((r) => c.on("disconnected", () => delays.length >= 4 && r())),
      5000,
      "four failed attempts",
    );
    c.close();
    assert.deepEqual(delays.slice(0, 4), [40, 80, 100, 100]);
    assert.ok(draws.length >= 4);
  });
});

describe("offsets", () => {
  test("the offset just before another: the sequence one less, or the millisecond before at the largest", () => {
    assert.equal(offsetBefore("10-3"), "10-2");
    assert.equal(offsetBefore("10-0"), "9-18446744073709551615");
    assert.equal(compareOffsets(offsetBefore("9007199254740993-0"), "9007199254740993-0"), -1);
    assert.equal(offsetBefore("0-0"), null);
    assert.throws(() => offsetBefore("x"), TypeError);
  });

  test("order as (ms, seq) pairs, not as strings", () => {
    assert.equal(compareOffsets("9-0", "10-0"), -1);
    assert.equal(compareOffsets("10-0", "9-0"), 1);
    assert.equal(compareOffsets("5-10", "5-9"), 1);
    assert.equal(compareOffsets("5-2", "5-2"), 0);
    // Beyond 2^53: still exact.
    assert.equal(compareOffsets("18446744073709551615-1", "18446744073709551615-0"), 1);
    assert.equal(compareOffsets("9007199254740993-0", "9007199254740992-0"), 1);
    assert.deepEqual(parseOffset("1732000000000-7"), { ms: 1732000000000n, seq: 7n });
    for (const bad of ["", "1", "1-", "-1", "a-1", "1-2-3", " 1-2", "18446744073709551616-0"]) {
      assert.equal(parseOffset(bad), null, bad);
    }
    assert.throws(() => compareOffsets("x", "1-0"), TypeError);
  });

  test("the tracker drops what is at or before the last offset, per pair order", () => {
    const t = new OffsetTracker();
    const seen = ["9-0", "10-0", "10-0", "9-5", "10-1", "100-0", "99-99", "100-0", "101-0"].filter((o) => t.accept(o));
    assert.deepEqual(seen, ["9-0", "10-0", "10-1", "100-0", "101-0"]);
    assert.equal(t.last, "101-0");
    // Publications without an offset (topics without history) always pass and move nothing.
    assert.equal(t.accept(null), true);
    assert.equal(t.accept(undefined), true);
    assert.equal(t.last, "101-0");
    // A reset (a subscribe reply) may move the position back: the server's history restarted.
    t.reset("5-0");
    assert.equal(t.accept("6-0"), true);
  });
});

describe("binary publications", () => {
  test("the example of docs/protocol.md decodes", () => {
    const hex = "01 04 6e 65 77 73 0f 31 37 39 36 31 39 36 39 31 34 33 39 34 2d 30 03 65 75 72 41 42";
    const frame = Uint8Array.from(hex.split(" ").map((h) => parseInt(h, 16)));
    const p = decodeBinaryPublication(frame);
    assert.equal(p.topic, "news");
    assert.equal(p.offset, "1796196914394-0");
    assert.equal(p.key, "eur");
    assert.deepEqual([...p.data], [0x41, 0x42]);
  });

  test("no offset, no key, empty payload; round trip", () => {
    const f = encodeBinaryPublication({ topic: "t", data: new Uint8Array() });
    assert.deepEqual([...f], [1, 1, 0x74, 0, 0]);
    assert.deepEqual(decodeBinaryPublication(f), { topic: "t", offset: null, key: null, data: new Uint8Array() });
    const g = encodeBinaryPublication({ topic: "a/b", offset: "1-2", key: "k", data: Uint8Array.of(0, 255) });
    const d = decodeBinaryPublication(g);
    assert.deepEqual({ ...d, data: [...d.data] }, { topic: "a/b", offset: "1-2", key: "k", data: [0, 255] });
  });

  test("unknown first bytes are ignored; truncated frames are errors", () => {
    assert.equal(decodeBinaryPublication(Uint8Array.of(2, 1, 0x74)), null);
    assert.equal(decodeBinaryPublication(new Uint8Array()), null);
    assert.throws(() => decodeBinaryPublication(Uint8Array.of(1)), TypeError);
    assert.throws(() => decodeBinaryPublication(Uint8Array.of(1, 5, 0x74)), TypeError);
    assert.throws(() => decodeBinaryPublication(Uint8Array.of(1, 1, 0x74, 3, 0x31)), TypeError);
    assert.throws(() => decodeBinaryPublication(Uint8Array.of(1, 0, 0, 0)), TypeError);
  });
});

// ---- a scripted WebSocket ------------------------------------------------------------------

/**
 * A WebSocket class whose instances are scripted by `behave(socket, index)`:
 * `{open: false}` fails the attempt, `{protocol}` answers that subprotocol, and the test
 * drives the rest through `sockets` (frames sent, `deliver`, `drop`).
 */
function scripted(behave) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.readyState = 0;
      this.protocol = "";
      this.binaryType = "blob";
      this.onopen = this.onclose = this.onmessage = this.onerror = null;
      const plan = behave(this, sockets.length) ?? {};
      sockets.push(this);
      setTimeout(() => {
        if (plan.open === false) {
          this.readyState = 3;
          this.onerror?.({});
          this.onclose?.({ code: 1006, reason: "" });
          return;
        }
        this.readyState = 1;
        this.protocol = plan.protocol ?? "stratus.v1";
        this.onopen?.({});
      }, 0);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(data));
      this.onsent?.(JSON.parse(data));
    }
    close() {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code: 1000, reason: "" }), 0);
    }
    deliver(message) {
      this.onmessage?.({ data: typeof message === "string" || message instanceof ArrayBuffer ? message : JSON.stringify(message) });
    }
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  FakeWebSocket.sockets = sockets;
  return FakeWebSocket;
}

function sentOp(socket, op) {
  return new Promise((resolve) => {
    const found = socket.sent.find((f) => f.op === op);
    if (found) return resolve(found);
    const prev = socket.onsent;
    socket.onsent = (f) => {
      prev?.(f);
      if (f.op === op) resolve(f);
    };
  });
}

describe("client state machine (scripted WebSocket)", () => {
  test("resubscribes with since = the last offset delivered, drops duplicates, keeps order", async () => {
    const WS = scripted(() => ({}));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS, backoff: { initial: 1, max: 5 } });
    await within(c.connect(), 2000, "connect");
    const s0 = WS.sockets[0];
    assert.deepEqual(s0.protocols, ["stratus.v1"]);
    const sub = c.subscribe("t");
    const got = [];
    sub.on("message", (m) => got.push(m.offset));
    const cmd = await within(sentOp(s0, "subscribe"), 2000, "subscribe sent");
    assert.deepEqual(cmd, { id: cmd.id, op: "subscribe", topic: "t" });
    s0.deliver({ type: "reply", id: cmd.id, op: "subscribe", topic: "t", offset: "5-0", recovering: false });
    assert.equal((await sub.ready).offset, "5-0");
    assert.equal(sub.state, "subscribed");
    for (const o of ["6-0", "10-0", "10-0", "9-0", "10-1"]) s0.deliver({ type: "pub", topic: "t", data: o, offset: o });
    assert.deepEqual(got, ["6-0", "10-0", "10-1"]);
    // An offset at or before where the subscription started is a duplicate too.
    s0.deliver({ type: "pub", topic: "t", data: "old", offset: "4-0" });
    assert.deepEqual(got, ["6-0", "10-0", "10-1"]);

    s0.drop(1006);
    assert.equal(sub.state, "subscribing");
    await within(next(c, "connected"), 2000, "reconnect");
    const s1 = WS.sockets[1];
    const again = await within(sentOp(s1, "subscribe"), 2000, "resubscribe sent");
    assert.equal(again.since, "10-1");
    s1.deliver({ type: "reply", id: again.id, op: "subscribe", topic: "t", offset: "10-1", recovering: true });
    // The server replays from the history; an overlap (as from another node) is dropped.
    for (const o of ["10-0", "10-1", "11-0"]) s1.deliver({ type: "pub", topic: "t", data: o, offset: o });
    assert.deepEqual(got, ["6-0", "10-0", "10-1", "11-0"]);
    assert.equal(sub.offset, "11-0");
    c.close();
  });

  test("a subscribe reply older than the last offset (a restarted server) moves the position back", async () => {
    const WS = scripted(() => ({}));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS, backoff: { initial: 1, max: 5 } });
    await c.connect();
    const sub = c.subscribe("t", { since: "100-0" });
    const cmd = await sentOp(WS.sockets[0], "subscribe");
    assert.equal(cmd.since, "100-0");
    const events = [];
    sub.on("subscribed", (r) => events.push(["subscribed", r.offset]));
    sub.on("gap", () => events.push(["gap"]));
    sub.on("message", (m) => events.push(["message", m.offset]));
    // In one read, as the server sends them: the reply, the gap, a publication after the
    // reply's offset but before the `since` sent. The reply must take effect before the
    // frames after it (no microtask in between).
    WS.sockets[0].deliver({ type: "reply", id: cmd.id, op: "subscribe", topic: "t", offset: "0-0", recovering: false });
    WS.sockets[0].deliver({ type: "gap", topic: "t", reason: "the offset is newer than anything in the topic's history" });
    WS.sockets[0].deliver({ type: "pub", topic: "t", data: "x", offset: "50-0" });
    assert.deepEqual(events, [["subscribed", "0-0"], ["gap"], ["message", "50-0"]]);
    c.close();
  });

  test("an in-flight command rejects with `disconnected`; queued ones go out on reconnect", async () => {
    const WS = scripted(() => ({}));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS, backoff: { initial: 30, max: 30, jitter: 0 } });
    await c.connect();
    const inflight = c.ping();
    await sentOp(WS.sockets[0], "ping");
    WS.sockets[0].drop(1006);
    await assert.rejects(inflight, (e) => e instanceof StratusError && e.code === "disconnected" && e.op === "ping");
    assert.equal(c.state, "connecting");
    const queued = c.history("t", { limit: 3 });
    assert.equal(c.queued, 1);
    await next(c, "connected");
    const cmd = await sentOp(WS.sockets[1], "history");
    assert.deepEqual(cmd, { id: cmd.id, op: "history", topic: "t", limit: 3 });
    WS.sockets[1].deliver({
      type: "reply",
      id: cmd.id,
      op: "history",
      topic: "t",
      gap: null,
      more: false,
      publications: [
        { data: { a: 1 }, offset: "1-0" },
        { data: "QUI=", encoding: "base64", key: "k", offset: "2-0" },
      ],
    });
    const page = await queued;
    assert.deepEqual(page.publications[0], { topic: "t", data: { a: 1 }, offset: "1-0", key: null, binary: false });
    assert.deepEqual([...page.publications[1].data], [0x41, 0x42]);
    assert.equal(page.publications[1].binary, true);
    assert.equal(c.queued, 0);
    c.close();
  });

  test("the offline queue and the table of waiting commands are capped (queue_full)", async () => {
    const WS = scripted(() => ({ open: false }));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS, maxOfflineQueue: 3, backoff: { initial: 1000, max: 1000 } });
    const results = [1, 2, 3, 4, 5].map(() => c.ping().then(() => "ok", (e) => e.code));
    assert.equal(c.queued, 3);
    c.close();
    assert.deepEqual(await Promise.all(results), ["closed", "closed", "closed", "queue_full", "queue_full"]);
    assert.equal(c.queued, 0);

    const WS2 = scripted(() => ({}));
    const d = new Client("ws://x.invalid/ws", { WebSocket: WS2, maxPending: 2 });
    await d.connect();
    const r = [1, 2, 3].map(() => d.ping().then(() => "ok", (e) => e.code));
    assert.equal(d.pending, 2);
    assert.equal(await r[2], "queue_full");
    d.close();
    assert.deepEqual(await Promise.all(r), ["closed", "closed", "queue_full"]);
    assert.equal(d.pending, 0);
  });

  test("a command without a reply rejects with `timeout` and leaves nothing behind", async () => {
    const WS = scripted(() => ({}));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS, commandTimeout: 50 });
    await c.connect();
    await assert.rejects(within(c.ping(), 5000, "timeout"), (e) => e.code === "timeout");
    assert.equal(c.pending, 0);
    // A late reply for it is ignored.
    WS.sockets[0].deliver({ type: "reply", id: WS.sockets[0].sent[0].id, op: "ping" });
    c.close();
    // Queued commands time out too.
    const d = new Client("ws://x.invalid/ws", { WebSocket: WS, commandTimeout: 50 });
    await assert.rejects(within(d.ping(), 5000, "timeout"), (e) => e.code === "timeout");
    assert.equal(d.queued, 0);
  });

  test("a server that does not answer stratus.v1 is refused (protocol_error) and retried", async () => {
    const WS = scripted((_, i) => (i === 0 ? { protocol: "" } : {}));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS, backoff: { initial: 1, max: 5 } });
    const err = next(c, "error", (e) => e.code === "protocol_error");
    await within(c.connect(), 2000, "the second attempt");
    await err;
    assert.equal(WS.sockets.length, 2);
    c.close();
  });

  test("an unreadable text frame (e.g. a failed inflate) is reported and the client reconnects", async () => {
    const WS = scripted(() => ({}));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS, backoff: { initial: 1, max: 5 } });
    await c.connect();
    const err = next(c, "error", (e) => e.code === "protocol_error");
    const again = next(c, "connected");
    WS.sockets[0].deliver("");
    assert.match((await err).message, /deflate/);
    await again;
    c.close();
  });

  test("tokens: in the query or as a bearer subprotocol; getToken says why it is called", async () => {
    const calls = [];
    const WS = scripted(() => ({}));
    const c = new Client("ws://x.invalid/ws?a=1", {
      WebSocket: WS,
      getToken: async (ctx) => {
        calls.push(ctx);
        return "tok-" + calls.length;
      },
      backoff: { initial: 1, max: 5 },
    });
    await c.connect();
    assert.equal(new URL(WS.sockets[0].url).searchParams.get("token"), "tok-1");
    assert.equal(new URL(WS.sockets[0].url).searchParams.get("a"), "1");
    WS.sockets[0].drop(1008, "token expired");
    await next(c, "connected");
    assert.deepEqual(calls, [{ reason: "connect" }, { reason: "expired" }]);
    // A refresh notice: getToken, then the refresh command.
    WS.sockets[1].deliver({ type: "refresh", expires: 123 });
    const cmd = await within(sentOp(WS.sockets[1], "refresh"), 2000, "refresh sent");
    assert.deepEqual(calls[2], { reason: "refresh", expires: 123 });
    assert.equal(cmd.token, "tok-3");
    const refreshed = next(c, "refreshed");
    WS.sockets[1].deliver({ type: "reply", id: cmd.id, op: "refresh", expires: 999 });
    assert.equal((await refreshed).expires, 999);
    c.close();

    const WS2 = scripted(() => ({}));
    const d = new Client("ws://x.invalid/ws", { WebSocket: WS2, tokenIn: "protocol", protocols: ["x"], getToken: () => "jwt" });
    await d.connect();
    assert.deepEqual(WS2.sockets[0].protocols, ["stratus.v1", "x", "bearer.jwt"]);
    assert.equal(new URL(WS2.sockets[0].url).searchParams.get("token"), null);
    d.close();
  });

  test("presence and occupancy pushes become join/leave/presence/occupancy events", async () => {
    // (Wire format only: the server does not have presence yet, so nothing runs against it.)
    const WS = scripted(() => ({}));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS });
    await c.connect();
    const sub = c.subscribe("room");
    const events = [];
    sub.on("join", (m) => events.push(["join", m.client]));
    sub.on("leave", (m) => events.push(["leave", m.client]));
    sub.on("presence", (n) => events.push(["presence", n.joins.length, n.leaves.length]));
    sub.on("occupancy", (n) => events.push(["occupancy", n.connections, n.users]));
    const a = { client: "a", user: "u1", info: null };
    const b = { client: "b", user: null, info: { x: 1 } };
    WS.sockets[0].deliver({ type: "presence", topic: "room", joins: [a, b], leaves: [a] });
    WS.sockets[0].deliver({ type: "occupancy", topic: "room", connections: 3, users: 2 });
    assert.deepEqual(events, [["presence", 2, 1], ["join", "a"], ["join", "b"], ["leave", "a"], ["occupancy", 3, 2]]);
    c.close();
  });

  test("an error without an id, unknown types and unknown binary frames do not break anything", async () => {
    const WS = scripted(() => ({}));
    const c = new Client("ws://x.invalid/ws", { WebSocket: WS });
    await c.connect();
    const sub = c.subscribe("t");
    const got = [];
    sub.on("message", (m) => got.push(m));
    const err = next(c, "error");
    WS.sockets[0].deliver({ type: "error", id: null, op: null, topic: null, code: "bad_request", message: "not a command" });
    assert.equal((await err).code, "bad_request");
    WS.sockets[0].deliver({ type: "future-thing", topic: "t" });
    WS.sockets[0].deliver(Uint8Array.of(9, 9).buffer);
    WS.sockets[0].deliver(encodeBinaryPublication({ topic: "t", data: Uint8Array.of(7) }).slice().buffer);
    assert.equal(got.length, 1);
    assert.equal(got[0].binary, true);
    assert.deepEqual([...got[0].data], [7]);
    assert.equal(c.state, "connected");
    c.close();
  });

  test("publish checks its body before sending", async () => {
    const c = new Client("ws://x.invalid/ws", { WebSocket: scripted(() => ({})) });
    for (const body of [undefined, null, "x", {}, { data: 1, text: "a" }, { text: 5 }, { data: null }]) {
      await assert.rejects(c.publish("t", body), (e) => e.code === "invalid_argument", JSON.stringify(body));
    }
    assert.equal(c.queued, 0);
    assert.throws(() => c.subscribe("t", { since: "yesterday" }), (e) => e.code === "invalid_argument");
    assert.throws(() => new Client("ftp://x/ws"), (e) => e.code === "invalid_argument");
  });
});
