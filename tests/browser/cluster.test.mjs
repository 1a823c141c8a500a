// A relay spread over processes, seen from a browser: the page on one edge, a native worker on
// another, one sequencer and one NATS JetStream server behind them; both hold the same weights.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect, createServer } from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { join, launch, pageStatus, scratch, sleep, startRelay, startWorker, waitFor } from './harness.mjs';

/** A free TCP port on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Debian's nats-server with JetStream, on a free port; resolves once it accepts connections. */
async function startNats(dir) {
  const port = await freePort();
  const proc = spawn('nats-server', ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', path.join(dir, 'js')], {
    stdio: 'ignore',
  });
  const deadline = Date.now() + 30_000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const socket = connect(port, '127.0.0.1', () => {
        socket.end();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error('nats-server did not listen within 30 s');
    await sleep(100);
  }
  return { url: `nats://127.0.0.1:${port}`, kill: () => proc.kill('SIGKILL') };
}

test('a page on one edge and a native worker on another hold the same weights', async () => {
  const tmp = scratch();
  const nats = await startNats(tmp.dir);
  const cluster = ['--nats', nats.url, '--nats-replicas', '1'];
  // One process both sequences and serves; the other only serves.
  const first = await startRelay(path.join(tmp.dir, 'first.db'), cluster);
  const second = await startRelay(path.join(tmp.dir, 'second.db'), [...cluster, '--role', 'edge']);
  const native = startWorker(second.url, ['--seed', '1', '--contributions', '300', '--window', '1']);
  const browser = await launch({ webgpu: false });
  try {
    const { page, problems } = browser;
    await join(page, first.url, { backend: 'cpu' });
    const status = await waitFor(
      '50 accepted contributions and a weight hash on the first edge',
      () => pageStatus(page),
      (s) => s.accepted >= 50 && s.hashVersion > 0,
      300_000,
    );
    // A native replica of the second edge's log at the page's hash version.
    const follower = startWorker(second.url, ['--contributions', '0', '--until-version', String(status.hashVersion)]);
    const report = await follower.finished(`a native replica at version ${status.hashVersion}`, 300_000);
    assert.equal(report.version, status.hashVersion);
    assert.equal(status.hash, report.hash, `weights differ at version ${status.hashVersion}`);
    const worker = await native.finished('the native worker on the second edge to finish', 300_000);
    assert.ok(worker.accepted >= 300, JSON.stringify(worker));
    assert.deepEqual(problems, []);
  } finally {
    native.kill();
    await browser.close();
    await second.kill();
    await first.kill();
    nats.kill();
    tmp.cleanup();
  }
});
