// Browser end-to-end test of the status page: starts `stratus serve` on loopback (ports
// chosen by the kernel, read back from its log; a history so publications have offsets,
// and publishing from subscribers allowed), drives Debian's Chromium headless through
// playwright-core, and checks the page speaks protocol v1 (stratus.v1): it subscribes to
// two topics with commands that have ids, shows text, JSON and binary publications from the
// admin API with their topics and offsets (markup in them shown as text), publishes from the
// page and sees its publication come back with the reply's offset, and shows the error code
// of refused commands; with the connection state, the negotiated subprotocol and extension.
// Exits non-zero with the reason on any failure, and after 60 s in all; always stops the
// server and the browser.
//
// Usage: STRATUS_BIN=path/to/stratus node status-page.mjs   (scripts/e2e.sh sets it up)

import { STEP_MS, check, expect, within, startServer, openPage, run } from "./harness.mjs";

const OVERALL_MS = 60_000;

// Publishes through the admin API; resolves to its answer ({ recipients, offset }).
async function publish(admin, topic, payload, contentType = "text/plain; charset=utf-8") {
  const response = await fetch(`http://${admin}/publish/${topic}`, {
    method: "POST",
    headers: { "Content-Type": contentType },
    body: payload,
    signal: AbortSignal.timeout(STEP_MS),
  });
  const body = await response.text();
  check(response.status === 200, `publish answered ${response.status}: ${body}`);
  return JSON.parse(body);
}

// Runs `action` (which sends one command from the page) and waits for the page to show
// the command's answer; resolves to its line in the command log.
async function command(page, what, action) {
  const before = await page.getByTestId("command").count();
  await action();
  await expect(
    `the page shows the answer to ${what}`,
    page.waitForFunction(
      (n) => {
        const item = document.querySelectorAll('[data-testid="command"]')[n];
        return item && item.dataset.outcome !== "waiting";
      },
      before,
    ),
  );
  const item = page.getByTestId("command").nth(before);
  return {
    id: await item.getAttribute("data-id"),
    op: await item.getAttribute("data-op"),
    outcome: await item.getAttribute("data-outcome"),
    text: await item.getByTestId("outcome").textContent(),
  };
}

// Waits until the page lists a publication on `topic` whose body reads `body` exactly
// (and whose offset reads `offset`, when given).
async function shown(page, what, { topic, body, offset }) {
  await expect(
    `the page lists ${what} on ${topic}${offset ? ` at offset ${offset}` : ""}: ${body}`,
    page.waitForFunction(
      ({ topic, body, offset }) =>
        [...document.querySelectorAll('[data-testid="messages"] > li')].some((item) => {
          const text = (testid) => item.querySelector(`[data-testid="${testid}"]`)?.textContent;
          return text("message-topic") === topic && text("message") === body &&
            (offset === undefined || text("message-offset") === offset);
        }),
      { topic, body, offset },
    ),
  );
}

async function test() {
  // A history so publications have offsets, and publishing from subscribers allowed.
  const addr = await startServer(["--workers", "1", "--history", "10", "--client-publish", "subscribers"]);
  // Script errors and CSP violations (a blocked inline script or socket) land in pageErrors.
  const { page, errors: pageErrors } = await openPage();

  // The WebSocket handshake as the browser sent and received it.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  const handshake = {
    request: new Promise((resolve) => cdp.once("Network.webSocketWillSendHandshakeRequest", resolve)),
    response: new Promise((resolve) => cdp.once("Network.webSocketHandshakeResponseReceived", resolve)),
  };
  const header = (headers, name) =>
    Object.entries(headers ?? {}).find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1];

  const response = await page.goto(`http://${addr.ws}/`);
  check(response?.status() === 200, `GET / answered ${response?.status()}`);
  const headers = response.headers();
  check(headers["content-type"] === "text/html; charset=utf-8", `content-type ${headers["content-type"]}`);
  check(headers["content-security-policy"]?.startsWith("default-src 'none'"), "page has its CSP");

  const state = page.getByTestId("state");
  await expect("the page's WebSocket opens", page.locator('[data-testid="state"][data-state="open"]').waitFor());
  check((await state.textContent()) === "open", `state reads ${await state.textContent()}`);
  const extensions = (await page.getByTestId("extensions").textContent()) ?? "";
  check(/^permessage-deflate(;|$)/.test(extensions), `negotiated extensions: ${extensions}`);

  // The page asks for stratus.v1 and the server agrees: in the handshake and in the page.
  const sent = await within("the page's WebSocket handshake request", handshake.request);
  const asked = header(sent.request.headers, "Sec-WebSocket-Protocol");
  check(asked === "stratus.v1", `the page asked for subprotocol ${asked}`);
  const answered = await within("the WebSocket handshake response", handshake.response);
  const agreed = header(answered.response.headers, "Sec-WebSocket-Protocol");
  check(answered.response.status === 101 && agreed === "stratus.v1", `the server answered ${answered.response.status}, subprotocol ${agreed}`);
  const protocol = await page.getByTestId("protocol").textContent();
  check(protocol === "stratus.v1", `the page shows protocol ${protocol}`);
  // The page's socket itself (its script's global `ws`).
  const socket = await page.evaluate(() => ({ protocol: ws.protocol, state: ws.readyState }));
  check(socket.protocol === "stratus.v1" && socket.state === 1, `the page's WebSocket: ${JSON.stringify(socket)}`);

  // Two subscriptions, each a command with its own id, each answered.
  const base = `e2e-${process.pid}-${Date.now()}`;
  const [topicA, topicB] = [`${base}/a`, `${base}/b`];
  const ids = new Set();
  for (const topic of [topicA, topicB]) {
    await page.getByTestId("topic").fill(topic);
    const reply = await command(page, `subscribe ${topic}`, () => page.getByTestId("subscribe").click());
    check(reply.op === "subscribe" && reply.outcome === "ok" && /^ok(, offset \S+)?$/.test(reply.text ?? ""), `subscribe ${topic}: ${JSON.stringify(reply)}`);
    ids.add(reply.id);
  }
  check(ids.size === 2 && ![...ids].includes(null), `each command has its own id: ${[...ids]}`);
  await expect(
    "the page shows both topics as subscribed",
    page.waitForFunction((t) => document.querySelector('[data-testid="topics"]')?.textContent === t, `${topicA}, ${topicB}`),
  );
  check((await page.getByTestId("message").count()) === 0, "the subscribe replies are not listed as messages");

  // Publications from the admin API: text, JSON (pretty-printed), binary (size and hex).
  const payload = `<b>bold?</b> & "double" 'single' ${topicA} ${Math.random().toString(36).slice(2)}`;
  let answer = await publish(addr.admin, topicA, payload);
  check(answer.recipients === 1 && typeof answer.offset === "string", `text publish: ${JSON.stringify(answer)}`);
  await shown(page, "the text publication exactly", { topic: topicA, body: payload, offset: answer.offset });
  check((await page.locator('[data-testid="messages"] b').count()) === 0, "markup in a message stays text");

  const value = { price: 1.5, tags: ["<i>x</i>", "y"], nested: { ok: true } };
  answer = await publish(addr.admin, topicB, JSON.stringify(value), "application/json");
  check(answer.recipients === 1 && typeof answer.offset === "string", `JSON publish: ${JSON.stringify(answer)}`);
  await shown(page, "the JSON publication pretty-printed", { topic: topicB, body: JSON.stringify(value, null, 2), offset: answer.offset });
  check((await page.locator('[data-testid="messages"] i').count()) === 0, "markup in JSON stays text");

  answer = await publish(addr.admin, topicA, new Uint8Array([0x00, 0x01, 0xab, 0xff]), "application/octet-stream");
  check(answer.recipients === 1, `binary publish: ${JSON.stringify(answer)}`);
  await shown(page, "the binary publication's size and bytes", { topic: topicA, body: "[binary, 4 bytes] 00 01 ab ff", offset: answer.offset });
  check((await page.getByTestId("message").count()) === 3, "exactly three messages listed");

  // Publishing from the page (JSON with the button, text with Ctrl+Enter): the reply's
  // offset, and the publication back on its topic at that offset.
  for (const [topic, data, body, send] of [
    [topicB, '{"from": "page", "n": 2}', JSON.stringify({ from: "page", n: 2 }, null, 2), () => page.getByTestId("publish").click()],
    [topicA, "hello from the page <b>!</b>", "hello from the page <b>!</b>", () => page.getByTestId("publish-data").press("Control+Enter")],
  ]) {
    await page.getByTestId("publish-topic").fill(topic);
    await page.getByTestId("publish-data").fill(data);
    const reply = await command(page, `publish to ${topic}`, send);
    const offset = /^ok, offset (\S+)$/.exec(reply.text ?? "")?.[1];
    check(reply.op === "publish" && reply.outcome === "ok" && offset, `publish from the page to ${topic}: ${JSON.stringify(reply)}`);
    await shown(page, "the page's own publication", { topic, body, offset });
  }
  check((await page.locator('[data-testid="messages"] b').count()) === 0, "markup in the page's publication stays text");
  check((await page.getByTestId("message").count()) === 5, "exactly five messages listed");

  // Refused commands show their error code, in the command log and the notice.
  const refusals = [
    ["invalid_topic", "subscribe bad topic", async () => {
      await page.getByTestId("topic").fill("bad topic");
      await page.getByTestId("subscribe").click();
    }],
    ["forbidden", "publish to a topic not subscribed to", async () => {
      await page.getByTestId("publish-topic").fill(`${base}/c`);
      await page.getByTestId("publish-data").fill("not allowed");
      await page.getByTestId("publish").click();
    }],
  ];
  for (const [code, what, action] of refusals) {
    const reply = await command(page, what, action);
    check(reply.outcome === "error" && reply.text?.startsWith(`error ${code}: `), `${what}: ${JSON.stringify(reply)}`);
    const notice = (await page.getByTestId("notice").textContent()) ?? "";
    check(notice.includes(`#${reply.id} `) && notice.includes(` refused: ${code}: `), `notice after ${what}: ${notice}`);
  }
  const topics = await page.getByTestId("topics").textContent();
  check(topics === `${topicA}, ${topicB}`, `a refused subscribe changes no subscription: ${topics}`);
  check((await page.getByTestId("message").count()) === 5, "refusals are not listed as messages");

  await page.getByTestId("topic").fill(topicA);
  const reply = await command(page, `unsubscribe ${topicA}`, () => page.getByTestId("unsubscribe").click());
  check(reply.op === "unsubscribe" && reply.outcome === "ok", `unsubscribe: ${JSON.stringify(reply)}`);
  await expect(
    "the page shows one subscription after Unsubscribe",
    page.waitForFunction((t) => document.querySelector('[data-testid="topics"]')?.textContent === t, topicB),
  );
  check((await page.getByTestId("notice").textContent()) === "", "a reply clears the error notice");
  check((await publish(addr.admin, topicA, "after unsubscribe")).recipients === 0, "unsubscribed: no recipients");

  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(" | ")}`);

  // A drain closes every client with 1001: the page shows the code and the reason.
  addr.child.kill("SIGTERM");
  await expect("the page shows the drain's close", page.locator('[data-testid="state"][data-state="closed"]').waitFor());
  const closed = await state.textContent();
  check(closed === "closed (code 1001, server shutting down)", `state after the drain: ${closed}`);
  if (process.env.E2E_SCREENSHOT) await page.screenshot({ path: process.env.E2E_SCREENSHOT, fullPage: true });
}

run("status page", test, OVERALL_MS);
