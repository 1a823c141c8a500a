// Downloads and compiles the wasm engine on the main thread, reporting progress, so nobody
// waits in front of a blank page; the compiled module then goes to the worker.

/** Fetches `url`, calling `onProgress(received, total)` (total is null when unknown). */
async function download(url, onProgress) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  // A compressed response's length is not the length of what the reader yields.
  const encoded = response.headers.get('content-encoding');
  const length = Number(response.headers.get('content-length'));
  const total = !encoded && length > 0 ? length : null;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(received, total);
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

/** The engine as a compiled `WebAssembly.Module`. */
export async function loadEngine(url, { onDownload, onCompile }) {
  const bytes = await download(url, onDownload);
  onCompile(bytes.length);
  return WebAssembly.compile(bytes);
}
