//! What the peer driver sees of the page: its controls (stop, pause, throttle), the tab's data,
//! and the events the page draws (state, progress, hashes, the model on the test split and
//! over the playground grid).

use crate::Controls;
use crate::backend::Backend;
use crate::clock::now_ms;
use crate::events::{Classified, Emitter, Event, State};
use crate::grid::{extent_of, grid_points};
use crate::options::Options;
use engine::driver::{Activity, Event as DriverEvent, Host, View};
use engine::{BatchSampler, Dataset, Job, PeerState, Replica, Snapshot, Split};
use std::sync::Arc;

/// Progress events at most this often (ms).
const PROGRESS_EVERY_MS: f64 = 250.0;
/// The playground and test metrics at most this often (ms), and never more than a twentieth
/// of the time: on a slow adapter evaluating the model costs as much as several contributions,
/// and a CPU tab on the demo job contributed ~2 500/s with a fifth, ~3 400/s with a fiftieth.
const MODEL_EVERY_MS: f64 = 1_000.0;
const MODEL_SHARE: f64 = 0.05;

/// Held-out examples a prompt classifier's page shows classified.
const EXAMPLES: usize = 4;

/// The page, as the driver's host.
pub struct Page<'a> {
    options: &'a Options,
    controls: &'a Controls,
    emitter: &'a Emitter,
    job: Arc<Job>,
    data: Dataset,
    backend: Backend,
    sampler: BatchSampler,
    last_progress: f64,
    /// When the model may be evaluated again.
    next_model: f64,
    modelled_version: Option<u64>,
    shown: Option<State>,
    /// The state's detail the page was last told.
    shown_detail: String,
    /// The websocket's address, for the page's messages.
    address: String,
}

impl<'a> Page<'a> {
    pub fn new(
        options: &'a Options,
        controls: &'a Controls,
        emitter: &'a Emitter,
        job: Arc<Job>,
        data: Dataset,
        backend: Backend,
        seed: u64,
    ) -> Self {
        Page {
            options,
            controls,
            emitter,
            job,
            data,
            backend,
            sampler: BatchSampler::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            last_progress: 0.0,
            next_model: 0.0,
            modelled_version: None,
            shown: None,
            shown_detail: String::new(),
            address: String::new(),
        }
    }

    pub fn show(&mut self, state: State, detail: impl Into<String>) {
        self.shown = Some(state);
        self.emitter.state(state, detail);
    }

    /// Evaluates the model on the test split and over the playground grid, when it changed.
    pub async fn show_model(&mut self, peer: &PeerState) {
        let version = peer.replica.version().0;
        if self.modelled_version == Some(version) {
            return;
        }
        let replica = &peer.replica;
        // A bounded slice of the test split: the figure is for a person watching, and a
        // transformer's whole split (12 000 windows) would keep the tab from training for a minute.
        let eval = match replica
            .evaluate(
                &self
                    .data
                    .test
                    .held_out_slice(self.job.model.layout().d(), engine::HELD_OUT_VALUES),
            )
            .await
        {
            Ok(eval) => eval,
            Err(e) => return crate::console::error(&format!("evaluating the model: {e}")),
        };
        let language = self.job.model.is_language_model();
        let size = self.options.grid.clamp(8, 128);
        let sample = if language {
            let prompt = b"the ";
            match replica.sample_text(prompt, 80, version).await {
                Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                Err(e) => return crate::console::error(&format!("sampling the model: {e}")),
            }
        } else {
            None
        };
        let (extent, probs) = if self.data.features() == 2 && !language {
            let extent = extent_of(&self.data.train.x);
            let grid = grid_points(extent, size);
            match replica.predict(&grid).await {
                Ok(p) => (extent, p),
                Err(e) => return crate::console::error(&format!("drawing the model: {e}")),
            }
        } else {
            ([0.0; 4], Vec::new())
        };
        let examples = match self.classified(replica).await {
            Ok(examples) => examples,
            Err(e) => return crate::console::error(&format!("classifying examples: {e}")),
        };
        self.modelled_version = Some(version);
        self.emitter.emit(&Event::Model {
            version,
            accuracy: eval.accuracy,
            test_loss: eval.loss,
            bits_per_char: language.then(|| eval.loss / std::f32::consts::LN_2),
            sample,
            extent,
            size,
            classes: self.job.model.classes(),
            probs,
            examples,
        });
    }

    /// For a prompt classifier: the first few held-out examples, each with the label word the
    /// current model finds likeliest.
    async fn classified(&self, replica: &Replica) -> Result<Vec<Classified>, engine::EngineError> {
        let Some(spec) = &self.job.config.task.prompt else {
            return Ok(Vec::new());
        };
        let rows = self.data.test.rows(0..EXAMPLES.min(self.data.test.len()));
        let probs = replica.predict(&rows.x).await?;
        let word = |class: usize| spec.labels[class].trim().to_string();
        let classes = self.job.model.classes();
        Ok(rows
            .x
            .chunks_exact(rows.features)
            .zip(&rows.y)
            .zip(probs.chunks_exact(classes))
            .map(|((row, &truth), probs)| {
                let (predicted, &probability) = probs
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .expect("two classes or more");
                Classified {
                    text: self.job.prompt_text(row),
                    truth: word(truth as usize),
                    predicted: word(predicted),
                    probability,
                }
            })
            .collect())
    }

    /// The page's state and its detail line for what the driver says the peer does.
    fn state_of(&self, activity: Activity) -> (State, String) {
        match activity {
            Activity::Connecting => (
                State::Connecting,
                format!("waiting for the relay at {}", self.address),
            ),
            Activity::Replaying { to } => (
                State::CatchingUp,
                format!("replaying the log to version {to}"),
            ),
            Activity::Behind { versions } => (
                State::CatchingUp,
                format!(
                    "too slow for the swarm: contributions reach the relay {versions} versions \
                     late (the job accepts {}); trying again",
                    self.job.hyper().staleness_bound
                ),
            ),
            Activity::Overdue { seconds } => (
                State::CatchingUp,
                format!(
                    "behind the swarm: no answer from the relay for {seconds} s, this tab reads \
                     the log more slowly than the swarm writes it"
                ),
            ),
            Activity::Paused => (
                State::Paused,
                "paused: following the log, computing nothing".into(),
            ),
            Activity::Quarantined => (
                State::Quarantined,
                "quarantined by the relay: this tab's contributions lay far outside everyone \
                 else's, so the relay rejects them; it still follows the log (the relay's host \
                 can release it)"
                    .into(),
            ),
            Activity::Training => (
                State::Training,
                format!("contributing on {}", self.backend.name()),
            ),
        }
    }
}

impl Host for Page<'_> {
    fn should_leave(&self, _peer: &PeerState) -> bool {
        self.controls.stopped()
    }

    fn paused(&self) -> bool {
        self.controls.paused()
    }

    fn compute_share(&self) -> f64 {
        self.controls.throttle()
    }

    fn next_batch(&mut self) -> Split {
        self.sampler
            .sample(&self.data.train, self.job.hyper().batch_size)
    }

    fn replica(&self, snapshot: Snapshot) -> Result<Replica, String> {
        self.backend.restored(self.job.clone(), snapshot)
    }

    fn event(&mut self, event: DriverEvent<'_>) {
        match event {
            DriverEvent::Connecting { address } => {
                self.address = address.to_string();
                self.show(State::Connecting, format!("opening {address}"));
            }
            DriverEvent::Reconnecting { why, after_ms } => self.show(
                State::Reconnecting,
                format!("{why}; again in {:.1} s", after_ms / 1000.0),
            ),
            DriverEvent::Resyncing { why } => self.show(
                State::Reconnecting,
                format!("reloading the snapshot: {why}"),
            ),
            DriverEvent::Hashes(hashes) => {
                for (version, hash) in hashes {
                    self.emitter.emit(&Event::Hash {
                        version: version.0,
                        hash: hash.to_hex(),
                    });
                }
            }
            DriverEvent::Rejected { reason, detail } => {
                crate::console::debug(&format!("contribution rejected: {reason:?} {detail}"));
            }
        }
    }

    async fn tick(&mut self, view: View<'_>) {
        let View {
            peer,
            session,
            tally,
            activity,
            now_ms: now,
        } = view;
        let (state, detail) = self.state_of(activity);
        if self.shown != Some(state) || self.shown_detail != detail {
            self.shown_detail = detail.clone();
            self.show(state, detail);
            self.last_progress = 0.0;
        }
        if now - self.last_progress >= PROGRESS_EVERY_MS {
            self.last_progress = now;
            let d = self.job.model.layout().d();
            self.emitter.emit(&Event::Progress {
                peer: peer.id.map(|p| p.0),
                version: peer.replica.version().0,
                head: session.head().0,
                start: session.start().0,
                accepted: peer.accepted,
                rejected: peer.rejected,
                in_flight: session.in_flight(),
                contributions_per_s: tally.contributions_per_s(now),
                loss: peer.last_loss,
                bytes_sent: tally.bytes_sent,
                bytes_received: tally.bytes_received,
                fp32_bytes: engine::driver::fp32_allreduce_bytes(peer.accepted, d),
                params: d,
                step_ms: tally.step_ms,
                busy_share: tally.busy_share_lately(now),
                wasm_memory_bytes: wasm_memory_bytes(),
                privacy_epsilon: peer.privacy.as_ref().map(|p| p.accountant.epsilon()),
                privacy_delta: peer.privacy.as_ref().map(|p| p.accountant.delta()),
            });
        }
        if state != State::CatchingUp && now >= self.next_model {
            self.show_model(peer).await;
            let took = now_ms() - now;
            self.next_model = now + MODEL_EVERY_MS.max(took / MODEL_SHARE);
        }
    }
}

/// The size of this module's linear memory.
fn wasm_memory_bytes() -> u64 {
    const PAGE_BYTES: u64 = 65_536;
    #[cfg(target_arch = "wasm32")]
    let pages = core::arch::wasm32::memory_size(0) as u64;
    #[cfg(not(target_arch = "wasm32"))]
    let pages = 0;
    pages * PAGE_BYTES
}
