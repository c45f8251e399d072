// What the SDK's tests share: the real `stratus` binary on free loopback ports, a
// redis-server of their own, HS256 tokens, admin publishes, and bounded waits (every wait
// fails the test after its timeout; none asserts speed).

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after } from "node:test";

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, "../../..");
export const BINARY = process.env.STRATUS_BIN || path.join(REPO, "target/debug/stratus");

/** Longest one step may wait (a reply, a message, a server start). */
export const STEP = 10_000;

export const SECRET = "stratus-sdk-test-secret-0123456789abcdef";

/** A port the kernel says is free now (for a server that must come back on the same port). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Rejects with a message naming `what` if `promise` does not settle within `ms`. */
export function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `event` from an emitter (SDK client or subscription) for which `test` holds. */
export function next(emitter, event, test = () => true, ms = STEP) {
  let off;
  const p = new Promise((resolve) => {
    off = emitter.on(event, (...args) => {
      if (test(...args)) {
        off();
        resolve(args.length > 1 ? args : args[0]);
      }
    });
  });
  return within(p, ms, `the "${event}" event`).finally(() => off());
}

/** Waits until `check()` is truthy (polled), failing after `ms`. */
export async function until(check, ms = STEP, what = "a condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Records a subscription's messages and gaps, in order. */
export function record(sub) {
  const log = { messages: [], gaps: [], skips: [], errors: [], all: [] };
  sub.on("message", (m) => {
    log.messages.push(m);
    log.all.push({ kind: "message", ...m });
  });
  sub.on("gap", (g) => {
    log.gaps.push(g);
    log.all.push({ kind: "gap", ...g });
  });
  sub.on("skip", (s) => log.skips.push(s));
  sub.on("error", (e) => log.errors.push(e));
  return log;
}

function b64url(buf) {
  return Buffer.from(buf).toString("base64url");
}

/** An HS256 JWT with these claims (sub "alice", exp in an hour, every topic, unless given). */
export function jwt(claims = {}, secret = SECRET) {
  const now = Math.floor(Date.now() / 1000);
  const body = { sub: "alice", exp: now + 3600, topics: ["*"], ...claims };
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify(body));
  const sig = b64url(createHmac("sha256", secret).update(`${head}.${payload}`).digest());
  return `${head}.${payload}.${sig}`;
}

/**
 * `stratus serve` on loopback. `port` fixes the WebSocket port (to restart on it);
 * otherwise both ports are the kernel's choice. `config` is TOML written to a file.
 */
export async function startServer({ args = [], config = null, port = 0, adminPort = 0 } = {}) {
  if (!existsSync(BINARY)) {
    throw new Error(`no stratus binary at ${BINARY}: build it (cargo build -p stratus-server --bin stratus) or set STRATUS_BIN`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), "stratus-sdk-js-"));
  const logPath = path.join(dir, "stratus.log");
  const full = [
    "serve",
    "--listen", `127.0.0.1:${port}`,
    "--admin-listen", `127.0.0.1:${adminPort}`,
    "--workers", "1",
    "--log-format", "json",
  ];
  if (config !== null) {
    const file = path.join(dir, "stratus.toml");
    writeFileSync(file, config);
    full.push("--config", file);
  }
  full.push(...args);
  // The server reads STRATUS_* from the environment: none of the caller's.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("STRATUS_")));
  const { openSync } = await import("node:fs");
  const fd = openSync(logPath, "w");
  const proc = spawn(BINARY, full, { stdio: ["ignore", fd, fd], env, cwd: dir });
  let exited = null;
  const exit = new Promise((resolve) => proc.on("exit", (code, signal) => resolve((exited = { code, signal }))));
  const logTail = () => {
    try {
      return readFileSync(logPath, "utf8").split("\n").slice(-30).join("\n");
    } catch {
      return "(no log)";
    }
  };
  const listening = () => {
    let text = "";
    try {
      text = readFileSync(logPath, "utf8");
    } catch {
      return null;
    }
    for (const line of text.split("\n")) {
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        continue;
      }
      const f = entry?.fields;
      if (f?.message === "listening") {
        const addr = (v) => /127\.0\.0\.1:\d+/.exec(String(v))?.[0] ?? null;
        return { ws: addr(f.local_addr), admin: addr(f.admin_addr) };
      }
    }
    return null;
  };
  let addrs;
  try {
    addrs = await until(
      () => {
        if (exited) throw new Error(`stratus exited (${JSON.stringify(exited)}) before listening:\n${logTail()}`);
        return listening();
      },
      20_000,
      "the server to listen",
    );
  } catch (e) {
    proc.kill("SIGKILL");
    throw e;
  }
  const server = {
    proc,
    dir,
    ws: addrs.ws,
    admin: addrs.admin,
    port: Number(addrs.ws.split(":")[1]),
    adminPort: Number(addrs.admin.split(":")[1]),
    url: `ws://${addrs.ws}/ws`,
    adminUrl: `http://${addrs.admin}`,
    logTail,
    exit,
    /** SIGKILL: no Close frames, no drain. */
    async kill() {
      if (!exited) proc.kill("SIGKILL");
      await within(exit, STEP, "the server to die");
    },
    /** SIGTERM: Close 1001 to every client, then exit. */
    async stop() {
      if (!exited) proc.kill("SIGTERM");
      await within(exit, 20_000, "the server to stop");
    },
    cleanup() {
      if (!exited) proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}

/** Publishes through the admin API; resolves with its JSON answer. */
export async function adminPublish(server, topic, body, { type = "text/plain", key } = {}) {
  const q = key === undefined ? "" : `?key=${encodeURIComponent(key)}`;
  const res = await within(
    fetch(`${server.adminUrl}/publish/${encodeURIComponent(topic)}${q}`, {
      method: "POST",
      headers: { "content-type": type },
      body,
    }),
    STEP,
    "an admin publish",
  );
  const text = await res.text();
  if (res.status !== 200) throw new Error(`admin publish answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

/** A redis-server of the test's own on a free port, no persistence. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "stratus-sdk-redis-"));
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {
    stdio: "ignore",
  });
  let exited = null;
  proc.on("exit", (code) => (exited = code));
  proc.on("error", (e) => (exited = e));
  await until(
    async () => {
      if (exited !== null) throw new Error(`redis-server exited: ${exited} (is it installed? scripts/install-redis.sh)`);
      return redisPing(port);
    },
    STEP,
    "redis-server to answer PING",
  );
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    cleanup() {
      proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.setTimeout(1000);
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      s.destroy();
      resolve(d.toString().startsWith("+PONG"));
    });
    s.on("error", () => resolve(false));
    s.on("timeout", () => {
      s.destroy();
      resolve(false);
    });
  });
}

/** Fast reconnects for tests. */
export const FAST = { initial: 50, max: 300, factor: 2, jitter: 0.5 };

/**
 * What a test file starts, stopped after its tests (newest first): `track(client)` closes
 * a client, `serve(opts)` starts a server and stops it; push anything else onto
 * `cleanups`. Call once, at the top of the file.
 */
export function scope() {
  const cleanups = [];
  after(() => {
    for (const f of cleanups.reverse()) f();
  });
  return {
    cleanups,
    track(c) {
      cleanups.push(() => c.close());
      return c;
    },
    serve(opts) {
      return startServer(opts).then((s) => {
        cleanups.push(() => s.cleanup());
        return s;
      });
    },
  };
}
