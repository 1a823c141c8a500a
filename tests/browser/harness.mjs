// Real processes for the browser tests: the relay and native workers from target/debug, and
// Debian's Chromium driven by playwright-core. Everything talks over 127.0.0.1.
import { execFileSync, spawn } from 'node:child_process';
import { createReadStream, mkdtempSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.ONEBYTE_BIN_DIR ?? path.join(ROOT, 'target', 'debug');
export const ARTIFACTS = process.env.ONEBYTE_ARTIFACTS ?? path.join(ROOT, 'artifacts');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** A scratch directory removed when `cleanup` runs. */
export function scratch() {
  const dir = mkdtempSync(path.join(tmpdir(), 'onebyte-browser-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Starts `onebyte-relay` serving `web/`; resolves once it listens. */
export async function startRelay(store, args = [], listen = '127.0.0.1:0') {
  const proc = spawn(
    path.join(BIN, 'onebyte-relay'),
    ['--listen', listen, '--store', store, '--web', path.join(ROOT, 'web'), ...args],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' } },
  );
  const lines = createInterface({ input: proc.stdout });
  // A debug build opening its store on a loaded machine: minutes, not seconds, before giving up.
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error('timed out waiting for the relay to print "listening on" (180 s)'));
    }, 180_000);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the relay exited (${code}) before listening`));
    });
    lines.on('line', (line) => {
      const m = line.match(/^listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  const relay = {
    url,
    proc,
    args,
    store,
    /** SIGKILL: no shutdown code runs. */
    kill() {
      return new Promise((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        proc.once('exit', resolve);
        proc.kill('SIGKILL');
      });
    },
    /** The same relay again: same port, same store file. */
    async restart() {
      await relay.kill();
      const listenOn = new URL(url).host;
      // Until the port is free again: a deadline, not a count of tries (each try is a process
      // start, slower on a busy machine).
      const deadline = Date.now() + 60_000;
      for (;;) {
        try {
          return await startRelay(store, args, listenOn);
        } catch (error) {
          if (Date.now() > deadline) throw error;
          await sleep(200);
        }
      }
    },
  };
  return relay;
}

/** Runs `onebyte ARGS` to its end (a test's setup: `pretrain`, `simulate`); throws with its stderr. */
export function runOnebyte(args) {
  return execFileSync(path.join(BIN, 'onebyte'), args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '0', RUST_LIB_BACKTRACE: '0' },
  });
}

/**
 * Runs `onebyte join --relay URL --json ARGS…` (on the CPU unless ARGS name a backend);
 * `result` resolves with its JSON report. Await it through `finished`, which gives up after a
 * deadline and says what the worker printed last.
 */
export function startWorker(url, args = []) {
  const backend = args.includes('--backend') ? [] : ['--backend', 'cpu'];
  const proc = spawn(path.join(BIN, 'onebyte'), ['join', '--relay', url, '--json', ...backend, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // The error, not a backtrace, is what a failing test should show.
    env: { ...process.env, RUST_BACKTRACE: '0', RUST_LIB_BACKTRACE: '0' },
  });
  let out = '';
  let err = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (err += d));
  const result = new Promise((resolve, reject) => {
    proc.once('exit', (code) => {
      const last = out.trim().split('\n').pop();
      try {
        if (code === 0 && last?.startsWith('{')) resolve(JSON.parse(last));
        else reject(new Error(`onebyte join exited with ${code}: ${err.slice(-2000)}`));
      } catch (error) {
        reject(error);
      }
    });
  });
  result.catch(() => {});
  const lastLine = (text) => text.trim().split('\n').pop() || '(nothing)';
  const worker = {
    proc,
    result,
    kill: () => proc.kill('SIGKILL'),
    /** Its last line on stdout and on stderr, for a failure message. */
    lastOutput: () => `stdout: ${lastLine(out)}; stderr: ${lastLine(err)}`,
    /** `result`, or an error naming `what` and the worker's last output after `timeoutMs`. */
    finished: (what, timeoutMs = 180_000, seen = async () => worker.lastOutput()) =>
      within(what, result, seen, timeoutMs),
  };
  return worker;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Awaits `promise` for at most `timeoutMs`. When it fails or the time is up, the error names
 * `what` and the last thing `seen()` reports (the page's status, the relay's, a worker's last
 * line), so a timeout on a busy machine says what it was waiting for.
 */
export async function within(what, promise, seen, timeoutMs = 180_000) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, deadline]);
  } catch (error) {
    let last;
    try {
      last = await seen();
    } catch (e) {
      last = `(could not look: ${e.message})`;
    }
    last = typeof last === 'string' ? last : JSON.stringify(last);
    throw new Error(`waiting for ${what}: ${error.message}; last saw ${last}`, { cause: error });
  } finally {
    clearTimeout(timer);
  }
}

/** The relay's `/api/status` JSON. */
export async function relayStatus(url) {
  const response = await fetch(`${url}/api/status`);
  return response.json();
}

/**
 * Chromium, headless, in a fresh profile. `webgpu: true` enables WebGPU (SwiftShader here);
 * `false` turns it off, so the page must fall back to the CPU.
 */
export async function launch({ webgpu }) {
  const args = [
    '--no-sandbox',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-quic',
    ...(process.env.EXTRA_FLAGS ? process.env.EXTRA_FLAGS.split(' ') : []),
  ];
  // Here `--enable-unsafe-webgpu` yields SwiftShader's adapter; without it, and with WebGPU
  // disabled, `requestAdapter()` resolves to null.
  args.push(webgpu ? '--enable-unsafe-webgpu' : '--disable-features=WebGPU');
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'onebyte-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args,
    viewport: { width: 1200, height: 1400 },
    // Playwright's 30 s defaults (launch, navigation, actions) are too short on a busy 2-core
    // machine; what the tests wait for has its own deadline and message.
    timeout: 180_000,
  });
  context.setDefaultTimeout(180_000);
  // The page's peer worker says more than the page shows: count its state events and keep its
  // latest progress (contributions in flight), for `pageStatus`. It only listens.
  await context.addInitScript(() => {
    const peer = { stateEvents: 0, inFlight: null, wasmMemoryBytes: null };
    window.__onebytePeer = peer;
    const Base = window.Worker;
    if (!Base) return;
    window.Worker = class extends Base {
      constructor(...args) {
        super(...args);
        this.addEventListener('message', ({ data }) => {
          if (data?.type === 'state') {
            peer.stateEvents++;
            // Unknown until a progress event of this state: the worker sends it right after.
            peer.inFlight = null;
          } else if (data?.type === 'progress') {
            peer.inFlight = data.inFlight;
            peer.wasmMemoryBytes = data.wasmMemoryBytes;
          }
        });
      }
    };
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  return {
    page,
    problems,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Polls `read()` until `ok(value)` holds; fails with `what` and the last value otherwise. */
export async function waitFor(what, read, ok, timeoutMs = 180_000) {
  const deadline = Date.now() + timeoutMs;
  let value;
  for (;;) {
    value = await read();
    if (ok(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last saw ${JSON.stringify(value)}`);
    await sleep(250);
  }
}

/**
 * Opens the relay's page and presses Join, as a visitor does; `backend` picks "Compute on"
 * first (`auto`, `webgpu` or `cpu`).
 */
export async function join(page, url, { backend } = {}) {
  await page.goto(url);
  if (backend) await page.locator('#backend-choice').selectOption(backend);
  await page.getByRole('button', { name: 'Join' }).click();
}

/**
 * What the page shows: state, counters, backend, the latest weight hash; and from its peer
 * worker's events (see `launch`), how many state events it sent, its contributions in flight
 * as of a progress event sent in the current state (null before one) and its WebAssembly memory.
 */
export async function pageStatus(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    return {
      state: document.getElementById('state').dataset.state,
      detail: text('state-detail'),
      backend: text('backend'),
      accepted: Number(text('accepted')),
      rejected: Number(text('rejected')),
      version: Number(text('version')),
      hashVersion: Number(text('hash-version')) || 0,
      hash: text('hash'),
      stateEvents: window.__onebytePeer?.stateEvents ?? 0,
      inFlight: window.__onebytePeer?.inFlight ?? null,
      wasmMemoryBytes: window.__onebytePeer?.wasmMemoryBytes ?? null,
    };
  });
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.png': 'image/png' };

/**
 * A plain static file server for `dir` on 127.0.0.1 (not the relay): what any host offers.
 * `pages` maps extra paths to functions returning HTML, for pages a test writes.
 */
export async function serveStatic(dir, pages = {}) {
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (pages[url.pathname]) {
      res.writeHead(200, { 'content-type': 'text/html' }).end(pages[url.pathname]());
      return;
    }
    const file = path.join(dir, decodeURIComponent(url.pathname));
    if (!file.startsWith(dir)) {
      res.writeHead(403).end();
      return;
    }
    try {
      if (!statSync(file).isFile()) throw new Error('not a file');
    } catch {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}
