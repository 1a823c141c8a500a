// The page as a peer, measured: contributions/s and the share of time busy (proposing or
// applying the log) for the demo job and a char LM job, on the page's WebGPU (SwiftShader here)
// and on its CPU backend in wasm. Alone with the relay, so nothing but the tab sets the pace.
// Run by `cargo xtask bench`, never by CI (the figures are what we look at, not assertions).
// `node bench.mjs --only gpt2` measures only the GPT-2-small shape's tab (below).
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { join, launch, pageStatus, scratch, sleep, startRelay, startWorker, waitFor } from './harness.mjs';

const MEASURE_MS = 15_000;

const JOBS = [
  // A native worker does the demo's 10 000 contributions in about a second: start-up would be
  // most of it, so it does 50 000.
  { name: 'demo (spirals MLP)', toml: null, data: 'builtin:spirals', native: 50_000 },
  {
    name: 'char LM (tales)',
    toml:
      '[job]\nname = "tales-lm"\n[model]\nkind = "char_lm"\nembedding = 8\nhidden = [64]\n' +
      '[task]\nfeatures = 8\nclasses = 256\ndataset = "tales"\n[hyper]\nbatch_size = 64\n',
    data: 'builtin:tales',
    native: 10_000,
  },
];

/** A scratch directory and a relay hosting `job` (its TOML, or the built-in demo). */
async function relayFor(job) {
  const tmp = scratch();
  // No per-peer rate limit in the way (2 000/s by default): the peer's own pace is measured.
  const args = ['--rate-limit', '1000000'];
  if (job.toml) {
    const file = path.join(tmp.dir, 'job.toml');
    writeFileSync(file, job.toml);
    args.push('--job', file);
  }
  return { tmp, relay: await startRelay(path.join(tmp.dir, 'relay.db'), args) };
}

async function measure(job, backend) {
  const { tmp, relay } = await relayFor(job);
  const browser = await launch({ webgpu: backend === 'webgpu' });
  try {
    const { page } = browser;
    await join(page, relay.url, { backend });
    await waitFor('training with a contribution accepted', () => pageStatus(page), (s) => s.state === 'training' && s.accepted > 0, 300_000);
    // Let the busy share's 5 s window fill with training only.
    await sleep(6_000);
    const first = await pageStatus(page);
    const began = Date.now();
    await sleep(MEASURE_MS);
    const last = await pageStatus(page);
    const seconds = (Date.now() - began) / 1000;
    const rejected = last.rejected - first.rejected;
    const shown = await page.evaluate(() => ({
      busy: Number(document.getElementById('busy').textContent),
      stepMs: Number(document.getElementById('step-ms').textContent),
    }));
    return {
      backend: last.backend,
      perSecond: (last.accepted - first.accepted) / seconds,
      rejected,
      busy: shown.busy,
      stepMs: shown.stepMs,
      state: last.state,
    };
  } finally {
    await browser.close();
    await relay.kill();
    tmp.cleanup();
  }
}

/** A native worker (CPU) alone with the relay, for comparison: accepted/s and busy share. */
async function measureNative(job) {
  const { tmp, relay } = await relayFor(job);
  try {
    const contributions = job.native;
    const began = Date.now();
    const report = await startWorker(relay.url, ['--contributions', String(contributions), '--data', job.data]).result;
    const seconds = (Date.now() - began) / 1000;
    return { perSecond: report.accepted / seconds, busy: Math.round(100 * (report.busy_share ?? 0)) };
  } finally {
    await relay.kill();
    tmp.cleanup();
  }
}

// GPT-2 small's shape (12 layers, width 768, a 50 257-token vocabulary, 32 positions;
// d = 123 677 952): the relay makes its random θ (494.7 MB); the page's CPU backend loads the snapshot and trains on
// the tales text as bytes. What it costs the tab's memory, and one step's time.
const GPT2_SMALL_SHAPE =
  '[job]\nname = "bench-gpt2-small-shape"\n[model]\nkind = "transformer"\nlayers = 12\nwidth = 768\n' +
  'heads = 12\ncontext = 32\n[task]\nfeatures = 32\nclasses = 50257\ndataset = "tales"\n' +
  '[hyper]\nbatch_size = 4\nlearning_rate = 1e-5\nepsilon = 1e-3\n';
const GPT2_THETA_BYTES = 4 * 123_677_952;

/** The page's CPU backend on the GPT-2-small shape: its WebAssembly memory once it trains. */
async function measureGpt2Memory() {
  const { tmp, relay } = await relayFor({ toml: GPT2_SMALL_SHAPE });
  const browser = await launch({ webgpu: false });
  try {
    const { page } = browser;
    const began = Date.now();
    await join(page, relay.url, { backend: 'cpu' });
    const status = await waitFor(
      'a contribution accepted on the GPT-2-small shape',
      () => pageStatus(page),
      (s) => s.accepted > 0 && s.wasmMemoryBytes != null,
      900_000,
    );
    const stepMs = await page.evaluate(() => Number(document.getElementById('step-ms').textContent));
    return { memory: status.wasmMemoryBytes, stepMs, seconds: (Date.now() - began) / 1000 };
  } finally {
    await browser.close();
    await relay.kill();
    tmp.cleanup();
  }
}

const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : null;
if (only !== 'gpt2') console.log(`the page alone with a relay, ${MEASURE_MS / 1000} s per figure, throttle 100 %`);
for (const job of only === 'gpt2' ? [] : JOBS) {
  console.log(`\n${job.name}`);
  console.log('  backend   accepted/s   busy   idle   one step   rejected   what the page said');
  const rates = {};
  for (const backend of ['webgpu', 'cpu']) {
    const r = await measure(job, backend);
    rates[backend] = r.perSecond;
    console.log(
      `  ${backend.padEnd(7)} ${r.perSecond.toFixed(1).padStart(11)} ${String(r.busy).padStart(5)} % ${String(100 - r.busy).padStart(4)} % ${r.stepMs.toPrecision(2).padStart(7)} ms ${String(r.rejected).padStart(10)}   ${r.backend}`,
    );
  }
  const native = await measureNative(job);
  console.log(
    `  native  ${native.perSecond.toFixed(1).padStart(11)} ${String(native.busy).padStart(5)} % ${String(100 - native.busy).padStart(4)} %                         onebyte join --backend cpu (${job.native} contributions, start-up included)`,
  );
  console.log(`  WebGPU / CPU in the page: ${(rates.webgpu / rates.cpu).toFixed(2)}×, the page's CPU / native: ${(rates.cpu / native.perSecond).toFixed(2)}×`);
}

console.log('\nGPT-2 small shape (d = 123 677 952, θ 494.7 MB), the page\'s CPU backend');
const gpt2 = await measureGpt2Memory();
console.log(
  `  WebAssembly memory once training: ${(gpt2.memory / 1e6).toFixed(1)} MB = ${(gpt2.memory / GPT2_THETA_BYTES).toFixed(2)}× θ (goal ≤ 1.3× plus activations); one step ${(gpt2.stepMs / 1000).toFixed(1)} s; Join to the first accepted contribution ${gpt2.seconds.toFixed(0)} s`,
);
