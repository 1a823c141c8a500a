// The page: one click to join, live state and charts, and the controls a volunteer expects.
import { Charts } from './charts.js';
import { loadEngine } from './loader.js';
import { Playground } from './playground.js';
import { loadSettings, saveSettings } from './settings.js';

const $ = (id) => document.getElementById(id);

const STATE_LABELS = {
  idle: 'not joined',
  loading: 'loading',
  connecting: 'connecting',
  catching_up: 'catching up',
  training: 'training',
  paused: 'paused',
  quarantined: 'quarantined',
  reconnecting: 'reconnecting',
  refused: 'refused',
  stopped: 'stopped',
  failed: 'failed',
};

const settings = loadSettings();
const charts = new Charts($('loss-chart'), $('rate-chart'), $('accuracy-chart'));
const playground = new Playground($('playground'));

let worker = null;
let leaveTimer = null;
let userPaused = false;
let onBattery = false;
let lastProgress = null;
/** When Join was pressed, until the first contribution is accepted. */
let joinedAt = null;
let swarm = { loss: null, rate: null, peers: null };

function formatBytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function showState(state, detail = '') {
  const badge = $('state');
  badge.dataset.state = state;
  badge.textContent = STATE_LABELS[state] ?? state;
  $('state-detail').textContent = detail;
  $('catchup').hidden = state !== 'catching_up';
}

// --- pausing: by hand, when hidden, on battery -------------------------------------------------

function autoPauseReason() {
  if (settings.pauseWhenHidden && document.visibilityState === 'hidden') return 'this tab is hidden';
  if (settings.pauseOnBattery && onBattery) return 'this device is on battery';
  return null;
}

function applyPause() {
  const reason = userPaused ? 'paused by you' : autoPauseReason();
  const paused = reason !== null;
  const button = $('pause');
  button.textContent = userPaused ? 'Resume' : 'Pause';
  button.setAttribute('aria-pressed', String(userPaused));
  worker?.postMessage({ type: paused ? 'pause' : 'resume' });
  return reason;
}

document.addEventListener('visibilitychange', applyPause);

async function watchBattery() {
  if (!navigator.getBattery) {
    $('battery-note').textContent = ' (this browser does not say)';
    return;
  }
  try {
    const battery = await navigator.getBattery();
    const update = () => {
      onBattery = !battery.charging;
      applyPause();
    };
    battery.addEventListener('chargingchange', update);
    update();
  } catch {
    $('battery-note').textContent = ' (this browser does not say)';
  }
}

// --- controls ---------------------------------------------------------------------------------

function initControls() {
  const throttle = $('throttle');
  throttle.value = settings.throttle;
  $('throttle-value').textContent = `${settings.throttle} %`;
  throttle.addEventListener('input', () => {
    settings.throttle = Number(throttle.value);
    $('throttle-value').textContent = `${settings.throttle} %`;
    saveSettings(settings);
    worker?.postMessage({ type: 'throttle', share: settings.throttle / 100 });
  });
  for (const [id, key] of [
    ['pause-hidden', 'pauseWhenHidden'],
    ['pause-battery', 'pauseOnBattery'],
  ]) {
    const box = $(id);
    box.checked = settings[key];
    box.addEventListener('change', () => {
      settings[key] = box.checked;
      saveSettings(settings);
      applyPause();
    });
  }
  const backend = $('backend-choice');
  backend.value = settings.backend;
  backend.addEventListener('change', () => {
    settings.backend = backend.value;
    saveSettings(settings);
  });
  $('pause').addEventListener('click', () => {
    userPaused = !userPaused;
    applyPause();
  });
  $('join').addEventListener('click', join);
  $('leave').addEventListener('click', leave);
  $('data-file').addEventListener('change', () => {
    document.querySelector('input[name=data][value=file]').checked = true;
  });
}

// --- events from the worker ----------------------------------------------------------------------

function onEvent(event) {
  switch (event.type) {
    case 'state':
      if (event.state === 'paused' || event.state === 'training') {
        const reason = userPaused ? 'paused by you' : autoPauseReason();
        showState(event.state, event.state === 'paused' && reason ? `paused: ${reason}` : event.detail);
      } else {
        showState(event.state, event.detail);
      }
      break;
    case 'backend': {
      const lanes = event.lanes > 1 ? ` · ${event.lanes} directions per pass` : '';
      $('backend').textContent =
        (event.backend === 'webgpu' ? `WebGPU · ${event.adapter}` : 'CPU (WebAssembly)') + lanes;
      $('backend').title = [event.reason, event.measured].filter(Boolean).join('\n') || event.adapter;
      if (event.reason) $('backend').textContent += ` — ${event.reason}`;
      if (event.measured) $('backend').textContent += ` (measured: ${event.measured})`;
      break;
    }
    case 'data':
      // What this tab trains on, so a person sees that their file was read (and how).
      $('data-summary').textContent = event.language
        ? `Training on ${event.name}: ${event.train} train and ${event.test} held-out windows.`
        : event.labelWords.length
          ? `Training on ${event.name}: ${event.train} train and ${event.test} test examples, each ` +
            `read in the job's prompt and classified by the word the model would write next: ` +
            `${event.labelWords.join(' or ')}.`
          : `Training on ${event.name}: ${event.train} train and ${event.test} test examples, ` +
            `${event.features} features, ${event.classes} classes.`;
      $('samples-card').hidden = !event.language;
      $('accuracy-chart').hidden = event.language;
      $('bpc-stat').hidden = !event.language;
      $('bpc-label').textContent = `Bits per ${event.tokenUnit}`;
      $('playground-card').hidden = event.language || event.features !== 2;
      playground.setData(event.points, event.labels);
      break;
    case 'progress':
      onProgress(event);
      break;
    case 'hash':
      $('hash-version').textContent = event.version;
      $('hash').textContent = event.hash;
      break;
    case 'model':
      $('accuracy').textContent = `${(event.accuracy * 100).toFixed(1)} %`;
      if (event.bitsPerChar != null) $('bpc').textContent = event.bitsPerChar.toFixed(3);
      if (event.sample != null) $('sample').textContent = `the ${event.sample}`;
      if (!$('accuracy-chart').hidden) charts.addAccuracy(event.accuracy);
      showExamples(event.examples);
      playground.setModel(event);
      break;
    case 'ended':
      if (event.error) showState($('state').dataset.state === 'refused' ? 'refused' : 'failed', event.error);
      else showState('stopped', 'left the relay');
      finish();
      break;
  }
}

// A prompt classifier's held-out examples: the prompt, the word the model would write next and
// how sure it is, marked right or wrong.
function showExamples(examples) {
  $('examples-card').hidden = !examples?.length;
  if (!examples?.length) return;
  $('examples').replaceChildren(
    ...examples.map((e) => {
      const item = document.createElement('li');
      const right = e.predicted === e.truth;
      item.className = right ? 'right' : 'wrong';
      const prompt = document.createElement('span');
      prompt.className = 'prompt';
      prompt.textContent = e.text;
      const answer = document.createElement('strong');
      answer.textContent = `${e.predicted} (${(e.probability * 100).toFixed(0)} %)`;
      const verdict = document.createElement('span');
      verdict.className = 'verdict';
      verdict.textContent = right ? ' ✓' : ` ✗ (labelled ${e.truth})`;
      item.append(prompt, answer, verdict);
      return item;
    }),
  );
}

function onProgress(p) {
  lastProgress = p;
  if (p.accepted > 0 && joinedAt != null) {
    $('first-contribution').textContent = `${((performance.now() - joinedAt) / 1000).toFixed(1)} s after Join`;
    joinedAt = null;
  }
  $('peer').textContent = p.peer ?? '–';
  $('version').textContent = p.version;
  $('accepted').textContent = p.accepted;
  $('rejected').textContent = p.rejected;
  // A private job: what this tab's contributions have cost its data so far.
  $('privacy-figure').hidden = p.privacyEpsilon == null;
  if (p.privacyEpsilon != null) $('privacy').textContent = `ε ${p.privacyEpsilon.toFixed(2)} · δ ${p.privacyDelta.toExponential(0)}`;
  $('rate').textContent = p.contributionsPerS.toFixed(1);
  // A small model's CPU step takes a fraction of a millisecond.
  $('step-ms').textContent = p.stepMs == null ? '–' : p.stepMs < 10 ? p.stepMs.toPrecision(2) : p.stepMs.toFixed(0);
  $('busy').textContent = p.busyShare == null ? '–' : Math.round(100 * p.busyShare);
  $('memory').textContent = formatBytes(p.wasmMemoryBytes);
  $('bytes-sent').textContent = formatBytes(p.bytesSent);
  $('bytes-received').textContent = formatBytes(p.bytesReceived);
  $('bytes-fp32').textContent = formatBytes(p.fp32Bytes);
  const used = p.bytesSent + p.bytesReceived;
  $('bytes-ratio').textContent = p.fp32Bytes > 0 && used > 0 ? `${Math.round((2 * p.fp32Bytes) / used)}× what this tab used` : '–';
  const span = p.head - p.start;
  $('catchup-progress').value = span > 0 ? Math.min(1, (p.version - p.start) / span) : 1;
}

// --- the swarm, from the relay's status ----------------------------------------------------------

async function pollStatus() {
  try {
    const response = await fetch('/api/status', { cache: 'no-store' });
    if (response.ok) {
      const s = await response.json();
      swarm = { loss: s.last_reported_loss, rate: s.contributions_per_s, peers: s.peers };
      $('peers').textContent = s.peers;
    }
  } catch {
    // The relay may be restarting; the connection state already says so.
  }
  if (worker) {
    charts.addLoss(lastProgress?.loss ?? null, swarm.loss);
    charts.addActivity(swarm.rate, lastProgress?.contributionsPerS ?? null, swarm.peers);
  }
}

// --- joining and leaving -------------------------------------------------------------------------

async function readOptions() {
  const options = {
    relay: location.origin,
    backend: settings.backend,
    throttle: settings.throttle / 100,
    paused: userPaused || autoPauseReason() !== null,
    seed: crypto.getRandomValues(new Uint32Array(1))[0],
    // A relay that needs a join token hands out links with `?token=…`.
    token: new URLSearchParams(location.search).get('token') ?? '',
  };
  const useFile = document.querySelector('input[name=data]:checked').value === 'file';
  if (useFile) {
    const file = $('data-file').files[0];
    if (!file) throw new Error('choose a file first, or use the built-in data');
    options.file = await file.text();
    options.fileName = file.name;
  }
  return options;
}

async function join() {
  $('join').disabled = true;
  // From the press to the first accepted contribution: download, compile, snapshot, catch-up.
  joinedAt = performance.now();
  $('first-contribution').textContent = '–';
  let options;
  try {
    options = await readOptions();
  } catch (error) {
    showState('failed', error.message);
    $('join').disabled = false;
    return;
  }
  $('data-choice').disabled = true;
  $('backend-choice').disabled = true;
  showState('loading', 'downloading the engine');
  $('loading').hidden = false;
  let module;
  try {
    module = await loadEngine(new URL('pkg/client_wasm_bg.wasm', import.meta.url), {
      onDownload(received, total) {
        const bar = $('load-progress');
        if (total) {
          bar.max = total;
          bar.value = received;
        }
        $('load-label').textContent = `Downloading the engine… ${formatBytes(received)}${total ? ` of ${formatBytes(total)}` : ''}`;
      },
      onCompile(size) {
        $('load-progress').removeAttribute('value');
        $('load-label').textContent = `Compiling the engine (${formatBytes(size)})…`;
      },
    });
  } catch (error) {
    $('loading').hidden = true;
    showState('failed', `could not load the engine: ${error.message}`);
    finish();
    return;
  }
  $('loading').hidden = true;
  worker = new Worker(new URL('peer-worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = ({ data }) => onEvent(data);
  worker.onerror = (e) => {
    showState('failed', e.message || 'the worker failed');
    finish();
  };
  worker.postMessage({ type: 'start', module, options });
  // The tab may have been hidden, or the throttle moved, while the engine downloaded.
  applyPause();
  worker.postMessage({ type: 'throttle', share: settings.throttle / 100 });
  $('pause').disabled = false;
  $('join').hidden = true;
  $('leave').hidden = false;
  $('leave').disabled = false;
  $('leave').focus();
}

function leave() {
  $('leave').disabled = true;
  const leaving = worker;
  leaving?.postMessage({ type: 'stop' });
  // A worker busy in a long step still stops: give it a moment, then end it.
  leaveTimer = setTimeout(() => {
    if (worker === leaving && worker) {
      showState('stopped', 'left the relay');
      finish();
    }
  }, 3000);
}

function finish() {
  clearTimeout(leaveTimer);
  const hadFocus = document.activeElement === $('leave');
  worker?.terminate();
  worker = null;
  $('pause').disabled = true;
  $('join').hidden = false;
  $('join').disabled = false;
  $('leave').hidden = true;
  $('data-choice').disabled = false;
  $('backend-choice').disabled = false;
  if (hadFocus) $('join').focus();
}

initControls();
watchBattery();
showState('idle', 'press Join to lend this tab to the training job');
setInterval(pollStatus, 2000);
pollStatus();
