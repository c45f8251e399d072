// What the browser end-to-end tests share: checks that fail with what was expected, the
// real `stratus` binary started on loopback (ports chosen by the kernel, read back from its
// JSON log), Debian's Chromium headless through playwright-core, and a bounded run that
// always stops both and exits non-zero with the reason (and the server's last log lines).

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import { connect, createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
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

// Starts `stratus serve` with `args` on ports the kernel picks (or on `at.ws` and
// `at.admin`, "127.0.0.1:<port>", to restart a server where it was); resolves to its two
// addresses ({ ws, admin }) and the process ({ child }). The last one started is the one
// stopped at the end.
export function startServer(args, at = {}) {
  check(Boolean(BINARY) && existsSync(BINARY), `STRATUS_BIN is not a file: ${BINARY}`);
  const all = ["serve", "--listen", at.ws ?? "127.0.0.1:0", "--admin-listen", at.admin ?? "127.0.0.1:0",
    "--log-format", "json", ...args];
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

// What onCleanup() added, stopped after the browser and the server.
const cleanups = [];

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
  for (const stop of cleanups.splice(0).reverse()) await bounded(Promise.resolve().then(stop), 5_000);
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

// ---- For the tests that restart the server, run Redis, and serve their own pages ---------

// Runs `stop` (may be async, bounded at 5 s) at the end, after the browser and the server.
export function onCleanup(stop) {
  cleanups.push(stop);
}

// Sends `signal` to a server startServer() started and resolves once it has exited
// (fails after STEP_MS).
export async function stopServer(addr, signal = "SIGKILL") {
  const { child } = addr;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  await within(`the server exits after ${signal}`, exited);
}

// Polls `probe` (may be async) every 25 ms until it returns something truthy, which it
// resolves to; fails with `what` after STEP_MS.
export async function until(what, probe) {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Failure(`${what}: not within ${STEP_MS / 1000} s`);
    await sleep(25);
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// A port the kernel says is free now.
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createNetServer();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

// A redis-server of the test's own on a free loopback port (no persistence, its files in
// a temporary directory), answering PING; resolves to { url }. Stopped at the end.
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "stratus-e2e-redis-"));
  const redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "",
    "--appendonly", "no", "--dir", dir], { stdio: "ignore" });
  let ended = null;
  redis.on("error", (err) => (ended = `cannot start redis-server (scripts/install-redis.sh installs it): ${err.message}`));
  redis.on("exit", (code, signal) => (ended ??= `redis-server exited (code ${code}, signal ${signal})`));
  const stop = () => {
    if (redis.exitCode === null && redis.signalCode === null) redis.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  onCleanup(stop);
  process.on("exit", stop);
  await until("redis-server answers PING", () => {
    if (ended) throw new Failure(ended);
    return redisPing(port);
  });
  return { url: `redis://127.0.0.1:${port}` };
}

function redisPing(port) {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.setTimeout(1_000);
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (data) => {
      socket.destroy();
      resolve(data.toString().startsWith("+PONG"));
    });
    socket.on("error", () => resolve(false));
    socket.on("timeout", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".map": "application/json" };

// A static file server on its own loopback port (another origin than the server's):
// `roots` maps a path prefix ("/pages/") to a directory. Only GET, only files under the
// roots, no caching. Resolves to { origin }. Stopped at the end.
export async function serveFiles(roots) {
  const files = createHttpServer(async (req, res) => {
    const url = new URL(req.url, "http://files");
    const root = Object.entries(roots).find(([prefix]) => url.pathname.startsWith(prefix));
    const fail = (status) => res.writeHead(status, { "Content-Type": "text/plain" }).end(`${status}\n`);
    if (req.method !== "GET") return fail(405);
    if (!root) return fail(404);
    const [prefix, dir] = root;
    let file;
    let body;
    try {
      file = path.resolve(dir, `.${decodeURIComponent(url.pathname.slice(prefix.length - 1))}`);
      if (!file.startsWith(path.resolve(dir) + path.sep)) return fail(403);
      body = await readFile(file);
    } catch {
      return fail(404);
    }
    res.writeHead(200, {
      "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream",
      "Cache-Control": "no-store",
    });
    res.end(body);
  });
  await new Promise((resolve, reject) => {
    files.once("error", reject);
    files.listen(0, "127.0.0.1", resolve);
  });
  onCleanup(() => new Promise((resolve) => {
    files.closeAllConnections();
    files.close(resolve);
  }));
  return { origin: `http://127.0.0.1:${files.address().port}` };
}

// POST /publish/{topic} on the admin API with `body` as JSON (or `type`); resolves to
// its answer ({ offset, ... }), failing on anything but 200.
export async function adminPublish(admin, topic, body, type = "application/json") {
  const response = await within(`publish to ${topic}`, fetch(`http://${admin}/publish/${encodeURIComponent(topic)}`, {
    method: "POST",
    headers: { "Content-Type": type },
    body: type === "application/json" ? JSON.stringify(body) : body,
    signal: AbortSignal.timeout(STEP_MS),
  }));
  const text = await response.text();
  check(response.status === 200, `publish to ${topic} answered ${response.status}: ${text}`);
  return JSON.parse(text);
}

// Resolves once GET /readyz on the admin API answers 200: with a broker, the server logs
// "listening" before it has reached Redis, and answers publishes 503 until it has.
export async function untilReady(admin) {
  await until(`the server at ${admin} is ready (GET /readyz)`, async () => {
    try {
      const response = await fetch(`http://${admin}/readyz`, { signal: AbortSignal.timeout(1_000) });
      await response.arrayBuffer();
      return response.status === 200;
    } catch {
      return false;
    }
  });
}

// Two loopback addresses ({ ws, admin }) for startServer(args, at) that a restart can
// take again: below the kernel's ephemeral range (where ports are only ever bound on
// purpose), so that no outgoing connection on this machine takes one of them while the
// server is down; each free when picked.
export async function restartablePorts() {
  let low = 32768;
  try {
    low = Number((await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8")).trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: the usual bound
  }
  const floor = Math.max(10_000, low - 12_000);
  const picked = [];
  for (let tries = 0; picked.length < 2 && tries < 50; tries++) {
    const port = floor + Math.floor(Math.random() * (low - floor));
    if (!picked.includes(port) && (await canListen(port))) picked.push(port);
  }
  check(picked.length === 2, `no two free ports found between ${floor} and ${low}`);
  return { ws: `127.0.0.1:${picked[0]}`, admin: `127.0.0.1:${picked[1]}` };
}

function canListen(port) {
  return new Promise((resolve) => {
    const probe = createNetServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
  });
}
