// The host's dashboard at /admin in a real browser, against a real relay with two native
// workers: it asks for the admin token, lists the peers with their counts and backend, pause
// stops them, and a dropped peer goes and stays gone.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { launch, scratch, screenshot, sleep, startRelay, startWorker, waitFor, within } from './harness.mjs';

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

/** The relay's own accepted count per peer, from the admin API the dashboard reads. */
async function acceptedByPeer(relay) {
  const response = await fetch(`${relay.url}/api/admin/peers`, { headers: { authorization: 'Bearer hostsecret' } });
  const { peers } = await response.json();
  return Object.fromEntries(peers.map((p) => [p.peer, p.accepted]));
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
    );
    assert.ok(both.every((p) => p.backend === 'cpu'), JSON.stringify(both));
    await screenshot(page, 'admin-dashboard.png');

    // Pause: from the moment the relay says "paused", nothing more is accepted.
    await page.getByRole('button', { name: 'Pause training' }).click();
    await waitFor('paused', () => page.locator('#training').textContent(), (t) => t === 'paused');
    // The relay says "paused" once its sequencer took the pause; every later batch is turned
    // down and the earlier ones are already counted. So its counts now are final, and the
    // dashboard shows them after a refresh, however slow the machine.
    const frozen = await acceptedByPeer(relay);
    const paused = await waitFor(
      `the dashboard to show the counts at the pause, ${JSON.stringify(frozen)}`,
      () => rows(page),
      (r) => r.every((p) => p.accepted === (frozen[p.peer] ?? 0)),
    );
    // A while to see whether anything more is accepted (not a wait for anything: a slower
    // machine only looks for less long).
    await sleep(2_500);
    const later = await rows(page);
    const relayLater = await acceptedByPeer(relay);
    for (const p of paused) {
      assert.equal(relayLater[p.peer] ?? 0, frozen[p.peer] ?? 0, `the relay accepted more from peer ${p.peer} while paused`);
      assert.equal(later.find((q) => q.peer === p.peer)?.accepted, p.accepted, `peer ${p.peer} kept contributing while paused`);
    }
    await page.getByRole('button', { name: 'Resume' }).click();
    await waitFor(
      'contributions again after Resume',
      () => rows(page),
      (r) => r.some((q) => q.accepted > (frozen[q.peer] ?? 0)),
    );

    // Drop one peer: its worker is told so and stops instead of reconnecting.
    const target = both[0].peer;
    await page.getByRole('button', { name: `Drop peer ${target}` }).click();
    await waitFor(
      `peer ${target} shown as gone`,
      () => rows(page),
      (r) => r.some((p) => p.peer === target && !p.connected),
    );
    // The dropped worker stops by itself (however long its exit takes on a busy machine); the
    // first worker to end must be that one, with the relay's reason, and the other still runs.
    const [first, outcome] = await within(
      `a worker to stop after peer ${target} was dropped`,
      Promise.race(workers.map((w, i) => w.result.then(() => [i, 'finished'], (e) => [i, e.message]))),
      () => workers.map((w) => w.lastOutput()),
    );
    assert.match(outcome, /dropped by the relay/, outcome);
    const other = workers[1 - first].proc;
    assert.ok(other.exitCode === null && other.signalCode === null, `the other worker ended too: ${workers[1 - first].lastOutput()}`);
    // And the dashboard shows one connected peer, not the dropped one back.
    await waitFor(
      'one connected peer, not the dropped one',
      () => rows(page),
      (r) => r.filter((p) => p.connected).length === 1 && !r.some((p) => p.peer === target && p.connected),
    );
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
