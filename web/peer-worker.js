// The Web Worker that runs the peer: the wasm client does all the protocol and training work
// here, off the main thread, and posts its events to the page.
import init, { Client } from './pkg/client_wasm.js';

let client = null;

// A turn of the event loop without a timer (the engine's yield between slices of steps):
// nested setTimeout(0) calls wait at least 4 ms each, a posted message does not.
const turns = new MessageChannel();
const waiting = [];
turns.port1.onmessage = () => waiting.shift()?.();
self.onebyteYield = () =>
  new Promise((resolve) => {
    waiting.push(resolve);
    turns.port2.postMessage(0);
  });
// Controls that arrive while the engine starts are applied once the client exists.
const pending = [];

function control(msg) {
  switch (msg.type) {
    case 'pause':
      client.pause();
      break;
    case 'resume':
      client.resume();
      break;
    case 'throttle':
      client.setThrottle(msg.share);
      break;
    case 'stop':
      client.stop();
      break;
  }
}

function fail(error) {
  self.postMessage({ type: 'ended', error: String(error?.message ?? error) });
}

self.onmessage = async ({ data: msg }) => {
  switch (msg.type) {
    case 'start':
      try {
        await init({ module_or_path: msg.module });
        client = new Client(msg.options, (event) => self.postMessage(event));
      } catch (error) {
        fail(error);
        return;
      }
      pending.splice(0).forEach(control);
      client.run().then(() => self.postMessage({ type: 'ended' }), fail);
      break;
    default:
      if (client) control(msg);
      else pending.push(msg);
  }
};
