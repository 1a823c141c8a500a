//! Local mode for the teaching widget: N peers simulated inside the tab through the engine's
//! in-memory log (`engine::Simulation`, the same propose/apply code as every real peer), on the
//! CPU backend. Each `step()` is one log entry, reported in full for a step-by-step view.

use crate::grid::{extent_of, grid_points};
use engine::{Builtin, Dataset, Exchange, Job, JobConfig, Simulation, block_on, cpu_device};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use wasm_bindgen::prelude::*;

/// Directions shown per step (the first parameters' signs).
const SHOWN_SIGNS: u64 = 64;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalOptions {
    #[serde(default = "default_peers")]
    peers: usize,
    #[serde(default = "default_dataset")]
    dataset: String,
    #[serde(default)]
    learning_rate: Option<f32>,
    #[serde(default = "default_seed")]
    seed: u32,
}

fn default_peers() -> usize {
    4
}
fn default_dataset() -> String {
    "spirals".into()
}
fn default_seed() -> u32 {
    1
}

/// One log entry, as a teacher walks through it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StepView {
    /// The version after every replica applied the entry.
    version: u64,
    job: String,
    peer: u32,
    counter: u64,
    /// SHA-256 of (domain, job, peer, counter): the ChaCha key of the direction.
    seed: String,
    /// Signs of `z` for the first parameters (+1 or −1).
    direction: Vec<i8>,
    params: usize,
    epsilon: f32,
    loss_plus: f32,
    loss_minus: f32,
    /// `(L+ − L−) / 2ε`.
    g: f32,
    byte: u8,
    /// The byte's 8 bits, sign bit first.
    bits: String,
    /// `D(byte)`: the gradient estimate every peer reads back.
    decoded: f32,
    learning_rate: f32,
    /// `c = −η·D(byte)`, added to each parameter times its sign.
    step: f32,
    /// Every replica's weight hash after applying the entry.
    hashes: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelView {
    version: u64,
    accuracy: f32,
    test_loss: f32,
    extent: [f32; 4],
    size: u32,
    classes: usize,
    probs: Vec<f32>,
}

fn to_js(value: &impl Serialize) -> Result<JsValue, JsError> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| JsError::new(&e.to_string()))
}

fn engine_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// N simulated peers and one log, in this tab.
#[wasm_bindgen]
pub struct LocalSwarm {
    sim: Simulation,
    job: Arc<Job>,
    data: Dataset,
}

#[wasm_bindgen]
impl LocalSwarm {
    /// `options`: `{ peers?: 1..=16, dataset?: "spirals" | "moons" | "circles",
    /// learningRate?, seed? }`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue) -> Result<LocalSwarm, JsError> {
        console_error_panic_hook::set_once();
        let options: LocalOptions = serde_wasm_bindgen::from_value(options)
            .map_err(|e| JsError::new(&format!("bad widget options: {e}")))?;
        if !(1..=16).contains(&options.peers) {
            return Err(JsError::new(&format!(
                "peers = {}: the widget simulates 1 to 16 peers",
                options.peers
            )));
        }
        let dataset: Builtin = options.dataset.parse().map_err(engine_error)?;
        let mut config: JobConfig = Job::demo().config;
        config.job.name = format!("widget-{}", dataset.name());
        config.task.dataset = dataset.name().to_string();
        if let Some(lr) = options.learning_rate {
            config.hyper.learning_rate = lr;
        }
        let job = Arc::new(Job::new(config).map_err(engine_error)?);
        let data = dataset.generate(2_000, 500, u64::from(options.seed));
        let sim = Simulation::new(
            job.clone(),
            &data,
            options.peers,
            u64::from(options.seed),
            Exchange::Byte,
            cpu_device(),
        );
        Ok(LocalSwarm { sim, job, data })
    }

    /// One log entry: propose, log, every replica applies. Returns the step's full story.
    pub fn step(&mut self) -> Result<JsValue, JsError> {
        let step = block_on(self.sim.step()).map_err(engine_error)?;
        let hyper = self.job.hyper();
        let hashes = block_on(self.sim.hashes()).map_err(engine_error)?;
        let d = self.job.model.layout().d();
        let view = StepView {
            version: self.sim.version().0,
            job: self.job.id.0.to_string(),
            peer: step.entry.peer.0,
            counter: step.entry.counter.0,
            seed: hex::encode(step.seed.0),
            direction: (0..SHOWN_SIGNS.min(d as u64))
                .map(|i| engine::direction::sign_at(&step.seed, i) as i8)
                .collect(),
            params: d,
            epsilon: hyper.epsilon,
            loss_plus: step.proposal.loss_plus,
            loss_minus: step.proposal.loss_minus,
            g: step.proposal.g,
            byte: step.entry.byte,
            bits: format!("{:08b}", step.entry.byte),
            decoded: hyper.quantizer.decode(step.entry.byte),
            learning_rate: hyper.learning_rate,
            step: step.step,
            hashes: hashes.iter().map(|h| h.to_hex()).collect(),
        };
        to_js(&view)
    }

    /// `n` steps at once (for fast play); returns the last one's story.
    #[wasm_bindgen(js_name = steps)]
    pub fn steps(&mut self, n: u32) -> Result<JsValue, JsError> {
        for _ in 1..n.max(1) {
            block_on(self.sim.step()).map_err(engine_error)?;
        }
        self.step()
    }

    /// Log entries so far.
    pub fn version(&self) -> f64 {
        self.sim.version().0 as f64
    }

    pub fn peers(&self) -> usize {
        self.sim.peers()
    }

    /// Peer 0's model on the test split and over a `size × size` grid.
    pub fn model(&self, size: u32) -> Result<JsValue, JsError> {
        let replica = self.sim.replica(0);
        let eval = block_on(
            replica.evaluate(
                &self
                    .data
                    .test
                    .held_out_slice(replica.job().model.layout().d(), engine::HELD_OUT_VALUES),
            ),
        )
        .map_err(engine_error)?;
        let extent = extent_of(&self.data.train.x);
        let probs = block_on(replica.predict(&grid_points(extent, size))).map_err(engine_error)?;
        to_js(&ModelView {
            version: self.sim.version().0,
            accuracy: eval.accuracy,
            test_loss: eval.loss,
            extent,
            size,
            classes: self.job.model.classes(),
            probs,
        })
    }

    /// Up to 400 training points, `x, y` interleaved, and their labels.
    pub fn points(&self) -> Result<JsValue, JsError> {
        let n = self.data.train.len().min(400);
        to_js(&(&self.data.train.x[..2 * n], &self.data.train.y[..n]))
    }
}
