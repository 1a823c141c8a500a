// <onebyte-demo> on a plain static page (no relay): local mode trains, its replicas agree, and
// one Step is exactly one log entry showing the byte the engine produced.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { ROOT, launch, scratch, screenshot, serveStatic, startRelay, waitFor, within } from './harness.mjs';

// The log codec from its definition (sign in bit 7; levels 1..127 geometric over the demo job's
// range [1e-3, 100]; below half the first step is zero), written here apart from the engine.
function logByte(g, min = 1e-3, max = 100) {
  if (Number.isNaN(g) || g === 0) return 0;
  const pos = Math.log(Math.abs(g) / min) / (Math.log(max / min) / 126);
  const level = pos < -0.5 ? 0 : pos >= 126 ? 127 : Math.min(Math.max(Math.round(pos), 0), 125) + 1;
  if (level === 0) return 0;
  return g < 0 ? 0x80 | level : level;
}

test('the embedded widget trains in local mode with equal hashes, one entry per Step', async () => {
  const server = await serveStatic(path.join(ROOT, 'web'));
  const browser = await launch({ webgpu: false });
  try {
    const { page, problems } = browser;
    await page.goto(`${server.url}/embed.html`);
    const demo = page.locator('#demo');
    const step = demo.getByRole('button', { name: 'Step' });
    // The engine loads and compiles first; on failure, say what the widget showed instead.
    await within('the widget\'s Step button (the engine loaded)', step.waitFor(), () =>
      page.evaluate(() =>
        [...(document.getElementById('demo').shadowRoot?.children ?? [])]
          .filter((el) => el.localName !== 'style')
          .map((el) => el.textContent.trim())
          .join(' '),
      ),
    );
    const state = () =>
      page.evaluate(() => {
        const el = document.getElementById('demo');
        const text = (name) => el.shadowRoot.querySelector(`[data-v="${name}"]`).textContent;
        const s = el.lastStep;
        return {
          version: el.version,
          shownVersion: Number(text('version')),
          shownByte: text('byte'),
          shownBits: text('bits'),
          agree: text('agree'),
          accuracy: parseFloat(text('accuracy')),
          step: s,
        };
      });
    const start = await state();
    assert.equal(start.version, 0);

    for (let i = 1; i <= 3; i++) {
      await step.click();
      const s = await state();
      assert.equal(s.version, i, 'one Step is exactly one log entry');
      assert.equal(s.shownVersion, i);
      assert.equal(s.step.version, i);
      // The byte shown is Q of the projected gradient shown, by the codec's definition.
      assert.equal(s.shownByte, String(s.step.byte));
      assert.equal(s.step.byte, logByte(s.step.g), `Q(${s.step.g})`);
      assert.equal(s.shownBits, s.step.byte.toString(2).padStart(8, '0'));
      assert.equal(s.step.peer, (i - 1) % 4, 'peers take turns');
      assert.equal(s.step.hashes.length, 4);
      assert.ok(s.step.hashes.every((h) => h === s.step.hashes[0]), 'replicas differ');
      assert.match(s.agree, /all 4 replicas hold the same weights/);
    }
    await screenshot(page, 'widget-step.png');

    await demo.getByRole('combobox').selectOption('fast');
    await demo.getByRole('button', { name: 'Play' }).click();
    await waitFor('600 log entries', state, (s) => s.version >= 600);
    await demo.getByRole('button', { name: 'Pause' }).click();
    const trained = await state();
    assert.ok(trained.step.hashes.every((h) => h === trained.step.hashes[0]), 'replicas differ');
    assert.ok(
      trained.accuracy > start.accuracy,
      `accuracy went from ${start.accuracy} % to ${trained.accuracy} %`,
    );
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    await server.close();
  }
});

test('the widget in live mode joins a real relay from another origin', async () => {
  const tmp = scratch();
  let relayUrl = null;
  const server = await serveStatic(path.join(ROOT, 'web'), {
    '/live.html': () =>
      `<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,">` +
      `<script type="module" src="widget/onebyte-demo.js"></script>` +
      `<onebyte-demo id="live" relay="${relayUrl.replace('http', 'ws')}"></onebyte-demo>`,
  });
  const relay = await startRelay(path.join(tmp.dir, 'relay.db'), ['--allow-origin', server.url]);
  relayUrl = relay.url;
  const browser = await launch({ webgpu: false });
  try {
    const { page, problems } = browser;
    await page.goto(`${server.url}/live.html`);
    const live = () =>
      page.evaluate(() => {
        const root = document.getElementById('live').shadowRoot;
        const text = (name) => root.querySelector(`[data-v="${name}"]`)?.textContent ?? '';
        return { state: text('state'), accepted: Number(text('accepted')), hash: text('hash') };
      });
    // On a busy machine an answer may come late and the widget say "catching up" for a moment:
    // wait for "training" with 10 accepted (a widget that never says "training" still fails).
    const seen = await waitFor(
      '10 accepted contributions from the widget, training',
      live,
      (s) => s.accepted >= 10 && s.state === 'training',
    );
    assert.equal(seen.state, 'training', JSON.stringify(seen));
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    await relay.kill();
    await server.close();
    tmp.cleanup();
  }
});
