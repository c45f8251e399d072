// Browser end-to-end test of the status page: starts `stratus serve` on loopback (ports
// chosen by the kernel, read back from its log), drives Debian's Chromium headless through
// playwright-core, subscribes on the page, publishes through the admin API, and checks the
// message appears exactly (markup in it shown as text), with the connection state and the
// negotiated extension. Exits non-zero with the reason on any failure, and after 60 s in
// all; always stops the server and the browser.
//
// Usage: STRATUS_BIN=path/to/stratus node status-page.mjs   (scripts/e2e.sh sets it up)

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

const OVERALL_MS = 60_000;
const STEP_MS = 15_000;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const BINARY = process.env.STRATUS_BIN;

let server = null;
let browser = null;
const serverLog = [];
let checks = 0;

class Failure extends Error {}

function check(ok, what) {
  if (!ok) throw new Failure(what);
  checks += 1;
}

// Waits for `promise`; a timeout or error fails with what was awaited.
async function expect(what, promise) {
  try {
    await promise;
  } catch (err) {
    throw new Failure(`${what}: ${String(err.message).split("\n")[0]}`);
  }
  checks += 1;
}

// Starts the server on ports the kernel picks; resolves to its two addresses.
function startServer() {
  const args = [
    "serve",
    "--listen", "127.0.0.1:0",
    "--admin-listen", "127.0.0.1:0",
    "--workers", "1",
    "--log-format", "json",
  ];
  server = spawn(BINARY, args, { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Failure("server did not log its addresses in 15 s")), STEP_MS);
    let pending = "";
    server.stderr.setEncoding("utf8");
    server.stderr.on("data", (chunk) => {
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines) {
        serverLog.push(line);
        let entry;
        try {
          entry = JSON.parse(line);
        } catch {
          continue;
        }
        const fields = entry.fields ?? {};
        if (fields.message === "listening") {
          const addr = (value) => String(value).match(/\d+\.\d+\.\d+\.\d+:\d+/)?.[0];
          clearTimeout(timer);
          resolve({ ws: addr(fields.local_addr), admin: addr(fields.admin_addr) });
        }
      }
    });
    server.on("error", (err) => reject(new Failure(`cannot start ${BINARY}: ${err.message}`)));
    server.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Failure(`server exited early (code ${code}, signal ${signal})`));
    });
  });
}

async function publish(admin, topic, payload) {
  const response = await fetch(`http://${admin}/publish/${topic}`, {
    method: "POST",
    headers: { "Content-Type": "text/plain; charset=utf-8" },
    body: payload,
    signal: AbortSignal.timeout(STEP_MS),
  });
  const body = await response.text();
  check(response.status === 200, `publish answered ${response.status}: ${body}`);
  return JSON.parse(body).recipients;
}

async function run() {
  check(Boolean(BINARY) && existsSync(BINARY), `STRATUS_BIN is not a file: ${BINARY}`);
  check(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  const addr = await startServer();
  check(Boolean(addr.ws && addr.admin), `addresses not found in the server log: ${JSON.stringify(addr)}`);

  const args = ["--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"];
  if (process.getuid?.() === 0) args.push("--no-sandbox");
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: STEP_MS });
  const page = await browser.newPage();
  page.setDefaultTimeout(STEP_MS);
  // Script errors and CSP violations (a blocked inline script or socket) land here.
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(err.message));
  page.on("console", (msg) => {
    if (msg.type() === "error") pageErrors.push(msg.text());
  });

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

  const topic = `e2e-${process.pid}-${Date.now()}`;
  await page.getByTestId("topic").fill(topic);
  await page.getByTestId("subscribe").click();
  await expect(
    "the page shows the topic as subscribed",
    page.waitForFunction((t) => document.querySelector('[data-testid="topics"]')?.textContent === t, topic),
  );
  check((await page.getByTestId("message").count()) === 0, "the subscribe reply is not listed as a message");

  const payload = `<b>bold?</b> & "double" 'single' ${topic} ${Math.random().toString(36).slice(2)}`;
  check((await publish(addr.admin, topic, payload)) === 1, "the publish reached the page's subscription");
  await expect(
    `the page lists the published message exactly: ${payload}`,
    page.waitForFunction(
      (p) => [...document.querySelectorAll('[data-testid="message"]')].some((m) => m.textContent === p),
      payload,
    ),
  );
  check((await page.locator('[data-testid="messages"] b').count()) === 0, "markup in a message stays text");
  check((await page.getByTestId("message").count()) === 1, "exactly one message listed");

  await page.getByTestId("unsubscribe").click();
  await expect(
    "the page shows no subscription after Unsubscribe",
    page.waitForFunction(() => document.querySelector('[data-testid="topics"]')?.textContent === "none"),
  );
  check((await publish(addr.admin, topic, "after unsubscribe")) === 0, "unsubscribed: no recipients");

  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(" | ")}`);

  // A drain closes every client with 1001: the page shows the code and the reason.
  server.kill("SIGTERM");
  await expect("the page shows the drain's close", page.locator('[data-testid="state"][data-state="closed"]').waitFor());
  const closed = await state.textContent();
  check(closed === "closed (code 1001, server shutting down)", `state after the drain: ${closed}`);
  if (process.env.E2E_SCREENSHOT) await page.screenshot({ path: process.env.E2E_SCREENSHOT, fullPage: true });
}

// Stops the browser and the server (each bounded), whatever happened.
async function cleanup() {
  const bounded = (promise, ms) =>
    Promise.race([promise.catch(() => {}), new Promise((resolve) => setTimeout(resolve, ms))]);
  if (browser) await bounded(browser.close(), 5_000);
  if (server && server.exitCode === null && server.signalCode === null) {
    const exited = new Promise((resolve) => server.once("exit", resolve));
    server.kill("SIGTERM");
    await bounded(exited, 5_000);
    if (server.exitCode === null && server.signalCode === null) server.kill("SIGKILL");
  }
}

async function main() {
  const overall = new Promise((_, reject) =>
    setTimeout(() => reject(new Failure(`timed out after ${OVERALL_MS / 1000} s`)), OVERALL_MS).unref(),
  );
  let failure = null;
  try {
    await Promise.race([run(), overall]);
  } catch (err) {
    failure = err;
  }
  await cleanup();
  if (failure) {
    console.error(`status page e2e FAILED after ${checks} checks: ${failure instanceof Failure ? failure.message : failure.stack}`);
    if (serverLog.length) console.error(`server log (last lines):\n${serverLog.slice(-20).join("\n")}`);
    process.exit(1);
  }
  console.log(`status page e2e passed (${checks} checks)`);
  process.exit(0);
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => cleanup().finally(() => process.exit(1)));
}
main();
