//! The browser peer: onebyte's engine and protocol, driven by the page (from a Web Worker) and
//! by the `<onebyte-demo>` widget.
//!
//! The page never speaks the relay protocol itself. It starts a [`Client`] with a few options
//! and a callback; the client fetches the job and the newest snapshot, picks WebGPU (or the CPU
//! backend when the browser has no WebGPU adapter), joins the relay's websocket through
//! `engine::Session` — the same state machine the native worker uses — and reports what happens
//! as plain event objects (see [`events`]). [`LocalSwarm`] is the widget's relay-free mode.
#![cfg(target_family = "wasm")]

mod backend;
mod clock;
mod console;
pub mod events;
mod grid;
mod local;
mod options;
mod page;
mod relay;
mod run;

use events::Emitter;
use options::Options;
use std::cell::Cell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

pub use backend::webgpu_available;
pub use local::LocalSwarm;
pub use options::load_dataset;

unsafe extern "C" {
    /// The module's static constructors, as the linker gathers them (`inventory`, through
    /// cubecl, registers with one).
    fn __wasm_call_ctors();
}

/// Runs the static constructors once, when the module is instantiated. Without an export that
/// calls them, the linker deems the module a command and calls them at the start of *every*
/// export: each call from JavaScript (a timer, a websocket message, a resolved promise)
/// re-registered cubecl's `inventory` items. Profiled in a CPU tab on the demo job, that was
/// ~23 % of the Web Worker's time.
#[wasm_bindgen(start)]
fn start() {
    // SAFETY: the linker's function takes no arguments and runs each constructor; this is
    // its one call (wasm-bindgen calls the start function once, at instantiation).
    unsafe { __wasm_call_ctors() }
}

/// What the page can change while the client runs.
#[derive(Debug)]
pub struct Controls {
    paused: Cell<bool>,
    /// Share of wall time spent computing, in (0, 1].
    throttle: Cell<f64>,
    stopped: Cell<bool>,
}

impl Controls {
    fn new(paused: bool, throttle: f64) -> Self {
        Controls {
            paused: Cell::new(paused),
            throttle: Cell::new(clamp_share(throttle)),
            stopped: Cell::new(false),
        }
    }
    pub fn paused(&self) -> bool {
        self.paused.get()
    }
    pub fn throttle(&self) -> f64 {
        self.throttle.get()
    }
    pub fn stopped(&self) -> bool {
        self.stopped.get()
    }
}

fn clamp_share(share: f64) -> f64 {
    if share.is_finite() {
        share.clamp(0.05, 1.0)
    } else {
        1.0
    }
}

/// One browser peer. `new Client(options, onEvent)`, then `run()`.
#[wasm_bindgen]
pub struct Client {
    options: Rc<Options>,
    controls: Rc<Controls>,
    emitter: Emitter,
}

#[wasm_bindgen]
impl Client {
    /// `options`: `{ relay, data?, file?, fileName?, seed?, token?, backend?: "auto" | "cpu",
    /// window?, throttle?, paused?, grid? }`; `on_event` receives every event object.
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue, on_event: js_sys::Function) -> Result<Client, JsError> {
        console_error_panic_hook::set_once();
        let options: Options = serde_wasm_bindgen::from_value(options)
            .map_err(|e| JsError::new(&format!("bad client options: {e}")))?;
        let controls = Controls::new(options.paused, options.throttle);
        Ok(Client {
            options: Rc::new(options),
            controls: Rc::new(controls),
            emitter: Emitter::new(on_event),
        })
    }

    /// Joins and trains until `stop()` or until the relay refuses this peer. Resolves with
    /// nothing, rejects with a message saying why the client cannot go on.
    pub fn run(&self) -> js_sys::Promise {
        let (options, controls, emitter) = (
            self.options.clone(),
            self.controls.clone(),
            self.emitter.clone(),
        );
        wasm_bindgen_futures::future_to_promise(async move {
            match run::run(&options, &controls, &emitter).await {
                Ok(()) => Ok(JsValue::UNDEFINED),
                Err(e) => Err(JsError::new(&e).into()),
            }
        })
    }

    /// Stops proposing contributions (the log is still followed, so resuming is instant).
    pub fn pause(&self) {
        self.controls.paused.set(true);
    }

    pub fn resume(&self) {
        self.controls.paused.set(false);
    }

    /// Share of the time spent computing, from 0.05 to 1.
    #[wasm_bindgen(js_name = setThrottle)]
    pub fn set_throttle(&self, share: f64) {
        self.controls.throttle.set(clamp_share(share));
    }

    /// Leaves the relay and ends `run()`.
    pub fn stop(&self) {
        self.controls.stopped.set(true);
    }
}
