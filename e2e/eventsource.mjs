// Browser end-to-end test of the Server-Sent Events endpoint (docs/protocol.md section 21)
// with Chromium's own EventSource, no SDK: a page (e2e/pages/eventsource.html, served by a
// file server of the test's own, so another origin than the server's) opens
// `new EventSource("http://<server>/sse?topic=a&topic=b")` and the test checks that:
// - a server that does not allow the page's origin answers 403, and the page's EventSource
//   fires `error`, is CLOSED, and never opens (nor retries);
// - a server that allows it (--allowed-origins) answers with Access-Control-Allow-Origin,
//   and the page gets the publications of both topics as events named for their topic,
//   with the publication as data and its offset (Redis history on) as `lastEventId`;
// - when the server ends the stream (SIGTERM: a drain) and comes back on the same port
//   with the same Redis, the same EventSource reconnects by itself, sending the last id
//   it saw as Last-Event-ID, and gets what was published while it was away, then live
//   publications: every one of each topic exactly once, in order, no gap.
// Exits non-zero with the reason (and the server's last log lines) on any failure, and
// after 60 s in all; always stops the server, Redis, the file server and the browser.
//
// Usage: STRATUS_BIN=path/to/stratus node eventsource.mjs   (scripts/e2e.sh sets it up;
// redis-server must be installed: scripts/install-redis.sh)

import { get as httpGet } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  STEP_MS, adminPublish, check, expect, openPage, restartablePorts, run, serveFiles, sleep, startRedis, startServer, stopServer, until, untilReady, within,
} from "./harness.mjs";

const OVERALL_MS = 60_000;
const PAGES = path.join(path.dirname(fileURLToPath(import.meta.url)), "pages");

// The page's log (opens, errors, events) so far.
const log = (page) => page.evaluate(() => window.e2e.log);
const events = async (page) => (await log(page)).filter((entry) => entry.kind === "event");
const opens = async (page) => (await log(page)).filter((entry) => entry.kind === "open").length;

// Publishes `body` as text on `topic`; resolves to the publication as the page should
// see it. A stream of several topics resumes from one id, the last it saw, and each topic
// from that point in time (docs/protocol.md section 21): two topics' publications in the
// same millisecond could share an id, or order the other way, so each publication here
// gets a millisecond of its own.
async function publish(admin, topic, body) {
  await sleep(2);
  const answer = await adminPublish(admin, topic, body, "text/plain; charset=utf-8");
  check(typeof answer.offset === "string" && /^\d+-\d+$/.test(answer.offset), `the publish to ${topic} has an offset: ${JSON.stringify(answer)}`);
  return { type: topic, data: body, lastEventId: answer.offset };
}

// Waits until the page has received `expected.length` events, then checks they are
// exactly `expected` (type, data, lastEventId), in order.
async function received(page, what, expected) {
  await until(`the page receives ${what} (${expected.length} events)`, async () => (await events(page)).length >= expected.length);
  await sleep(200); // anything sent twice would be here by now
  const got = (await events(page)).map(({ type, data, lastEventId }) => ({ type, data, lastEventId }));
  check(JSON.stringify(got) === JSON.stringify(expected),
    `the page received ${what}, each once, in order:\n  expected ${JSON.stringify(expected)}\n  got      ${JSON.stringify(got)}`);
}

// The status and headers of a GET of /sse from `origin`, read by Node on a connection of
// its own that is closed right after (an idle connection left open would hold up the
// server's drain below until --drain-timeout).
function sseResponse(ws, query, origin) {
  const [host, port] = ws.split(":");
  return within(`GET /sse?${query}`, new Promise((resolve, reject) => {
    const req = httpGet({ host, port: Number(port), path: `/sse?${query}`, headers: { Origin: origin }, agent: false }, (res) => {
      resolve({ status: res.statusCode, headers: res.headers });
      req.destroy();
    });
    req.on("error", reject);
  }));
}

async function test() {
  const files = await serveFiles({ "/pages/": PAGES });
  const redis = await startRedis();
  const pageUrl = (ws, topics) => {
    const url = `http://${ws}/sse?${topics.map((t) => `topic=${t}`).join("&")}`;
    return `${files.origin}/pages/eventsource.html?${new URLSearchParams({ url, listen: topics.join(",") })}`;
  };

  // A server that allows no other origin than its own: 403, and the EventSource gives up.
  let addr = await startServer(["--workers", "1", "--history", "100"]);
  const refused = await sseResponse(addr.ws, "topic=a", files.origin);
  check(refused.status === 403, `an SSE request from ${files.origin}, not allowed, answered ${refused.status}`);
  check(!("access-control-allow-origin" in refused.headers), `the refusal allows no origin: ${JSON.stringify(refused.headers)}`);
  const { page: refusedPage } = await openPage();
  await refusedPage.goto(pageUrl(addr.ws, ["a"]));
  await expect("the refused page's EventSource fires error",
    refusedPage.waitForFunction(() => window.e2e?.log.some((entry) => entry.kind === "error")));
  await sleep(1_500); // a retry (there must be none) would come after ~0 to 3 s
  const refusedLog = await log(refusedPage);
  check(refusedLog.every((entry) => entry.kind === "error"), `the refused EventSource never opens nor gets an event: ${JSON.stringify(refusedLog)}`);
  check(refusedLog.length === 1 && refusedLog[0].readyState === 2, `one error, then CLOSED (2): ${JSON.stringify(refusedLog)}`);
  check(await refusedPage.evaluate(() => window.e2e.source.readyState) === 2, "the refused EventSource stays CLOSED");
  await refusedPage.close();
  await stopServer(addr, "SIGTERM");

  // The server with Redis history, allowing the page's origin.
  const args = ["--workers", "1", "--broker", redis.url, "--history", "1000", "--allowed-origins", files.origin,
    "--drain-timeout", "2"];
  // Ports a restart can take again (see restartablePorts).
  const ports = await restartablePorts();
  addr = await startServer(args, ports);
  await untilReady(addr.admin);
  const allowed = await sseResponse(addr.ws, "topic=a&topic=b", files.origin);
  check(allowed.status === 200 && allowed.headers["content-type"] === "text/event-stream",
    `an SSE request from the allowed ${files.origin} answered ${allowed.status} ${allowed.headers["content-type"]}`);
  check(allowed.headers["access-control-allow-origin"] === files.origin,
    `the stream allows the page's origin: Access-Control-Allow-Origin ${allowed.headers["access-control-allow-origin"]}`);

  const { page } = await openPage();
  const scriptErrors = [];
  page.on("pageerror", (err) => scriptErrors.push(err.message));
  const requests = []; // the page's requests of /sse, with their headers
  page.on("request", (request) => {
    if (new URL(request.url()).pathname === "/sse") requests.push(request.allHeaders());
  });
  await page.goto(pageUrl(addr.ws, ["a", "b"]));
  await expect("the page's EventSource opens", page.waitForFunction(() => window.e2e?.log.some((entry) => entry.kind === "open")));
  check((await log(page))[0].readyState === 1, "OPEN (1) at the open event");

  // Live publications of both topics: events named for their topic, id = offset.
  const expected = [];
  for (const [topic, body] of [["a", "a1"], ["b", "b1"], ["a", "a2 <b>x</b> & y"], ["b", "b2"], ["a", "a3"]]) {
    expected.push(await publish(addr.admin, topic, body));
  }
  await received(page, "five live publications of a and b", expected);
  const first = await Promise.all(requests);
  check(first.length === 1 && first[0].origin === files.origin, `one request of /sse, with the page's Origin: ${JSON.stringify(first)}`);
  check(!("last-event-id" in first[0]), `the first request has no Last-Event-ID: ${first[0]["last-event-id"]}`);
  const lastBefore = expected.at(-1).lastEventId;

  // The server ends the stream (a drain) and comes back on the same ports, same Redis.
  await stopServer(addr, "SIGTERM");
  await expect("the page's EventSource reports the end of the stream and reconnects (CONNECTING)",
    page.waitForFunction(() => window.e2e.log.some((entry) => entry.kind === "error" && entry.readyState === 0)));
  addr = await startServer(args, ports);
  await untilReady(addr.admin); // Redis reached: a few ms after "listening"
  // Published while the page is away (its EventSource waits ~3 s before reconnecting).
  for (const [topic, body] of [["b", "b3"], ["a", "a4"], ["b", "b4"]]) expected.push(await publish(addr.admin, topic, body));
  check(await opens(page) === 1, "these were published before the page reconnected");
  await expect("the same EventSource reopens by itself",
    page.waitForFunction(() => window.e2e.log.filter((entry) => entry.kind === "open").length === 2, null, { timeout: STEP_MS }));
  await until("the page's reconnect request is seen", () => requests.length >= 2);
  const again = await Promise.all(requests);
  check(again.length === 2, `two requests of /sse in all: ${again.length}`);
  check(again[1]["last-event-id"] === lastBefore,
    `the reconnect sends the last id seen as Last-Event-ID: ${again[1]["last-event-id"]}, expected ${lastBefore}`);
  check(again[1].origin === files.origin, `the reconnect has the page's Origin: ${again[1].origin}`);
  // Then live ones again.
  for (const [topic, body] of [["a", "a5"], ["b", "b5"]]) expected.push(await publish(addr.admin, topic, body));
  const publications = (list) => list.filter((event) => event.type === "a" || event.type === "b");
  await until(`the page receives all ${expected.length} publications`, async () => publications(await events(page)).length >= expected.length);
  await sleep(200); // anything sent twice would be here by now
  const got = (await events(page)).map(({ type, data, lastEventId }) => ({ type, data, lastEventId }));
  const text = (list) => list.map((e) => `${e.type}:${e.data}@${e.lastEventId}`).join(" ");
  for (const topic of ["a", "b"]) {
    const mine = (list) => list.filter((event) => event.type === topic);
    check(JSON.stringify(mine(got)) === JSON.stringify(mine(expected)),
      `every publication of ${topic}, those from while the page was away included, once, in order, id = offset:\n  expected ${text(mine(expected))}\n  got      ${text(mine(got))}`);
  }
  const notices = got.filter((event) => event.type !== "a" && event.type !== "b");
  check(notices.length === 0,
    `no notice (the history reaches back to Last-Event-ID ${lastBefore} on both topics): ${JSON.stringify(notices)}`);
  // Across topics the order is not checked: a replay sends each topic's missed
  // publications in turn (docs/protocol.md section 21 says what that means for a stream
  // that drops again during its replay).

  check(await page.evaluate(() => window.e2e.sources) === 1, "one EventSource (the browser reconnected it, the page did not)");
  const all = await log(page);
  check(all.filter((entry) => entry.kind === "error").length === 1, `one error (the end of the stream): ${JSON.stringify(all.filter((e) => e.kind !== "event"))}`);
  check(all.filter((entry) => entry.kind === "event").every((entry) => entry.origin === `http://${ports.ws}`),
    "every event's origin is the server's");
  check(scriptErrors.length === 0, `script errors in the page: ${scriptErrors.join(" | ")}`);
}

run("eventsource", test, OVERALL_MS);
