// The host's dashboard at /admin in a real browser, against a real relay with two native
// workers: it asks for the admin token, lists the peers with their counts and backend, pause
// stops them, and a dropped peer goes and stays gone.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { launch, scratch, screenshot, sleep, startRelay, startWorker, waitFor } from './harness.mjs';

/** The dashboard's peer rows: peer id, backend, accepted, and whether it offers Drop. */
function rows(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#peers tr')].map((tr) => ({
      peer: Number(tr.dataset.peer),
      backend: tr.cells[1].textContent,
      accepted: Number(tr.querySelector('[data-v=accepted]').textContent),
      connected: !tr.classList.contains('left'),
    })),
  );
}

test('the host dashboard shows two workers, pause stops them, a dropped peer stays gone', async () => {
  const tmp = scratch();
  const relay = await startRelay(path.join(tmp.dir, 'relay.db'), ['--admin-token', 'hostsecret']);
  const workers = [1, 2].map((seed) => startWorker(relay.url, ['--seed', String(seed)]));
  const browser = await launch({ webgpu: false });
  try {
    const { page, problems } = browser;
    await page.goto(`${relay.url}/admin`);
    // A wrong token is refused with the relay's reason, and the board stays hidden.
    await page.locator('#token').fill('guess');
    await page.getByRole('button', { name: 'Show' }).click();
    await waitFor('the refusal', () => page.locator('#error').textContent(), (t) => t.includes('wrong or missing admin token'));
    assert.equal(await page.locator('#board').isHidden(), true);

    await page.locator('#token').fill('hostsecret');
    await page.getByRole('button', { name: 'Show' }).click();
    const both = await waitFor(
      'two connected workers with accepted contributions',
      () => rows(page),
      (r) => r.filter((p) => p.connected && p.accepted > 0).length === 2,
      60_000,
    );
    assert.ok(both.every((p) => p.backend === 'cpu'), JSON.stringify(both));
    await screenshot(page, 'admin-dashboard.png');

    // Pause: from the moment the relay says "paused", nothing more is accepted.
    await page.getByRole('button', { name: 'Pause training' }).click();
    await waitFor('paused', () => page.locator('#training').textContent(), (t) => t === 'paused');
    // Contributions the sequencer decided before it read the pause may still show up once.
    await sleep(1_500);
    const paused = await rows(page);
    await sleep(2_500);
    const later = await rows(page);
    for (const p of paused) {
      assert.equal(later.find((q) => q.peer === p.peer).accepted, p.accepted, `peer ${p.peer} kept contributing while paused`);
    }
    await page.getByRole('button', { name: 'Resume' }).click();
    await waitFor(
      'contributions again after Resume',
      () => rows(page),
      (r) => r.some((q) => q.accepted > paused.find((p) => p.peer === q.peer).accepted),
      60_000,
    );

    // Drop one peer: its worker is told so and stops instead of reconnecting.
    const target = both[0].peer;
    await page.getByRole('button', { name: `Drop peer ${target}` }).click();
    await waitFor(
      `peer ${target} shown as gone`,
      () => rows(page),
      (r) => r.some((p) => p.peer === target && !p.connected),
      30_000,
    );
    const outcome = (w) =>
      Promise.race([w.result.then(() => 'finished', (e) => e.message), sleep(8_000).then(() => 'running')]);
    const outcomes = await Promise.all(workers.map(outcome));
    const stopped = outcomes.filter((o) => o.includes('dropped by the relay'));
    assert.equal(stopped.length, 1, JSON.stringify(outcomes));
    assert.equal(outcomes.filter((o) => o === 'running').length, 1, JSON.stringify(outcomes));
    const after = await rows(page);
    assert.equal(after.filter((p) => p.connected).length, 1, JSON.stringify(after));
    // The only failed request was the wrong token's.
    assert.deepEqual(problems, [
      'console: Failed to load resource: the server responded with a status of 401 (Unauthorized)',
    ]);
  } finally {
    for (const w of workers) w.kill();
    await browser.close();
    await relay.kill();
    tmp.cleanup();
  }
});
