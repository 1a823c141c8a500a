//! What the client tells the page: plain objects with a `type` field.

use serde::Serialize;
use wasm_bindgen::JsValue;

/// Where the client stands, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Fetching the job and snapshot, starting the backend.
    Loading,
    Connecting,
    /// Replaying the log up to the relay's version before contributing.
    CatchingUp,
    Training,
    Paused,
    /// The relay rejects this tab's contributions (they lay far outside everyone else's); it
    /// still follows the log.
    Quarantined,
    Reconnecting,
    /// The relay closed with a code that retrying cannot fix.
    Refused,
    /// This tab's engine failed.
    Failed,
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    State {
        state: State,
        detail: String,
    },
    /// Which backend runs the engine, and why not WebGPU when it is the CPU.
    Backend {
        backend: &'static str,
        adapter: String,
        reason: Option<String>,
        /// Contributions per step (one batched forward pass).
        lanes: usize,
        /// What was measured to choose, e.g. "webgpu K=16 410/s · cpu K=1 150/s".
        measured: String,
    },
    /// The local data, once loaded (a sample of training points for the playground).
    #[serde(rename_all = "camelCase")]
    Data {
        name: String,
        train: usize,
        test: usize,
        classes: usize,
        features: usize,
        /// A language model's text, not points.
        language: bool,
        /// What a language model's bits are counted per: "character" (bytes) or "token".
        token_unit: &'static str,
        /// A prompt classifier's label words, one per class (empty for other jobs).
        label_words: Vec<String>,
        /// Up to 600 training points, `x, y` interleaved (2-feature data only).
        points: Vec<f32>,
        labels: Vec<u32>,
    },
    #[serde(rename_all = "camelCase")]
    Progress {
        peer: Option<u32>,
        version: u64,
        /// The relay's version when this connection was welcomed.
        head: u64,
        /// The version this connection started replaying from.
        start: u64,
        accepted: u64,
        rejected: u64,
        in_flight: usize,
        /// Contributions proposed per second by this tab, lately.
        contributions_per_s: f64,
        loss: Option<f32>,
        /// WebSocket bytes this tab sent and received, framing included.
        bytes_sent: u64,
        bytes_received: u64,
        /// What a ring all-reduce of fp32 gradients would have cost this tab for the same
        /// contributions: `2·4d` bytes each way per gradient.
        fp32_bytes: u64,
        params: usize,
        /// Milliseconds the latest contribution took to compute (two forward passes).
        step_ms: Option<f64>,
        /// Share of the last 5 s of training spent proposing or applying the log (`None`
        /// while not training).
        busy_share: Option<f64>,
        /// The tab's WebAssembly memory (θ, the data, the passes' tensors): it grows to the
        /// most the tab has needed at once and never shrinks.
        wasm_memory_bytes: u64,
        /// In a private job: ε spent so far by this tab's contributions, at `privacy_delta`.
        privacy_epsilon: Option<f64>,
        privacy_delta: Option<f64>,
    },
    /// The weight hash at a report boundary (also sent to the relay).
    Hash {
        version: u64,
        hash: String,
    },
    /// The current model on the test split and over the playground grid.
    #[serde(rename_all = "camelCase")]
    Model {
        version: u64,
        accuracy: f32,
        test_loss: f32,
        /// For a language model: the held-out loss in bits per token (per character over bytes).
        bits_per_char: Option<f32>,
        /// For a char LM: text the current model writes after "the ".
        sample: Option<String>,
        /// `[x_min, x_max, y_min, y_max]` of the grid.
        extent: [f32; 4],
        size: u32,
        classes: usize,
        /// Class probabilities, row-major over the grid (`size·size·classes`), first row at
        /// `y_max`.
        probs: Vec<f32>,
        /// For a prompt classifier: a few held-out examples as the current model classifies
        /// them.
        examples: Vec<Classified>,
    },
}

/// One held-out example of a prompt classifier, classified by the current model.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Classified {
    /// The prompt the model reads (the example in the job's template).
    pub text: String,
    /// The label word of the example's class.
    pub truth: String,
    /// The label word the model finds likeliest, and its probability.
    pub predicted: String,
    pub probability: f32,
}

/// The page's callback.
#[derive(Clone)]
pub struct Emitter {
    callback: js_sys::Function,
}

impl Emitter {
    pub fn new(callback: js_sys::Function) -> Self {
        Emitter { callback }
    }

    pub fn emit(&self, event: &Event) {
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        match event.serialize(&serializer) {
            Ok(value) => {
                let _ = self.callback.call1(&JsValue::NULL, &value);
            }
            Err(e) => crate::console::error(&format!("cannot serialize an event: {e}")),
        }
    }

    pub fn state(&self, state: State, detail: impl Into<String>) {
        self.emit(&Event::State {
            state,
            detail: detail.into(),
        });
    }
}
