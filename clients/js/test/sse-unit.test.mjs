// Unit tests of the Server-Sent Events transport without a server: the text/event-stream
// parser (a stream cut at every position, CR/LF/CRLF line ends split across chunks,
// multi-line data, comments, the BOM, the cap), and the client driven through a scripted
// fetch and a scripted WebSocket (the fallback order and when the backoff applies, the
// kept transport, receive_only, HTTP refusals, the idle timeout, one reopen for many
// subscription changes, resuming from the newest offset, the cap on what it holds).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Client, EventStreamParser, EventStreamTooLarge, SDK_CODES } from "../dist/index.js";
import { next, until, within } from "./harness.mjs";

// ---- the parser ------------------------------------------------------------------------

/** Every event of `chunks`, fed in order. */
function parse(chunks, parser = new EventStreamParser()) {
  const out = [];
  for (const c of chunks) out.push(...parser.push(c));
  return out;
}

const STREAM =
  "\uFEFF: a comment first\r\n" +
  "event: news\r\n" +
  "id: 1732000000000-0\r\n" +
  "data: hello\r\n" +
  "\r\n" +
  ": heartbeat\n\n" +
  "event: t\n" +
  "data: {\n" +
  'data: "a": 1\n' +
  "data: }\n" +
  "\n" +
  "event: cr\r" +
  "data:  two spaces, one kept\r" +
  "data:no space\r" +
  "\r" +
  "data\n" + // a field without a colon: empty data
  "\n" +
  "event: no-data\n" + // no data line: nothing dispatched
  "id: 5-5\n" +
  "\n" +
  "event: mixed\r\n" +
  "retry: 1000\n" +
  "unknown: field\r" +
  "data: x\uFEFFy\n" + // a BOM inside the stream is data
  "data: \n" +
  "\r\n" +
  "event: cut\n" +
  "data: never ended"; // no blank line: not dispatched

const EXPECTED = [
  { type: "news", data: "hello", id: "1732000000000-0" },
  { type: "t", data: '{\n"a": 1\n}', id: undefined },
  { type: "cr", data: " two spaces, one kept\nno space", id: undefined },
  { type: "message", data: "", id: undefined },
  { type: "mixed", data: "x\uFEFFy\n", id: undefined },
];

describe("text/event-stream parser", () => {
  test("events, ids, comments, multi-line data, CR, LF and CRLF line ends, the BOM", () => {
    const p = new EventStreamParser();
    assert.deepEqual(parse([STREAM], p), EXPECTED);
    assert.equal(p.comments, 2);
    assert.equal(p.buffered, "data: never ended".length + 0);
  });

  test("the same events however the stream is cut: every split point, every pair, one character at a time", () => {
    for (let i = 0; i <= STREAM.length; i++) {
      assert.deepEqual(parse([STREAM.slice(0, i), STREAM.slice(i)]), EXPECTED, `cut at ${i}`);
    }
    for (let i = 0; i <= STREAM.length; i += 3) {
      for (let j = i; j <= STREAM.length; j += 2) {
        assert.deepEqual(parse([STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)]), EXPECTED, `cut at ${i} and ${j}`);
      }
    }
    assert.deepEqual(parse([...STREAM]), EXPECTED, "one character at a time");
  });

  test("a CRLF split across chunks is one line end, not two (an empty line would dispatch)", () => {
    const events = parse(["event: a\r", "\ndata: 1\r", "\n\r", "\n"]);
    assert.deepEqual(events, [{ type: "a", data: "1", id: undefined }]);
    // A CR at a chunk's end followed by something else: a line end, and the next line starts.
    assert.deepEqual(parse(["data: 1\r", "\r"]), [{ type: "message", data: "1", id: undefined }]);
    assert.deepEqual(parse(["data: 1\r", "", "\n", "\n"]), [{ type: "message", data: "1", id: undefined }]);
  });

  test("the BOM is stripped only at the very start, even when it arrives alone", () => {
    assert.deepEqual(parse(["\uFEFF", "data: a\n\n"]), [{ type: "message", data: "a", id: undefined }]);
    assert.deepEqual(parse(["", "\uFEFFdata: a\n\n"]), [{ type: "message", data: "a", id: undefined }]);
    // A second BOM is the start of a field name that is not `data`: ignored, nothing dispatched.
    assert.deepEqual(parse(["\uFEFF\uFEFFdata: a\n\n"]), []);
  });

  test("the cap: a line, or an event's data, past it throws, and the parser stays failed", () => {
    const p = new EventStreamParser(64);
    assert.deepEqual(p.push("data: " + "a".repeat(50) + "\n\n").length, 1);
    assert.throws(() => {
      for (let i = 0; i < 10; i++) p.push("b".repeat(10)); // no line end: held, until past 64
    }, EventStreamTooLarge);
    assert.throws(() => p.push("\n\n"), EventStreamTooLarge);
    assert.equal(p.buffered, 0);

    // Many short data lines of one event add up.
    const q = new EventStreamParser(64);
    assert.throws(() => {
      for (let i = 0; i < 20; i++) q.push("data: 12345\n");
    }, EventStreamTooLarge);

    // One long line that arrives whole is measured too.
    assert.throws(() => new EventStreamParser(64).push("data: " + "c".repeat(100) + "\n\n"), EventStreamTooLarge);
    // Under the cap, however it is cut, nothing is held after the event.
    const r = new EventStreamParser(64);
    for (let i = 0; i < 1000; i++) {
      assert.equal(r.push("data: 0123456789\n").length, 0);
      assert.equal(r.push("\n").length, 1);
      assert.ok(r.buffered <= 64);
    }
    assert.throws(() => new EventStreamParser(0), RangeError);
  });
});

// ---- a scripted fetch and WebSocket -----------------------------------------------------

/** A 200 event stream whose body the test writes. */
function eventStream() {
  let controller;
  const body = new ReadableStream({
    start(c) {
      controller = c;
    },
  });
  const enc = new TextEncoder();
  return {
    response: new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } }),
    send(text) {
      controller.enqueue(typeof text === "string" ? enc.encode(text) : text);
    },
    end() {
      controller.close();
    },
    fail(error) {
      controller.error(error);
    },
  };
}

/**
 * A fetch whose answers `answer(call, index)` scripts: a Response (or a promise of one),
 * or a thrown error. Each call records its URL, its options and whether it was aborted;
 * an abort errors the body the test writes, as a real fetch does.
 */
function scriptedFetch(answer) {
  const calls = [];
  const f = async (url, init = {}) => {
    const call = { url: new URL(url), init, aborted: false, stream: null };
    calls.push(call);
    init.signal?.addEventListener("abort", () => {
      call.aborted = true;
      try {
        call.stream?.fail(new DOMException("aborted", "AbortError"));
      } catch {
        // already closed
      }
    });
    f.waiters.splice(0).forEach((w) => w());
    const answered = await answer(call, calls.length - 1);
    if (answered && typeof answered.send === "function") {
      call.stream = answered;
      return answered.response;
    }
    return answered;
  };
  f.calls = calls;
  f.waiters = [];
  /** Resolves once there are `n` calls. */
  f.called = (n) =>
    within(
      new Promise((resolve) => {
        const check = () => (calls.length >= n ? resolve(calls[n - 1]) : f.waiters.push(check));
        check();
      }),
      3000,
      `fetch call ${n}`,
    );
  return f;
}

const topicless = (status = 400) => new Response("an event stream needs at least one topic (?topic=...)", { status });
const refused = (status, text = "no") => new Response(text, { status });
const topics = (call) => call.url.searchParams.getAll("topic");

/** A WebSocket class that never opens (a proxy that refuses upgrades), or opens when `opens(i)` says so. */
function scriptedWebSocket(opens = () => false) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.protocol = "";
      this.sent = [];
      this.onopen = this.onclose = this.onmessage = this.onerror = null;
      const open = opens(sockets.length);
      sockets.push(this);
      setTimeout(() => {
        if (!open) {
          this.readyState = 3;
          this.onerror?.({});
          this.onclose?.({ code: 1006, reason: "" });
          return;
        }
        this.readyState = 1;
        this.protocol = "stratus.v1";
        this.onopen?.({});
      }, 0);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.readyState = 3;
    }
    drop() {
      this.readyState = 3;
      this.onclose?.({ code: 1006, reason: "" });
    }
  }
  FakeWebSocket.sockets = sockets;
  return FakeWebSocket;
}

const FAST = { initial: 20, max: 40, factor: 2, jitter: 0 };

/** A client that can only use SSE, with a scripted fetch. */
function sseClient(fetch, options = {}) {
  return new Client("ws://x.test/ws", { transports: ["sse"], fetch, backoff: FAST, ...options });
}

/** A client over SSE whose every request is answered with a new scripted event stream. */
function streamingClient(options = {}) {
  const streams = [];
  const fetch = scriptedFetch(() => {
    const s = eventStream();
    streams.push(s);
    return s;
  });
  return { streams, fetch, c: sseClient(fetch, options) };
}

describe("client over SSE (scripted fetch)", () => {
  test("the SSE URL comes from the WebSocket URL; options are checked", () => {
    assert.equal(new Client("ws://h:1/ws").sseUrl, "http://h:1/sse");
    assert.equal(new Client("wss://h/a/ws?x=1#f").sseUrl, "https://h/a/sse");
    assert.equal(new Client("ws://h").sseUrl, "http://h/sse");
    assert.equal(new Client("ws://h/ws", { sseUrl: "https://other/events?k=v" }).sseUrl, "https://other/events?k=v");
    for (const transports of [[], ["sse", "sse"], ["http"], "sse"]) {
      assert.throws(() => new Client("ws://h/ws", { transports }), (e) => e.code === "invalid_argument", JSON.stringify(transports));
    }
    assert.throws(() => new Client("ws://h/ws", { sseUrl: "ws://h/sse" }), (e) => e.code === "invalid_argument");
    assert.throws(() => new Client("ws://h/ws", { sseIdleTimeout: -1 }), (e) => e.code === "invalid_argument");
    assert.ok(SDK_CODES.includes("receive_only"));
  });

  test("fallback: a WebSocket that fails moves on at once; SSE is confirmed (HTTP answers, a second WebSocket fails) before it is used", async () => {
    const WS = scriptedWebSocket();
    const fetch = scriptedFetch(() => topicless());
    const c = new Client("ws://x.test/ws", { WebSocket: WS, fetch, backoff: { initial: 5000, max: 5000 } });
    const seen = [];
    c.on("transport", (t) => seen.push(["transport", t]));
    c.on("connected", (e) => seen.push(["connected", e.transport, e.url, e.protocol]));
    c.on("disconnected", (e) => seen.push(["disconnected", e.delay]));
    const errors = [];
    c.on("error", (e) => errors.push(e.code));
    const queued = c.publish("t", { text: "x" }); // made while connecting: queued, then refused
    await within(c.connect(), 2000, "connect over SSE");
    assert.equal(c.transport, "sse");
    assert.equal(c.state, "connected");
    assert.deepEqual(seen, [
      ["transport", "sse"],
      ["connected", "sse", "http://x.test/sse", ""],
    ]);
    assert.equal(WS.sockets.length, 2, "a WebSocket, then one more after the server answered HTTP");
    assert.equal(fetch.calls.length, 1, "one topic-less request: no stream without a subscription");
    assert.deepEqual(topics(fetch.calls[0]), []);
    assert.deepEqual(errors, ["transport", "transport"]);
    await assert.rejects(queued, (e) => e.code === "receive_only" && e.op === "publish");
    c.close();
  });

  test("the backoff delay comes after the whole list failed, once per round", async () => {
    const WS = scriptedWebSocket();
    const fetch = scriptedFetch(() => {
      throw new TypeError("fetch failed");
    });
    const c = new Client("ws://x.test/ws", { WebSocket: WS, fetch, backoff: { initial: 30, max: 60, jitter: 0 } });
    const delays = [];
    c.on("disconnected", (e) => delays.push([e.delay, WS.sockets.length, fetch.calls.length]));
    c.connect();
    await until(() => delays.length >= 3, 3000, "three rounds");
    c.close();
    assert.deepEqual(delays.slice(0, 3), [
      [30, 1, 1],
      [60, 2, 2],
      [60, 3, 3],
    ]);
  });

  test("a kept transport is tried first on reconnect; when it fails to open, the list starts again from its head", async () => {
    const WS = scriptedWebSocket();
    let n = 0;
    const streams = [];
    const fetch = scriptedFetch((call) => {
      n++;
      if (topics(call).length === 0) return topicless();
      if (n === 3) return refused(503, "draining"); // the kept SSE fails to open
      const s = eventStream();
      streams.push(s);
      return s;
    });
    const c = new Client("ws://x.test/ws", { WebSocket: WS, fetch, backoff: FAST });
    c.subscribe("a");
    await within(c.connect(), 2000, "connect");
    // ws, probe, ws, stream
    assert.equal(WS.sockets.length, 2);
    assert.deepEqual(fetch.calls.map(topics), [[], ["a"]]);
    const errors = [];
    c.on("error", (e) => errors.push(e.code));
    streams[0].end(); // the stream drops
    await within(next(c, "connected"), 3000, "reconnected");
    // SSE first (kept): refused; then, after the backoff, from the head: a WebSocket
    // (fails), then SSE, confirmed again (probe, one more WebSocket), then the stream.
    assert.deepEqual(errors, ["unavailable", "transport", "transport"]);
    assert.equal(WS.sockets.length, 4);
    assert.deepEqual(fetch.calls.map(topics), [[], ["a"], ["a"], [], ["a"]]);
    assert.equal(c.transport, "sse");
    c.close();
  });

  test("subscriptions make one stream; changes in one go make one reopen, resuming each topic from its own position", async () => {
    const streams = [];
    const fetch = scriptedFetch((call) => {
      if (topics(call).length === 0) return topicless();
      const s = eventStream();
      streams.push(s);
      return s;
    });
    const c = sseClient(fetch);
    await within(c.connect(), 2000, "connect");
    assert.equal(fetch.calls.length, 1);
    const a = c.subscribe("a");
    const b = c.subscribe("b");
    const d = c.subscribe("d");
    await fetch.called(2);
    const [ra, rb] = await within(Promise.all([a.ready, b.ready]), 2000, "subscribed");
    assert.deepEqual(topics(fetch.calls[1]), ["a", "b", "d"]);
    assert.deepEqual(fetch.calls[1].url.searchParams.getAll("since"), ["$", "$", "$"], "one per topic: live");
    assert.equal(ra.offset, null);
    assert.equal(rb.op, "subscribe");
    assert.equal(a.state, "subscribed");
    assert.deepEqual(fetch.calls[1].init.headers, undefined, "no headers: a CORS simple request");
    assert.equal(fetch.calls[1].init.credentials, "include", "cookies go along, as with a WebSocket");

    const got = [];
    for (const s of [a, b, d]) s.on("message", (m) => got.push([m.topic, m.data, m.offset]));
    streams[0].send("event: a\nid: 100-0\ndata: {\"n\":1}\n\nevent: b\nid: 200-0\ndata: two\n\n");
    streams[0].send("event: d\ndata: no history\n\n");
    await until(() => got.length === 3, 2000, "three publications");

    // Two changes in one go: one reopen. b resumes from its own offset; d, carried but
    // with no offset of its own, from just before the newest delivered on any topic (it
    // missed nothing until then); e, new, live.
    void a.unsubscribe();
    const e = c.subscribe("e");
    await fetch.called(3);
    assert.ok(fetch.calls[1].aborted, "the old stream is closed");
    assert.deepEqual(topics(fetch.calls[2]), ["b", "d", "e"]);
    assert.deepEqual(fetch.calls[2].url.searchParams.getAll("since"), ["200-0", "199-18446744073709551615", "$"]);
    await within(e.ready, 2000, "e subscribed");
    assert.equal(b.state, "subscribed");
    // What the resume repeats is dropped; what is new arrives.
    streams[1].send("event: b\nid: 200-0\ndata: two\n\nevent: b\nid: 300-0\ndata: three\n\nevent: a\nid: 301-0\ndata: gone\n\n");
    await until(() => got.length === 4, 2000, "the fourth");
    assert.deepEqual(got, [
      ["a", { n: 1 }, "100-0"],
      ["b", "two", "200-0"],
      ["d", "no history", null],
      ["b", "three", "300-0"],
    ]);
    // Unsubscribing everything closes the stream; the client stays connected.
    const done = [b.unsubscribe(), c.unsubscribe("d"), e.unsubscribe()];
    await assert.rejects(c.unsubscribe("nope"), (err) => err.code === "not_subscribed");
    assert.equal((await Promise.all(done))[1].op, "unsubscribe");
    await until(() => fetch.calls[2].aborted, 2000, "the stream closed");
    assert.equal(fetch.calls.length, 3);
    assert.equal(c.state, "connected");
    c.close();
  });

  test("the first stream resumes each topic from the `since` it asked for, and each starts after its own", async () => {
    const { streams, fetch, c } = streamingClient();
    const a = c.subscribe("a", { since: "5-0" });
    const b = c.subscribe("b", { since: "9-0" });
    await within(c.connect(), 2000, "connect");
    assert.deepEqual(fetch.calls[0].url.searchParams.getAll("since"), ["5-0", "9-0"]);
    assert.equal((await a.ready).recovering, true);
    const got = [];
    for (const s of [a, b]) s.on("message", (m) => got.push(m.offset));
    streams[0].send("event: a\nid: 5-0\ndata: x\n\nevent: b\nid: 9-0\ndata: x\n\nevent: a\nid: 10-0\ndata: x\n\nevent: b\nid: 11-0\ndata: x\n\n");
    await until(() => got.length === 2, 2000, "two");
    assert.deepEqual(got, ["10-0", "11-0"]);
    assert.equal(a.offset, "10-0");
    c.close();
  });

  test("commands are refused at once with receive_only while connected (or reconnecting) over SSE", async () => {
    const fetch = scriptedFetch(() => topicless());
    const c = sseClient(fetch, { getToken: () => "t" });
    await within(c.connect(), 2000, "connect");
    const calls = [
      c.publish("t", { data: 1 }),
      c.history("t"),
      c.presence("t"),
      c.occupancy("t"),
      c.ping(),
      c.refresh("x"),
      c.refresh(),
    ];
    for (const p of calls) await assert.rejects(p, (e) => e.code === "receive_only" && !e.retryable);
    assert.equal(c.queued, 0);
    assert.equal(c.pending, 0);
    // Argument checks come first.
    await assert.rejects(c.publish("t", {}), (e) => e.code === "invalid_argument");
    c.close();
  });

  test("HTTP refusals: 401 is an expired token (getToken says so next), 503 backs off, 403 on an added topic fails that subscription only", async () => {
    const reasons = [];
    let n = 0;
    const streams = [];
    const fetch = scriptedFetch((call) => {
      n++;
      if (n === 1) return refused(401, "token expired");
      if (n === 2) return refused(503, "draining");
      if (topics(call).includes("secret")) return refused(403, "the token does not allow this topic");
      const s = eventStream();
      streams.push(s);
      return s;
    });
    const c = sseClient(fetch, { getToken: (ctx) => (reasons.push(ctx.reason), `tok${reasons.length}`) });
    const events = [];
    c.on("error", (e) => events.push(["error", e.code]));
    c.on("disconnected", (e) => events.push(["disconnected", e.code, e.reason]));
    const ok = c.subscribe("ok");
    await within(c.connect(), 3000, "connect");
    assert.deepEqual(events, [
      ["error", "invalid_token"],
      ["disconnected", 1008, "token expired"],
      ["error", "unavailable"],
      ["disconnected", 1006, "HTTP 503"],
    ]);
    assert.deepEqual(reasons, ["connect", "expired", "connect"]);
    assert.equal(fetch.calls[2].url.searchParams.get("token"), "tok3");
    await within(ok.ready, 2000, "ok subscribed");

    const secret = c.subscribe("secret");
    const failed = await within(secret.ready.then(() => null, (e) => e), 2000, "secret refused");
    assert.equal(failed.code, "forbidden");
    assert.match(failed.message, /does not allow/);
    assert.equal(secret.state, "failed");
    await fetch.called(5); // reopened with what was there before
    assert.deepEqual(topics(fetch.calls[4]), ["ok"]);
    await until(() => streams.length === 2, 2000, "the stream again");
    assert.equal(c.state, "connected");
    assert.equal(ok.state, "subscribed");
    assert.equal(c.subscriptions.has("secret"), false);
    c.close();
  });

  test("an idle stream (not even a heartbeat) is dropped and reopened; heartbeats keep it", async () => {
    const { streams, fetch, c } = streamingClient({ sseIdleTimeout: 150 });
    const sub = c.subscribe("t");
    await within(c.connect(), 2000, "connect");
    const errors = [];
    c.on("error", (e) => errors.push(e.code));
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 50));
      streams[0].send(": heartbeat\n\n");
    }
    assert.equal(fetch.calls.length, 1, "heartbeats kept it open");
    const states = [];
    sub.on("state", (s) => states.push(s));
    await fetch.called(2);
    assert.deepEqual(errors, ["timeout"]);
    await until(() => states.length >= 2, 2000, "resubscribed");
    assert.deepEqual(states.slice(0, 2), ["subscribing", "subscribed"]);
    c.close();
  });

  test("notices, presence and occupancy are routed by their topic; a topic named like a notice still gets its publications", async () => {
    const { streams, fetch, c } = streamingClient({ sseParseJson: false });
    const room = c.subscribe("room");
    const gapTopic = c.subscribe("gap");
    await within(c.connect(), 2000, "connect");
    const events = [];
    room.on("gap", (g) => events.push(["gap", g.reason]));
    room.on("join", (m) => events.push(["join", m.client]));
    room.on("occupancy", (o) => events.push(["occupancy", o.connections]));
    room.on("message", (m) => events.push(["message", m.data]));
    room.on("unsubscribed", (u) => events.push(["unsubscribed", u.reason]));
    gapTopic.on("message", (m) => events.push(["gap-topic", m.data, m.offset]));
    const s = streams[0];
    s.send('event: gap\ndata: {"type":"gap","topic":"room","reason":"lost"}\n\n');
    s.send('event: presence\ndata: {"type":"presence","topic":"room","joins":[{"client":"c1","user":null,"info":null}],"leaves":[]}\n\n');
    s.send('event: occupancy\ndata: {"type":"occupancy","topic":"room","connections":3,"users":2}\n\n');
    s.send('event: room\nid: 7-0\ndata: {"kept":"as text"}\n\n'); // sseParseJson false: the string
    s.send('event: gap\nid: 8-0\ndata: {"type":"gap","topic":"room","reason":"x"}\n\n'); // an id: a publication on "gap"
    s.send('event: subscribed\ndata: {"type":"subscribed","topic":"other"}\n\n'); // a server-side subscribe: ignored
    // UTF-8 cut inside a character, across reads.
    const bytes = new TextEncoder().encode("event: room\ndata: é€\n\n");
    s.send(bytes.slice(0, 19));
    s.send(bytes.slice(19));
    s.send('event: unsubscribed\ndata: {"type":"unsubscribed","topic":"room","reason":"unsubscribed by the server"}\n\n');
    await until(() => events.length === 7, 2000, "seven events");
    assert.deepEqual(events, [
      ["gap", "lost"],
      ["join", "c1"],
      ["occupancy", 3],
      ["message", '{"kept":"as text"}'],
      ["gap-topic", '{"type":"gap","topic":"room","reason":"x"}', "8-0"],
      ["message", "é€"],
      ["unsubscribed", "unsubscribed by the server"],
    ]);
    assert.equal(room.state, "unsubscribed");
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(fetch.calls.length, 1, "the server already dropped the topic: no reopen");
    c.close();
  });

  test("a stream past the parser's cap (16 MiB) is a protocol_error and is reopened", async () => {
    const { streams, fetch, c } = streamingClient();
    c.subscribe("t");
    await within(c.connect(), 2000, "connect");
    const err = next(c, "error");
    const chunk = new TextEncoder().encode("x".repeat(1 << 20));
    streams[0].send(new TextEncoder().encode("data: "));
    for (let i = 0; i < 17; i++) streams[0].send(chunk);
    assert.equal((await err).code, "protocol_error");
    await fetch.called(2);
    assert.ok(fetch.calls[0].aborted);
    c.close();
  });

  test("a stream that does not open in connectTimeout is abandoned; close() aborts what is open", async () => {
    const fetch = scriptedFetch((call) => new Promise((_, reject) => call.init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")))));
    const c = sseClient(fetch, { connectTimeout: 50 });
    c.subscribe("t");
    const err = next(c, "error");
    c.connect();
    assert.equal((await err).code, "timeout");
    assert.ok(fetch.calls[0].aborted);
    await fetch.called(2);
    c.close();
    assert.ok(fetch.calls[1].aborted);
    assert.equal(c.state, "disconnected");
  });
});
