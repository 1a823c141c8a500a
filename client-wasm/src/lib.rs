//! The browser peer's wasm-bindgen package.
//!
//! Not written yet: the browser peer issue fills this crate (engine on WebGPU with a CPU
//! fallback, the relay websocket, a small JS API driven from a Web Worker).
