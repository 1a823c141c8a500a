// <onebyte-demo>: one-byte zeroth-order training, live, for teaching material.
//
//   <script type="module" src="https://your.host/widget/onebyte-demo.js"></script>
//   <onebyte-demo peers="4" dataset="spirals"></onebyte-demo>
//
// Local mode (the default) simulates `peers` replicas inside the tab through the engine's
// in-memory log: every step is one log entry, and the step view walks through it — the seed,
// the ± direction, the two losses, the projected gradient, its byte, and every replica applying
// it with equal hashes. Live mode (`relay="wss://…"`) joins a real relay as a peer.
//
// Attributes: peers (1–16), dataset (spirals | moons | circles), learning-rate, speed
// (slow | normal | fast), relay, autoplay. Theme with --onebyte-accent, --onebyte-bg,
// --onebyte-fg, --onebyte-muted, --onebyte-plus, --onebyte-minus, --onebyte-font.
import init, { Client, LocalSwarm } from '../pkg/client_wasm.js';
import { Playground } from '../playground.js';

let wasmReady = null;
function loadWasm() {
  wasmReady ??= init({ module_or_path: new URL('../pkg/client_wasm_bg.wasm', import.meta.url) });
  return wasmReady;
}

const SPEEDS = {
  slow: { interval: 1500, batch: 1 },
  normal: { interval: 250, batch: 1 },
  fast: { interval: 50, batch: 8 },
};

const STYLE = `
:host {
  --accent: var(--onebyte-accent, #2457c5);
  --bg: var(--onebyte-bg, #ffffff);
  --fg: var(--onebyte-fg, #1d1d1b);
  --muted: var(--onebyte-muted, #5c5c57);
  --plus: var(--onebyte-plus, #1c7c3c);
  --minus: var(--onebyte-minus, #b3261e);
  display: block;
  font-family: var(--onebyte-font, system-ui, sans-serif);
  color: var(--fg);
  background: var(--bg);
  border: 1px solid color-mix(in srgb, var(--fg) 15%, transparent);
  border-radius: 10px;
  padding: 0.9rem;
  max-width: 760px;
}
.bar { display: flex; flex-wrap: wrap; gap: 0.5rem; align-items: center; }
button, select { font: inherit; padding: 0.3rem 0.8rem; border-radius: 6px; border: 1px solid var(--muted); background: var(--bg); color: var(--fg); cursor: pointer; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button:focus-visible, select:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
button:disabled { opacity: 0.5; cursor: default; }
.status { margin-left: auto; color: var(--muted); font-variant-numeric: tabular-nums; }
.body { display: grid; grid-template-columns: minmax(0, 1fr) 200px; gap: 0.9rem; margin-top: 0.8rem; }
@media (max-width: 560px) { .body { grid-template-columns: 1fr; } }
ol { margin: 0; padding-left: 1.3rem; }
li { margin: 0 0 0.55rem; }
li h3 { font-size: 0.95rem; margin: 0; }
.v { font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.signs { display: flex; flex-wrap: wrap; gap: 2px; margin-top: 0.2rem; }
.signs span { width: 9px; height: 9px; border-radius: 2px; }
.signs .p { background: var(--plus); }
.signs .m { background: var(--minus); }
.bits span { padding: 0 1px; }
.bits .sign { color: var(--accent); font-weight: 700; }
.hashes { list-style: none; padding: 0; margin: 0.2rem 0 0; }
.ok { color: var(--plus); font-weight: 600; }
.bad { color: var(--minus); font-weight: 600; }
canvas { width: 100%; aspect-ratio: 1; border-radius: 6px; background: #eee; }
.note { color: var(--muted); font-size: 0.85rem; }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
@media (prefers-reduced-motion: no-preference) { .fresh { animation: flash 0.6s ease-out; } }
@keyframes flash { from { background: color-mix(in srgb, var(--accent) 20%, transparent); } to { background: transparent; } }
`;

const LOCAL_VIEW = `
<div class="bar" role="toolbar" aria-label="Training controls">
  <button class="primary" part="play" data-act="play">Play</button>
  <button part="step" data-act="step">Step</button>
  <label>Speed <select data-act="speed">
    <option value="slow">slow</option><option value="normal">normal</option><option value="fast">fast</option>
  </select></label>
  <span class="status"><span data-v="version">0</span> log entries · accuracy <span data-v="accuracy">–</span></span>
  <span class="sr-only" role="status" aria-live="polite" data-v="announce"></span>
</div>
<div class="body">
  <ol aria-label="The latest step" data-v="steps">
    <li><h3>1 · The seed</h3>
      <div class="note">SHA-256("onebyte/direction/v1" ‖ job ‖ peer ‖ counter): peer <span class="v" data-v="peer">–</span>, counter <span class="v" data-v="counter">–</span></div>
      <div class="v" data-v="seed">press Step</div></li>
    <li><h3>2 · The direction z (first of <span data-v="params">–</span> parameters)</h3>
      <div class="signs" data-v="direction" role="img" aria-label="signs of the direction"></div>
      <div class="note">Each parameter moves by +1 or −1, regenerated from the seed by every peer.</div></li>
    <li><h3>3 · Two forward passes</h3>
      <div class="v">L(θ + εz) = <span data-v="lossPlus">–</span>, L(θ − εz) = <span data-v="lossMinus">–</span>, ε = <span data-v="epsilon">–</span></div></li>
    <li><h3>4 · The projected gradient</h3>
      <div class="v">g = (L₊ − L₋) / 2ε = <span data-v="g">–</span></div></li>
    <li><h3>5 · One byte</h3>
      <div class="v">byte <span data-v="byte">–</span> = <span class="bits" data-v="bits">–</span> → D(byte) = <span data-v="decoded">–</span></div></li>
    <li><h3>6 · Every replica applies it</h3>
      <div class="v">θ ← θ + c·z with c = −η·D(byte) = <span data-v="stepSize">–</span></div>
      <ul class="hashes v" data-v="hashes"></ul>
      <div data-v="agree"></div></li>
  </ol>
  <div><canvas width="200" height="200" role="img" aria-label="decision boundary of peer 0"></canvas>
    <div class="note">Peer 0's model over the data.</div></div>
</div>`;

const LIVE_VIEW = `
<div class="bar"><button data-act="pause">Pause</button>
  <span class="status"><span data-v="state" role="status" aria-live="polite">connecting</span> · version <span data-v="version">0</span> · accepted <span data-v="accepted">0</span></span></div>
<p class="note">Live: this tab is a peer of <span class="v" data-v="relay"></span>.</p>
<div class="v">weight hash at <span data-v="hashVersion">–</span>: <span data-v="hash">–</span></div>`;

class OnebyteDemo extends HTMLElement {
  static observedAttributes = ['speed'];

  constructor() {
    super();
    this.root = this.attachShadow({ mode: 'open' });
    this.playing = false;
    this.timer = null;
    /** The latest step's story, as the engine reported it. */
    this.lastStep = null;
    this.swarm = null;
  }

  get version() {
    return this.swarm ? this.swarm.version() : 0;
  }

  $(name) {
    return this.root.querySelector(`[data-v="${name}"]`);
  }

  async connectedCallback() {
    this.root.innerHTML = `<style>${STYLE}</style><p class="note">Loading the engine…</p>`;
    try {
      await loadWasm();
      // Removed from the page while the engine loaded: start nothing.
      if (!this.isConnected) return;
      if (this.hasAttribute('relay')) this.startLive();
      else this.startLocal();
    } catch (error) {
      this.fail(error);
    }
  }

  disconnectedCallback() {
    clearTimeout(this.timer);
    this.playing = false;
    this.client?.stop();
    // The wasm objects hold memory outside JavaScript's collector.
    this.swarm?.free();
    this.swarm = null;
    this.client = null;
  }

  fail(error) {
    clearTimeout(this.timer);
    this.playing = false;
    const alert = document.createElement('p');
    alert.setAttribute('role', 'alert');
    alert.textContent = `onebyte-demo: ${error?.message ?? error}`;
    this.root.replaceChildren(this.root.querySelector('style') ?? '', alert);
  }

  attributeChangedCallback(name, _old, value) {
    if (name === 'speed' && this.root.querySelector('[data-act=speed]')) {
      this.root.querySelector('[data-act=speed]').value = SPEEDS[value] ? value : 'normal';
    }
  }

  startLocal() {
    const number = (name, fallback) => (this.hasAttribute(name) ? Number(this.getAttribute(name)) : fallback);
    const options = {
      peers: number('peers', 4),
      dataset: this.getAttribute('dataset') ?? 'spirals',
      seed: number('seed', 1),
    };
    if (this.hasAttribute('learning-rate')) options.learningRate = number('learning-rate');
    this.swarm = new LocalSwarm(options);
    this.root.innerHTML = `<style>${STYLE}</style>${LOCAL_VIEW}`;
    this.playground = new Playground(this.root.querySelector('canvas'));
    const [points, labels] = this.swarm.points();
    this.playground.setData(points, labels);
    const speed = this.root.querySelector('[data-act=speed]');
    speed.value = SPEEDS[this.getAttribute('speed')] ? this.getAttribute('speed') : 'normal';
    this.root.querySelector('[data-act=play]').addEventListener('click', () => this.toggle());
    this.root.querySelector('[data-act=step]').addEventListener('click', () => this.stepOnce());
    this.showModel();
    if (this.hasAttribute('autoplay')) this.toggle();
  }

  toggle() {
    this.playing = !this.playing;
    const play = this.root.querySelector('[data-act=play]');
    play.textContent = this.playing ? 'Pause' : 'Play';
    play.setAttribute('aria-pressed', String(this.playing));
    this.root.querySelector('[data-act=step]').disabled = this.playing;
    if (this.playing) this.tick();
    else {
      clearTimeout(this.timer);
      this.announce();
    }
  }

  tick() {
    if (!this.playing) return;
    const { interval, batch } = SPEEDS[this.root.querySelector('[data-act=speed]').value];
    try {
      this.show(batch > 1 ? this.swarm.steps(batch) : this.swarm.step());
    } catch (error) {
      this.fail(error);
      return;
    }
    this.timer = setTimeout(() => this.tick(), interval);
  }

  /** Exactly one log entry. */
  stepOnce() {
    if (this.playing) return;
    try {
      this.show(this.swarm.step());
    } catch (error) {
      this.fail(error);
      return;
    }
    this.announce();
  }

  /** Tells screen readers where training stands: after a single step or a pause, not every step. */
  announce() {
    const s = this.lastStep;
    if (!s) return;
    const agree = s.hashes.every((h) => h === s.hashes[0]);
    this.$('announce').textContent =
      `Version ${s.version}: peer ${s.peer} sent byte ${s.byte}; ` +
      (agree ? `all ${s.hashes.length} replicas agree.` : 'replicas differ.');
  }

  show(step) {
    this.lastStep = step;
    const set = (name, text) => {
      const el = this.$(name);
      el.textContent = text;
      el.classList.remove('fresh');
      void el.offsetWidth;
      el.classList.add('fresh');
    };
    set('version', step.version);
    set('peer', step.peer);
    set('counter', step.counter);
    set('seed', step.seed);
    set('params', step.params);
    this.$('direction').replaceChildren(
      ...step.direction.map((s) => {
        const cell = document.createElement('span');
        cell.className = s > 0 ? 'p' : 'm';
        cell.title = s > 0 ? '+1' : '−1';
        return cell;
      }),
    );
    set('lossPlus', step.lossPlus.toFixed(5));
    set('lossMinus', step.lossMinus.toFixed(5));
    set('epsilon', Number(step.epsilon.toPrecision(6)));
    set('g', step.g.toPrecision(4));
    set('byte', step.byte);
    this.$('bits').innerHTML = `<span class="sign" title="sign bit">${step.bits[0]}</span><span title="magnitude level">${step.bits.slice(1)}</span>`;
    set('decoded', step.decoded.toPrecision(4));
    set('stepSize', step.step.toPrecision(4));
    this.$('hashes').replaceChildren(
      ...step.hashes.map((h, i) => {
        const li = document.createElement('li');
        li.textContent = `replica ${i}: ${h.slice(0, 16)}…`;
        li.title = h;
        return li;
      }),
    );
    const agree = step.hashes.every((h) => h === step.hashes[0]);
    const verdict = this.$('agree');
    verdict.className = agree ? 'ok' : 'bad';
    verdict.textContent = agree
      ? `all ${step.hashes.length} replicas hold the same weights at version ${step.version}`
      : 'replicas differ!';
    if (step.version % 25 === 0 || !this.playing) this.showModel();
  }

  showModel() {
    const model = this.swarm.model(40);
    this.$('accuracy').textContent = `${(model.accuracy * 100).toFixed(1)} %`;
    this.playground.setModel(model);
  }

  startLive() {
    const relay = this.getAttribute('relay');
    this.root.innerHTML = `<style>${STYLE}</style>${LIVE_VIEW}`;
    this.$('relay').textContent = relay;
    this.client = new Client({ relay, backend: 'auto' }, (event) => {
      if (event.type === 'state') this.$('state').textContent = event.state.replace('_', ' ');
      if (event.type === 'progress') {
        this.$('version').textContent = event.version;
        this.$('accepted').textContent = event.accepted;
      }
      if (event.type === 'hash') {
        this.$('hashVersion').textContent = event.version;
        this.$('hash').textContent = event.hash;
      }
    });
    const pause = this.root.querySelector('[data-act=pause]');
    let paused = false;
    pause.addEventListener('click', () => {
      paused = !paused;
      if (paused) this.client.pause();
      else this.client.resume();
      pause.textContent = paused ? 'Resume' : 'Pause';
    });
    this.client.run().catch((error) => {
      this.$('state').textContent = `stopped: ${error.message ?? error}`;
    });
  }
}

customElements.define('onebyte-demo', OnebyteDemo);
