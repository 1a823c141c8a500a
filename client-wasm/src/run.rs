//! The client's life: load, choose a backend, then connect → catch up → train, reconnecting
//! with backoff whenever the connection drops, until stopped or refused.

use crate::Controls;
use crate::backend::{self, Backend};
use crate::clock::{now_ms, sleep_ms};
use crate::events::{Emitter, Event, State};
use crate::grid::{extent_of, grid_points};
use crate::options::{Options, load_dataset};
use crate::relay::{Endpoints, with_retries};
use engine::{BatchSampler, Dataset, Job, PeerState, Received, Replica, Session, SessionEnd};
use futures_util::{FutureExt, SinkExt, StreamExt, select_biased};
use gloo_net::websocket::{Message as WsMessage, WebSocketError, futures::WebSocket};
use protocol::{Message, close, framing};
use std::sync::Arc;

/// Progress events at most this often (ms).
const PROGRESS_EVERY_MS: f64 = 250.0;
/// The playground and test metrics at most this often (ms), and never more than a fifth of the
/// time: on a slow adapter evaluating the model costs as much as several contributions.
const MODEL_EVERY_MS: f64 = 1_000.0;
const MODEL_SHARE: f64 = 0.2;
/// Most input values (rows × features) of the test split the page evaluates on: all of a
/// point set's, 4 096 windows of an 8-byte char LM's, 1 024 of the tiny transformer's.
const EVAL_VALUES: usize = 32_768;
/// How long to wait for the socket or the page before looking again (ms).
const IDLE_WAIT_MS: f64 = 200.0;
/// Most log entries merged from delivered batches into one.
const MERGED_ENTRIES: usize = 4096;
/// No answer to a contribution in flight for this long means the tab is behind the log.
const ANSWERS_OVERDUE_MS: f64 = 2_000.0;
/// Longest run of steps between two yields to the browser.
const COMPUTE_SLICE_MS: f64 = 20.0;
/// Longest a due step waits while frames keep arriving.
const MAX_DEFER_MS: f64 = 250.0;

/// Everything one run holds.
struct Peer<'a> {
    options: &'a Options,
    controls: &'a Controls,
    emitter: &'a Emitter,
    endpoints: Endpoints,
    job: Arc<Job>,
    data: Dataset,
    backend: Backend,
    state: PeerState,
    sampler: BatchSampler,
    traffic: Traffic,
    rate: Rate,
    last_progress: f64,
    /// When the model may be evaluated again.
    next_model: f64,
    /// How long the latest proposal took (ms).
    step_ms: Option<f64>,
    busy: Busy,
    modelled_version: Option<u64>,
    shown: Option<State>,
    /// The state's detail the page was last told.
    shown_detail: String,
    /// When the relay last answered a contribution, or none was in flight.
    answered_at: f64,
}

#[derive(Default)]
struct Traffic {
    sent: u64,
    received: u64,
}

/// Contributions per second over the last few seconds.
#[derive(Default)]
struct Rate {
    stamps: std::collections::VecDeque<f64>,
}

impl Rate {
    fn record(&mut self, at: f64) {
        self.stamps.push_back(at);
        while self.stamps.front().is_some_and(|t| at - t > 5_000.0) {
            self.stamps.pop_front();
        }
    }
    fn per_second(&self, now: f64) -> f64 {
        let recent = self.stamps.iter().filter(|&&t| now - t <= 5_000.0).count();
        recent as f64 / 5.0
    }
}

/// The share of the last few seconds of training spent proposing or applying the log: the
/// rest is idle (waiting on the relay, the throttle, or the browser).
#[derive(Default)]
struct Busy {
    spans: std::collections::VecDeque<(f64, f64)>,
    since: Option<f64>,
}

impl Busy {
    const WINDOW_MS: f64 = 5_000.0;

    fn record(&mut self, from: f64, to: f64) {
        self.since.get_or_insert(from);
        self.spans.push_back((from, to));
        while self
            .spans
            .front()
            .is_some_and(|&(_, end)| to - end > Self::WINDOW_MS)
        {
            self.spans.pop_front();
        }
    }

    /// Starts over (training paused or fell behind): idle time then says nothing.
    fn reset(&mut self) {
        self.spans.clear();
        self.since = None;
    }

    /// `None` until a second of training has been seen.
    fn share(&self, now: f64) -> Option<f64> {
        let start = (now - Self::WINDOW_MS).max(self.since?);
        if now - start < 1_000.0 {
            return None;
        }
        let busy: f64 = self
            .spans
            .iter()
            .map(|&(a, b)| (b.min(now) - a.max(start)).max(0.0))
            .sum();
        Some(busy / (now - start))
    }
}

/// How a connection ended.
enum End {
    Stopped,
    Resync(String),
    Retry(String),
    /// The relay will not take this peer (a fatal close code, an `Error`, a broken stream).
    Refused(String),
    /// This tab's engine failed (e.g. the WebGPU device was lost).
    Failed(String),
}

pub async fn run(options: &Options, controls: &Controls, emitter: &Emitter) -> Result<(), String> {
    emitter.state(State::Loading, "fetching the job");
    let mut endpoints = Endpoints::parse(&options.relay)?;
    let retrying = |what: &'static str| {
        move |e: &str, backoff: f64| {
            emitter.state(
                State::Reconnecting,
                format!("{what}: {e}; again in {:.1} s", backoff / 1000.0),
            )
        }
    };
    let Some(job_toml) = with_retries(
        || endpoints.job(),
        retrying("fetching the job"),
        || controls.stopped(),
    )
    .await
    else {
        emitter.state(State::Stopped, "stopped");
        return Ok(());
    };
    let job = Arc::new(Job::from_toml(&job_toml).map_err(|e| format!("the relay's job: {e}"))?);
    let seed = u64::from(options.seed);
    let builtin = if options.data.is_empty() {
        &job.config.task.dataset
    } else {
        &options.data
    };
    let data = load_dataset(
        &job,
        builtin,
        options.file.as_deref(),
        options.file_name.as_deref(),
        seed,
    )?;
    emit_data(emitter, &data, job.model.is_language_model());

    emitter.state(State::Loading, "starting the backend");
    let choice = backend::choose(&options.backend).await;
    let adapter = choice.adapter.clone();

    emitter.state(State::Loading, "fetching the newest snapshot");
    let Some(snapshot) = fetch_snapshot(&endpoints, emitter, controls).await else {
        emitter.state(State::Stopped, "stopped");
        return Ok(());
    };
    if matches!(choice.backend, Backend::WebGpu(_)) {
        emitter.state(
            State::Loading,
            "measuring WebGPU and the CPU on a few steps (the first compiles the GPU kernels)",
        );
    }
    let probe = BatchSampler::new(seed).sample(&data.train, job.hyper().batch_size);
    let settled = backend::settle(
        choice,
        &options.backend,
        options.lanes,
        &job,
        &snapshot,
        &probe,
    )
    .await?;
    emitter.emit(&Event::Backend {
        backend: settled.backend.name(),
        adapter: match settled.backend {
            Backend::Cpu => "burn CPU backend in WebAssembly".into(),
            Backend::WebGpu(_) => adapter,
        },
        reason: settled.reason,
        lanes: settled.lanes,
        measured: settled.measured,
    });
    let backend = settled.backend;
    // The relay's host sees what this tab computes on.
    let described = match settled.lanes {
        1 => format!("{} in a browser", backend.name()),
        lanes => format!("{} in a browser, {lanes} lanes", backend.name()),
    };
    endpoints.ws = protocol::websocket_with_backend(&endpoints.ws, &described);
    let mut state = PeerState::new(settled.replica);
    state.lanes = settled.lanes;
    let mut peer = Peer {
        options,
        controls,
        emitter,
        endpoints,
        job,
        data,
        backend,
        state,
        sampler: BatchSampler::new(seed ^ 0x9e37_79b9_7f4a_7c15),
        traffic: Traffic::default(),
        rate: Rate::default(),
        last_progress: 0.0,
        next_model: 0.0,
        step_ms: None,
        busy: Busy::default(),
        modelled_version: None,
        shown: None,
        shown_detail: String::new(),
        answered_at: 0.0,
    };
    // The first evaluation compiles the forward pass's kernels: seconds on a software adapter.
    emitter.state(
        State::Loading,
        "preparing the model (the first pass compiles its kernels)",
    );
    peer.show_model().await;

    let mut backoff = 100.0;
    loop {
        let started = now_ms();
        match peer.session().await {
            End::Stopped => {
                peer.show(State::Stopped, "left the relay");
                return Ok(());
            }
            End::Refused(why) => {
                peer.show(State::Refused, why.clone());
                return Err(why);
            }
            End::Failed(why) => {
                peer.show(State::Failed, why.clone());
                return Err(why);
            }
            End::Resync(why) => {
                peer.show(
                    State::Reconnecting,
                    format!("reloading the snapshot: {why}"),
                );
                let Some(fresh) =
                    load_replica(&peer.endpoints, &peer.job, &peer.backend, emitter, controls)
                        .await?
                else {
                    peer.show(State::Stopped, "stopped");
                    return Ok(());
                };
                peer.state.replica = fresh;
                backoff = 100.0;
            }
            End::Retry(why) => {
                if now_ms() - started > 2_000.0 {
                    backoff = 100.0;
                }
                peer.show(
                    State::Reconnecting,
                    format!("{why}; again in {:.1} s", backoff / 1000.0),
                );
                sleep_ms(backoff).await;
                backoff = (backoff * 2.0_f64).min(5_000.0);
            }
        }
        if controls.stopped() {
            peer.show(State::Stopped, "left the relay");
            return Ok(());
        }
    }
}

async fn load_replica(
    endpoints: &Endpoints,
    job: &Arc<Job>,
    backend: &Backend,
    emitter: &Emitter,
    controls: &Controls,
) -> Result<Option<Replica>, String> {
    match fetch_snapshot(endpoints, emitter, controls).await {
        None => Ok(None),
        Some(bytes) => Ok(Some(backend.replica(job.clone(), &bytes)?)),
    }
}

/// The relay's newest snapshot, retried until it comes or the page stops (`None`).
async fn fetch_snapshot(
    endpoints: &Endpoints,
    emitter: &Emitter,
    controls: &Controls,
) -> Option<Vec<u8>> {
    with_retries(
        || endpoints.snapshot(),
        |e, backoff| {
            emitter.state(
                State::Reconnecting,
                format!(
                    "fetching the snapshot: {e}; again in {:.1} s",
                    backoff / 1000.0
                ),
            )
        },
        || controls.stopped(),
    )
    .await
}

fn emit_data(emitter: &Emitter, data: &Dataset, language: bool) {
    let two_d = data.features() == 2 && !language;
    let shown = if two_d { data.train.len().min(600) } else { 0 };
    emitter.emit(&Event::Data {
        name: data.name.clone(),
        train: data.train.len(),
        test: data.test.len(),
        classes: data.classes,
        features: data.features(),
        language,
        points: data.train.x[..shown * data.features()].to_vec(),
        labels: data.train.y[..shown].to_vec(),
    });
}

impl Peer<'_> {
    fn show(&mut self, state: State, detail: impl Into<String>) {
        self.shown = Some(state);
        self.emitter.state(state, detail);
    }

    /// One websocket connection, until it ends.
    async fn session(&mut self) -> End {
        self.show(State::Connecting, format!("opening {}", self.endpoints.ws));
        let mut ws = match WebSocket::open(&self.endpoints.ws) {
            Ok(ws) => ws,
            Err(e) => return End::Retry(format!("cannot open {}: {e}", self.endpoints.ws)),
        };
        let mut session = Session::new(&self.state, &self.options.token, self.options.window);
        // Computing may start no earlier than this (the throttle's idle time).
        let mut next_compute = 0.0;
        // Whether steps have run for a whole slice: the next turn yields to the browser first.
        let mut must_yield = false;
        // When the current run of steps without yielding began.
        let mut slice_began = None;
        // Since when a due step has waited for the frames already delivered.
        let mut due_since = None;
        // A message read ahead while merging log batches, handled next turn.
        let mut held: Option<Result<Message, End>> = None;
        loop {
            for msg in session.take_outbox() {
                let bytes = msg.encode();
                self.traffic.sent += framing::client_frame_len(bytes.len()) as u64;
                if let Err(e) = ws.send(WsMessage::Bytes(bytes)).await {
                    let failed = format!("sending {}: {e}", msg.kind());
                    return self.why_closed(&mut ws, failed).await;
                }
            }
            if self.controls.stopped() {
                let _ = ws.close(Some(1000), Some("the page stopped training"));
                return End::Stopped;
            }
            self.update_display(&session).await;

            let wants = session.ready_to_contribute(&self.state) && !self.controls.paused();
            let wait = if wants {
                (next_compute - now_ms()).max(0.0)
            } else {
                IDLE_WAIT_MS
            };
            // Frames first: a contribution computed on a lagging replica arrives stale. Every
            // frame already delivered is applied before a step that is due (yet a step waits at
            // most MAX_DEFER_MS, or a log that streams in as fast as it is applied would starve
            // computing for ever). Steps run back to back for at most COMPUTE_SLICE_MS; then
            // the turn waits on the socket or a timer, which yields to the browser so that the
            // frames that arrived meanwhile are delivered. (Yielding after every step would
            // cost the timer's 4 ms clamp each time: most of a CPU step's time.)
            let now = now_ms();
            let due = wants && !must_yield && now >= next_compute;
            due_since = due.then(|| due_since.unwrap_or(now));
            let frame = if held.is_some() {
                None
            } else if due_since.is_some_and(|since| now - since < MAX_DEFER_MS) {
                ws.next().now_or_never()
            } else if due {
                None
            } else {
                must_yield = false;
                slice_began = None;
                select_biased! {
                    frame = ws.next().fuse() => Some(frame),
                    _ = sleep_ms(wait).fuse() => None,
                }
            };
            let next = match frame {
                Some(frame) => Some(self.decode(frame, &mut ws).await),
                None => held.take(),
            };
            match next {
                Some(next) => {
                    let msg = match next {
                        Ok(msg) => self.merge_delivered(msg, &mut ws, &mut held).await,
                        Err(end) => return end,
                    };
                    let began = now_ms();
                    let received = session.receive(&mut self.state, msg).await;
                    self.busy.record(began, now_ms());
                    match received {
                        Ok(Received::Applied { hashes, .. }) => {
                            for (version, hash) in hashes {
                                self.emitter.emit(&Event::Hash {
                                    version: version.0,
                                    hash: hash.to_hex(),
                                });
                            }
                        }
                        Ok(Received::Accepted) => self.answered_at = now_ms(),
                        Ok(Received::Rejected { reason, detail }) => {
                            self.answered_at = now_ms();
                            if reason == protocol::RejectReason::Paused {
                                next_compute = now_ms() + 1_000.0;
                            }
                            crate::console::debug(&format!(
                                "contribution rejected: {reason:?} {detail}"
                            ));
                        }
                        Ok(_) => {}
                        Err(SessionEnd::Resync(why)) => return End::Resync(why),
                        Err(SessionEnd::Refused(why)) => return End::Refused(why),
                        Err(SessionEnd::Fatal(why)) => return End::Failed(why),
                    }
                }
                None if wants => {
                    let batch = self
                        .sampler
                        .sample(&self.data.train, self.job.hyper().batch_size);
                    let began = now_ms();
                    let step = match session.contribute(&mut self.state, &batch).await {
                        Ok(step) => step,
                        Err(e) => return End::Failed(e.to_string()),
                    };
                    let done = now_ms();
                    self.busy.record(began, done);
                    must_yield = done - *slice_began.get_or_insert(began) >= COMPUTE_SLICE_MS;
                    for _ in &step {
                        self.rate.record(done);
                    }
                    self.step_ms = Some(done - began);
                    let share = self.controls.throttle();
                    next_compute = done + (done - began) * (1.0 - share) / share;
                }
                None => {}
            }
        }
    }

    /// `msg`, and if it is a log batch, every batch that follows on from it among the frames
    /// already delivered, as one: a slow adapter pays per dispatch, so applying a backlog in
    /// few large runs is what lets it catch up. The first other message read is `held`.
    async fn merge_delivered(
        &mut self,
        msg: Message,
        ws: &mut WebSocket,
        held: &mut Option<Result<Message, End>>,
    ) -> Message {
        let Message::LogBatch {
            first_version,
            mut entries,
        } = msg
        else {
            return msg;
        };
        while entries.len() < MERGED_ENTRIES {
            let Some(frame) = ws.next().now_or_never() else {
                break;
            };
            match self.decode(frame, ws).await {
                Ok(Message::LogBatch {
                    first_version: next,
                    entries: more,
                }) if next.0 == first_version.0 + entries.len() as u64 => entries.extend(more),
                other => {
                    *held = Some(other);
                    break;
                }
            }
        }
        Message::LogBatch {
            first_version,
            entries,
        }
    }

    /// After a failed send: the relay's close event, if one arrives within a second, says how
    /// the connection ended (a refusal must not be retried as if the line had dropped).
    async fn why_closed(&mut self, ws: &mut WebSocket, failed: String) -> End {
        let frame = select_biased! {
            frame = ws.next().fuse() => Some(frame),
            _ = sleep_ms(1_000.0).fuse() => None,
        };
        match frame {
            Some(frame) => match self.decode(frame, ws).await {
                Err(end) => end,
                Ok(_) => End::Retry(failed),
            },
            None => End::Retry(failed),
        }
    }

    /// The next message, or how the connection ended. An `error` event is followed by the
    /// `close` event that carries the code, so it is read through.
    async fn decode(
        &mut self,
        mut frame: Option<Result<WsMessage, WebSocketError>>,
        ws: &mut WebSocket,
    ) -> Result<Message, End> {
        loop {
            return match frame {
                None => Err(End::Retry("the relay closed the connection".into())),
                Some(Ok(WsMessage::Bytes(bytes))) => {
                    self.traffic.received += framing::server_frame_len(bytes.len()) as u64;
                    Message::decode(&bytes).map_err(|e| {
                        End::Refused(format!("the relay sent a malformed message: {e}"))
                    })
                }
                Some(Ok(WsMessage::Text(_))) => {
                    Err(End::Refused("the relay sent a text frame".into()))
                }
                Some(Err(WebSocketError::ConnectionClose(event))) => {
                    let reason = if event.reason.is_empty() {
                        "no reason given".to_string()
                    } else {
                        event.reason
                    };
                    let said = format!("{reason} (close code {})", event.code);
                    Err(if close::is_fatal(event.code) {
                        End::Refused(format!("the relay refused this peer: {said}"))
                    } else {
                        End::Retry(format!("the relay closed the connection: {said}"))
                    })
                }
                Some(Err(WebSocketError::ConnectionError)) => {
                    frame = ws.next().await;
                    continue;
                }
                Some(Err(e)) => Err(End::Retry(format!("connection lost: {e}"))),
            };
        }
    }

    /// Keeps the page's state, progress and model views current (rate-limited).
    async fn update_display(&mut self, session: &Session) {
        let now = now_ms();
        if session.in_flight() == 0 {
            self.answered_at = now;
        }
        // Answers travel behind the log on one socket: none for seconds means this tab reads
        // the log more slowly than the swarm writes it.
        let overdue_s = ((now - self.answered_at) / 1_000.0).floor();
        let overdue = overdue_s * 1_000.0 >= ANSWERS_OVERDUE_MS;
        let replaying = session.catching_up(&self.state);
        let state = if !session.streaming() {
            State::Connecting
        } else if replaying {
            State::CatchingUp
        } else if self.controls.paused() {
            State::Paused
        } else if session.behind().is_some() || overdue {
            State::CatchingUp
        } else {
            State::Training
        };
        let detail = match state {
            State::Connecting => format!("waiting for the relay at {}", self.endpoints.ws),
            State::CatchingUp if replaying => {
                format!("replaying the log to version {}", session.head())
            }
            State::CatchingUp => match session.behind() {
                Some(behind) => format!(
                    "too slow for the swarm: contributions reach the relay {behind} versions late \
                     (the job accepts {}); trying again",
                    self.job.hyper().staleness_bound
                ),
                None => format!(
                    "behind the swarm: no answer from the relay for {overdue_s} s, this tab \
                     reads the log more slowly than the swarm writes it"
                ),
            },
            State::Paused => "paused: following the log, computing nothing".into(),
            _ => format!("contributing on {}", self.backend.name()),
        };
        if state != State::Training {
            self.busy.reset();
        }
        if self.shown != Some(state) || self.shown_detail != detail {
            self.shown_detail = detail.clone();
            self.show(state, detail);
            self.last_progress = 0.0;
        }
        if now - self.last_progress >= PROGRESS_EVERY_MS {
            self.last_progress = now;
            let d = self.job.model.layout().d();
            self.emitter.emit(&Event::Progress {
                peer: self.state.id.map(|p| p.0),
                version: self.state.replica.version().0,
                head: session.head().0,
                start: session.start().0,
                accepted: self.state.accepted,
                rejected: self.state.rejected,
                in_flight: session.in_flight(),
                contributions_per_s: self.rate.per_second(now),
                loss: self.state.last_loss,
                bytes_sent: self.traffic.sent,
                bytes_received: self.traffic.received,
                fp32_bytes: self.state.accepted * 8 * d as u64,
                params: d,
                step_ms: self.step_ms,
                busy_share: self.busy.share(now),
            });
        }
        if state != State::CatchingUp && now >= self.next_model {
            self.show_model().await;
            let took = now_ms() - now;
            self.next_model = now + MODEL_EVERY_MS.max(took / MODEL_SHARE);
        }
    }

    /// Evaluates the model on the test split and over the playground grid, when it changed.
    async fn show_model(&mut self) {
        let version = self.state.replica.version().0;
        if self.modelled_version == Some(version) {
            return;
        }
        let replica = &self.state.replica;
        // A bounded slice of the test split: the figure is for a person watching, and a
        // transformer's whole split (12 000 windows) would keep the tab from training for a minute.
        let rows = (EVAL_VALUES / self.data.features().max(1))
            .max(1)
            .min(self.data.test.len());
        let eval = match replica.evaluate(&self.data.test.rows(0..rows)).await {
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
        });
    }
}
