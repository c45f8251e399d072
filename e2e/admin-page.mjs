// Browser end-to-end test of the admin page (GET / on the admin listener): starts `stratus
// serve` on loopback with an admin token and HS256 token auth, drives Debian's Chromium
// headless through playwright-core, and checks that the page is served with its
// Content-Security-Policy and without data; that it shows 401 until the admin token is
// entered (and again once it is forgotten); that its numbers come from /metrics and move
// with traffic (connections as WebSocket subscribers come and go, publishes and deliveries
// per second while the test publishes, back to 0 after), with the busiest topics and
// their occupancy and this node in /nodes; that its publish form reaches a subscriber;
// and that it looks a user up (their connections) and disconnects them with the close
// code and reason chosen, which their sockets see. Also checks its Prometheus parsing and
// rate and quantile arithmetic on fixed input. Exits non-zero with the reason on any
// failure, and after 60 s in all; always stops the server and the browser.
//
// Usage: STRATUS_BIN=path/to/stratus node admin-page.mjs   (scripts/e2e.sh sets it up)

import { createHmac, randomBytes } from "node:crypto";
import { STEP_MS, check, expect, within, startServer, openPage, run } from "./harness.mjs";

const OVERALL_MS = 60_000;
const ADMIN_TOKEN = `e2e-admin-${randomBytes(12).toString("hex")}`;
const AUTH_SECRET = randomBytes(32).toString("hex");

// An HS256 JWT for user `sub`, allowed every topic, valid for ten minutes.
function jwt(sub) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, topics: ["*"], exp: Math.floor(Date.now() / 1000) + 600 })}`;
  return `${body}.${createHmac("sha256", AUTH_SECRET).update(body).digest("base64url")}`;
}

// A protocol v1 client of user `sub`, subscribed to `topics`, named `name`. It runs in
// `subs`, a browser page at the WebSocket listener's origin (Node 20's own WebSocket
// cannot read a second compressed message that ends with a final DEFLATE block, which
// RFC 7692 allows and Chromium reads). Resolves to { name, sub, state() }, where state()
// is what it received ({ pubs }) and how it closed ({ closed: { code, reason } or null }).
async function subscriber(subs, ws, name, sub, topics) {
  const url = `ws://${ws}/ws?token=${jwt(sub)}`;
  const answers = await within(`${name} connects and subscribes`, subs.evaluate(async ({ url, name, topics }) => {
    window.e2e ??= {};
    const socket = new WebSocket(url, "stratus.v1");
    const client = (window.e2e[name] = { socket, pubs: [], closed: null });
    const replies = new Map();
    socket.onclose = (event) => (client.closed = { code: event.code, reason: event.reason });
    socket.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "pub") client.pubs.push(msg);
      if (msg.type === "reply" || msg.type === "error") replies.get(msg.id)?.(msg);
    };
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = () => reject(new Error("the WebSocket failed"));
    });
    const answers = [];
    for (const [i, topic] of topics.entries()) {
      const reply = new Promise((resolve) => replies.set(i + 1, resolve));
      socket.send(JSON.stringify({ id: i + 1, op: "subscribe", topic }));
      answers.push(await reply);
    }
    return answers;
  }, { url, name, topics }));
  check(answers.every((a) => a.type === "reply"), `${name} subscribes: ${JSON.stringify(answers)}`);
  const state = () => subs.evaluate((name) => {
    const { pubs, closed } = window.e2e[name];
    return { pubs, closed };
  }, name);
  return { name, sub, state };
}

// Calls the admin API from the test (not the page), with the token unless `token` is null.
async function admin(addr, method, path, { body, type, token = ADMIN_TOKEN } = {}) {
  const headers = token === null ? {} : { Authorization: `Bearer ${token}` };
  if (type) headers["Content-Type"] = type;
  const response = await fetch(`http://${addr}${path}`, { method, headers, body, signal: AbortSignal.timeout(STEP_MS) });
  return { status: response.status, text: await response.text() };
}

// Waits until the page's figure `testid` (its raw value) equals `equals`, or is above
// `above`; resolves to it.
async function figure(page, testid, what, { equals, above }) {
  await expect(
    `the page shows ${what}`,
    page.waitForFunction(
      ({ testid, equals, above }) => {
        const raw = document.querySelector(`[data-testid="${testid}"]`)?.dataset.value;
        const value = raw ? Number(raw) : NaN;
        return equals !== undefined ? value === equals : value > above;
      },
      { testid, equals, above },
    ),
  );
  return Number(await page.getByTestId(testid).getAttribute("data-value"));
}

// Waits until the page's element `testid` has outcome (or state) `state`; resolves to its text.
async function settled(page, testid, state, what) {
  const selector = `[data-testid="${testid}"][data-outcome="${state}"], [data-testid="${testid}"][data-state="${state}"]`;
  await expect(`${what} (${testid} ${state})`, page.locator(selector).waitFor());
  return (await page.getByTestId(testid).textContent()) ?? "";
}

// The page's own arithmetic on fixed input: Prometheus text parsing (labels with escapes,
// +Inf), rates (none across a counter reset) and quantiles from histogram buckets.
async function arithmetic(page) {
  const results = await page.evaluate(() => {
    const before = parseMetrics([
      "# HELP x_total A counter.", "# TYPE x_total counter", "x_total 10",
      'h_bucket{le="0.001"} 0', 'h_bucket{le="0.01"} 0', 'h_bucket{le="+Inf"} 0',
    ].join("\n"));
    const after = parseMetrics([
      'x_total 40', 'y{a="q\\"uote",b="back\\\\slash"} 2.5 1700000000000', 'y{a="z"} 1',
      'h_bucket{le="0.001"} 50', 'h_bucket{le="0.01"} 100', 'h_bucket{le="+Inf"} 100',
    ].join("\n"));
    return {
      labels: after.get("y")[0].labels,
      sum: total(after, "y"),
      rate: rate(before, after, "x_total", 2),
      reset: rate(after, before, "x_total", 2),
      first: rate(undefined, after, "x_total", 0),
      p50: quantile(before, after, "h", 0.5),
      p99: quantile(before, after, "h", 0.99),
      none: quantile(after, after, "h", 0.5),
    };
  });
  check(results.labels.a === 'q"uote' && results.labels.b === "back\\slash", `labels: ${JSON.stringify(results.labels)}`);
  check(results.sum === 3.5, `sum of samples: ${results.sum}`);
  check(results.rate === 15 && results.reset === null && results.first === null, `rates: ${JSON.stringify(results)}`);
  check(Math.abs(results.p50 - 0.001) < 1e-9 && Math.abs(results.p99 - 0.0098200) < 1e-6, `quantiles: ${JSON.stringify(results)}`);
  check(results.none === null, "no observations: no quantile");
}

async function test() {
  const addr = await startServer([
    "--workers", "1", "--admin-token", ADMIN_TOKEN, "--auth", "hs256", "--auth-secret", AUTH_SECRET,
  ]);

  // The API refuses callers without the token; the page itself is served to anyone.
  for (const [method, path] of [["GET", "/metrics"], ["GET", "/topics"], ["GET", "/users/alice"], ["POST", "/publish/x"]]) {
    const answer = await admin(addr.admin, method, path, { token: null });
    check(answer.status === 401, `${method} ${path} without the token: ${answer.status}`);
  }
  const { page, errors } = await openPage();
  const response = await page.goto(`http://${addr.admin}/`);
  check(response?.status() === 200, `GET / answered ${response?.status()}`);
  const headers = response.headers();
  check(headers["content-type"] === "text/html; charset=utf-8", `content-type ${headers["content-type"]}`);
  const csp = headers["content-security-policy"] ?? "";
  check(csp.startsWith("default-src 'none'; script-src 'sha256-") && !csp.includes("unsafe"), `CSP: ${csp}`);
  check(headers["cache-control"] === "no-store", `cache-control ${headers["cache-control"]}`);

  let text = await settled(page, "api-status", "unauthorized", "the page shows the API's refusal before a token");
  check(text.startsWith("401 "), `refusal shown: ${text}`);
  await page.getByTestId("token").fill("not-the-token");
  await page.getByTestId("token-save").click();
  await settled(page, "api-status", "unauthorized", "a wrong token is refused");
  await page.getByTestId("token").fill(ADMIN_TOKEN);
  await page.getByTestId("token-save").click();
  await settled(page, "api-status", "ok", "the page reads the API with the token");
  check(await page.evaluate(() => location.search === "" && !document.body.innerHTML.includes(sessionStorage.getItem("stratus-admin-token"))),
    "the token is in neither the URL nor the page");
  await figure(page, "connections", "no connections yet", { equals: 0 });
  const node = JSON.parse((await admin(addr.admin, "GET", "/topics")).text).node;
  check((await page.getByTestId("node").textContent()) === `node ${node}`, "the page names the node");
  await expect("the page lists this node from /nodes",
    page.locator(`[data-testid="node-row"][data-node="${node}"]`).waitFor());
  check((await page.getByTestId("nodes-note").textContent())?.startsWith("1 node "), "one node");
  await arithmetic(page);

  // Subscribers: alice twice on topic A, bob on A and B.
  const base = `e2e-${process.pid}`;
  const [topicA, topicB] = [`${base}.a`, `${base}.b`];
  const { page: subs } = await openPage();
  await subs.goto(`http://${addr.ws}/`);
  const alice = [await subscriber(subs, addr.ws, "alice-1", "alice", [topicA]), await subscriber(subs, addr.ws, "alice-2", "alice", [topicA])];
  const bob = await subscriber(subs, addr.ws, "bob", "bob", [topicA, topicB]);
  await figure(page, "connections", "three connections", { equals: 3 });
  await figure(page, "topics", "two topics", { equals: 2 });
  await expect("the page lists the busiest topics with their occupancy",
    page.waitForFunction((expected) =>
      [...document.querySelectorAll('[data-testid="busiest-topic"]')].map((tr) => tr.innerText.replace(/\s+/g, " ").trim()).join(" | ") === expected,
    `${topicA} 3 2 | ${topicB} 1 1`));

  // Traffic: publishes to A (three recipients each) until the page has shown rates
  // over a poll; then the rates fall back to 0.
  let publishing = true;
  const published = (async () => {
    let n = 0;
    while (publishing) {
      const answer = await admin(addr.admin, "POST", `/publish/${topicA}`, { body: `{"n":${n++}}`, type: "application/json" });
      check(answer.status === 200, `publish: ${answer.status} ${answer.text}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return n;
  })();
  const deliveries = await figure(page, "deliveries", "deliveries per second", { above: 0 });
  await figure(page, "publishes", "publishes per second", { above: 0 });
  await expect("the page shows the publish-to-send latency",
    page.waitForFunction(() => document.querySelector('[data-testid="latency"]').dataset.value !== ""));
  const latency = await page.getByTestId("latency").textContent();
  check(/^\d+(\.\d+)? \/ \d+(\.\d+)?$/.test(latency ?? ""), `latency p50 / p99 shown: ${latency}`);
  await expect("the node's row counts the publishes",
    page.waitForFunction((node) => {
      const row = document.querySelector(`[data-testid="node-row"][data-node="${node}"]`);
      return row && Number(row.cells[row.cells.length - 1].textContent) > 0;
    }, node));
  publishing = false;
  const count = await published;
  check(deliveries > 0 && count > 0, `published ${count}, page showed ${deliveries} deliveries/s`);
  await figure(page, "deliveries", "deliveries per second back to 0", { equals: 0 });
  const totals = (await page.getByTestId("totals").textContent()) ?? "";
  check(totals.startsWith(`${count} publishes, ${3 * count} deliveries, 3 connections opened`), `totals: ${totals}`);
  for (const client of [...alice, bob]) {
    const { pubs } = await client.state();
    check(pubs.length === count && pubs.every((p, i) => p.topic === topicA && p.data.n === i), `${client.name} received ${pubs.length} of ${count}`);
  }

  // The publish form: text to B reaches bob, exactly.
  const message = `hello bob <b>from</b> the admin page ${randomBytes(4).toString("hex")}`;
  await page.getByTestId("publish-topic").fill(topicB);
  await page.getByTestId("publish-type").selectOption({ label: "text" });
  await page.getByTestId("publish-body").fill(message);
  await page.getByTestId("publish").click();
  text = await settled(page, "publish-result", "ok", "the publish form's answer");
  check(text === `published to ${topicB}: 1 recipient`, `publish result: ${text}`);
  await expect("bob receives the page's publication",
    subs.waitForFunction((topic) => window.e2e.bob.pubs.some((p) => p.topic === topic), topicB));
  const got = (await bob.state()).pubs.find((p) => p.topic === topicB);
  check(got.data === message, `bob got ${JSON.stringify(got)}`);
  // A refusal is shown with its status: an invalid topic.
  await page.getByTestId("publish-topic").fill("bad topic");
  await page.getByTestId("publish").click();
  text = await settled(page, "publish-result", "error", "the refusal of an invalid topic");
  check(text.startsWith("refused: 400 "), `invalid topic: ${text}`);

  // Look alice up, then disconnect her with 4001.
  await page.getByTestId("user").fill("alice");
  await page.getByTestId("lookup").click();
  text = await settled(page, "user-result", "ok", "alice's connections");
  check(text === "alice: 2 connections; 1 of 1 nodes answered", `lookup: ${text}`);
  const rows = await page.getByTestId("user-connection").allInnerTexts();
  check(rows.length === 2 && rows.every((r) => r.includes(node) && r.includes("127.0.0.1") && r.includes("v1") && r.includes(topicA)),
    `alice's rows: ${JSON.stringify(rows)}`);
  const reason = "banned by the e2e test";
  await page.getByTestId("close-code").fill("4001");
  await page.getByTestId("close-reason").fill(reason);
  await page.getByTestId("disconnect").click();
  text = await settled(page, "disconnect-result", "ok", "the disconnect's answer");
  check(text === `alice: 2 closed with 4001 "${reason}"`, `disconnect: ${text}`);
  for (const client of alice) {
    await expect(`${client.name}'s socket closes`, subs.waitForFunction((name) => window.e2e[name].closed, client.name));
    const { closed } = await client.state();
    check(closed.code === 4001 && closed.reason === reason, `${client.name}'s close: ${JSON.stringify(closed)}`);
  }
  check((await bob.state()).closed === null, "bob stays connected");
  await figure(page, "connections", "one connection left", { equals: 1 });
  await page.getByTestId("lookup").click();
  await expect("a new lookup finds none of alice's connections",
    page.waitForFunction(() => document.querySelector('[data-testid="user-result"]').textContent.startsWith("alice: 0 connections;")));
  check((await page.getByTestId("user-connection").count()) === 0, "no rows for alice");
  // A close code the server does not send: refused with 400, shown.
  await page.getByTestId("close-code").fill("1006");
  await page.getByTestId("disconnect").click();
  text = await settled(page, "disconnect-result", "error", "the refusal of close code 1006");
  check(text.startsWith("refused: 400 "), `close code 1006: ${text}`);

  // Forgetting the token: the page is refused again.
  await page.getByTestId("token-forget").click();
  text = await settled(page, "api-status", "unauthorized", "the page is refused once the token is forgotten");
  check(text.startsWith("401 "), `refusal shown: ${text}`);
  await page.getByTestId("lookup").click();
  text = await settled(page, "user-result", "error", "a lookup without the token");
  check(text.startsWith("refused: 401 "), `lookup without the token: ${text}`);

  // Chromium logs each 4xx answer to a fetch; those are the refusals checked above.
  const unexpected = errors.filter((e) => !/^Failed to load resource: the server responded with a status of 40[01] /.test(e));
  check(unexpected.length === 0, `errors in the page: ${unexpected.join(" | ")}`);
  if (process.env.E2E_SCREENSHOT) await page.screenshot({ path: process.env.E2E_SCREENSHOT, fullPage: true });
}

run("admin page", test, OVERALL_MS);
