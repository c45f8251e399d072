// What the browser end-to-end tests share: checks that fail with what was expected, the
// real `stratus` binary started on loopback (ports chosen by the kernel, read back from its
// JSON log), Debian's Chromium headless through playwright-core, and a bounded run that
// always stops both and exits non-zero with the reason (and the server's last log lines).

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

export const STEP_MS = 15_000;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const BINARY = process.env.STRATUS_BIN;

let server = null;
let browser = null;
const serverLog = [];
let checks = 0;

export class Failure extends Error {}

export function check(ok, what) {
  if (!ok) throw new Failure(what);
  checks += 1;
}

// Waits for `promise`; a timeout or error fails with what was awaited.
export async function expect(what, promise) {
  try {
    await promise;
  } catch (err) {
    throw new Failure(`${what}: ${String(err.message).split("\n")[0]}`);
  }
  checks += 1;
}

// Resolves to what `promise` resolves to, or fails with `what` after STEP_MS.
export function within(what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`${what}: not within ${STEP_MS / 1000} s`)), STEP_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Starts `stratus serve` with `args` on ports the kernel picks; resolves to its two
// addresses ({ ws, admin }) and the process ({ child }).
export function startServer(args) {
  check(Boolean(BINARY) && existsSync(BINARY), `STRATUS_BIN is not a file: ${BINARY}`);
  const all = ["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json", ...args];
  server = spawn(BINARY, all, { stdio: ["ignore", "ignore", "pipe"] });
  const child = server;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Failure(`server did not log its addresses in ${STEP_MS / 1000} s`)), STEP_MS);
    let pending = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
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
          const found = { ws: addr(fields.local_addr), admin: addr(fields.admin_addr), child };
          check(Boolean(found.ws && found.admin), `addresses not found in the server log: ${line}`);
          resolve(found);
        }
      }
    });
    child.on("error", (err) => reject(new Failure(`cannot start ${BINARY}: ${err.message}`)));
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Failure(`server exited early (code ${code}, signal ${signal})`));
    });
  });
}

// Opens a page in headless Chromium (launched on the first call); resolves to the page
// and `errors`, where its script errors and CSP violations (a blocked inline script or
// request) collect.
export async function openPage() {
  if (!browser) {
    check(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium)`);
    const args = ["--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"];
    if (process.getuid?.() === 0) args.push("--no-sandbox");
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: STEP_MS });
  }
  const page = await browser.newPage();
  page.setDefaultTimeout(STEP_MS);
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  page.on("console", (msg) => {
    if (msg.type() === "error") errors.push(msg.text());
  });
  return { page, errors };
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

// Runs `test` within `overallMs`, cleans up, reports and exits (0: passed).
export async function run(name, test, overallMs) {
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.on(signal, () => cleanup().finally(() => process.exit(1)));
  }
  // However node ends (an exception thrown in an event handler, say), the server goes too.
  process.on("exit", () => {
    if (server && server.exitCode === null && server.signalCode === null) server.kill("SIGKILL");
  });
  const overall = new Promise((_, reject) =>
    setTimeout(() => reject(new Failure(`timed out after ${overallMs / 1000} s`)), overallMs).unref(),
  );
  let failure = null;
  try {
    await Promise.race([test(), overall]);
  } catch (err) {
    failure = err;
  }
  await cleanup();
  if (failure) {
    console.error(`${name} e2e FAILED after ${checks} checks: ${failure instanceof Failure ? failure.message : failure.stack}`);
    if (serverLog.length) console.error(`server log (last lines):\n${serverLog.slice(-20).join("\n")}`);
    process.exit(1);
  }
  console.log(`${name} e2e passed (${checks} checks)`);
  process.exit(0);
}
