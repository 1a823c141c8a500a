// Pause and resume, a relay restart, and a refusal, as the page shows them.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { join, launch, pageStatus, scratch, sleep, startRelay, waitFor } from './harness.mjs';

test('pause stops contributions, resume restarts them, a relay restart reconnects', async () => {
  const tmp = scratch();
  let relay = await startRelay(path.join(tmp.dir, 'relay.db'));
  const browser = await launch({ webgpu: false });
  try {
    const { page, problems } = browser;
    await join(page, relay.url);
    await waitFor('20 accepted', () => pageStatus(page), (s) => s.accepted >= 20);

    await page.getByRole('button', { name: 'Pause' }).click();
    // What was in flight may still land (up to the window, however late on a loaded machine):
    // wait until the paused peer reports none in flight. A paused peer proposes nothing, so
    // from then on its count must hold.
    const paused = (
      await waitFor(
        'the paused state with no contribution in flight',
        () => pageStatus(page),
        (s) => s.state === 'paused' && s.inFlight === 0,
      )
    ).accepted;
    // A while to see whether anything more lands (not a wait for anything: a slower machine
    // only looks for less long).
    await sleep(3000);
    const still = await pageStatus(page);
    assert.equal(still.state, 'paused');
    assert.equal(still.accepted, paused, 'contributions were accepted while paused');

    await page.getByRole('button', { name: 'Resume' }).click();
    await waitFor('training again', () => pageStatus(page), (s) => s.state === 'training' && s.accepted > paused + 10);

    await relay.kill();
    const seen = await waitFor('the reconnecting state', () => pageStatus(page), (s) => s.state === 'reconnecting');
    assert.match(seen.detail, /relay|connect/i);
    const before = seen.accepted;
    // Held in `relay` at once, so that `finally` stops the new one whatever fails next.
    relay = await relay.restart();
    await waitFor(
      'training after the restart',
      () => pageStatus(page),
      (s) => s.state === 'training' && s.accepted > before + 10,
      300_000,
    );
    // The relay's own console error for the refused socket is expected while it is down.
    assert.deepEqual(problems.filter((p) => !/WebSocket connection|ERR_CONNECTION_REFUSED/.test(p)), []);
  } finally {
    await browser.close();
    await relay.kill();
    tmp.cleanup();
  }
});

test('a relay that refuses the peer shows its reason', async () => {
  const tmp = scratch();
  const relay = await startRelay(path.join(tmp.dir, 'relay.db'), ['--join-token', 'sesame']);
  const browser = await launch({ webgpu: false });
  try {
    const { page } = browser;
    await join(page, relay.url);
    const refused = await waitFor('the refused state', () => pageStatus(page), (s) => s.state === 'refused' || s.state === 'training');
    assert.equal(refused.state, 'refused');
    assert.match(refused.detail, /join token/);
  } finally {
    await browser.close();
    await relay.kill();
    tmp.cleanup();
  }
});

test('a CSV from the file picker trains, and the page fits a phone-wide screen', async () => {
  const tmp = scratch();
  const relay = await startRelay(path.join(tmp.dir, 'relay.db'));
  const browser = await launch({ webgpu: false });
  try {
    const { page, problems } = browser;
    await page.setViewportSize({ width: 360, height: 900 });
    await page.goto(relay.url);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than a 360 px screen`);
    // Two noisy blobs; the label in the last column, a header row.
    let csv = 'x,y,label\n';
    for (let i = 0; i < 400; i++) {
      const label = i % 2;
      const jitter = (k) => Math.sin(i * 12.9898 + k) * 0.3;
      csv += `${label ? 1 + jitter(1) : -1 + jitter(2)},${label ? 1 + jitter(3) : -1 + jitter(4)},${label}\n`;
    }
    await page.locator('#data-file').setInputFiles({ name: 'blobs.csv', mimeType: 'text/csv', buffer: Buffer.from(csv) });
    assert.equal(await page.locator('input[name=data][value=file]').isChecked(), true);
    await page.getByRole('button', { name: 'Join' }).click();
    await waitFor('10 accepted from the CSV', () => pageStatus(page), (s) => s.accepted >= 10);
    // The tab trains on the file, not on the job's built-in spirals: 400 rows split 80/20.
    assert.equal(
      await page.locator('#data-summary').textContent(),
      'Training on blobs.csv: 320 train and 80 test examples, 2 features, 2 classes.',
    );
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    await relay.kill();
    tmp.cleanup();
  }
});
