//! The client's life: load the job and data, choose a backend, then hand the peer to
//! `engine::driver` (connect → catch up → train, reconnecting with backoff) until stopped or
//! refused. [`crate::page::Page`] is what the driver sees of the page.

use crate::Controls;
use crate::backend::{self, Backend};
use crate::clock::BrowserClock;
use crate::events::{Emitter, Event, State};
use crate::options::{Options, load_dataset};
use crate::page::Page;
use crate::relay::{Endpoints, with_retries};
use engine::driver::{Driver, DriverConfig, Stop};
use engine::{BatchSampler, Dataset, Job, PeerState};
use std::sync::Arc;

pub async fn run(options: &Options, controls: &Controls, emitter: &Emitter) -> Result<(), String> {
    emitter.state(State::Loading, "fetching the job");
    let mut endpoints = Endpoints::parse(&options.relay)?;
    let seed = u64::from(options.seed);
    let fetching = Fetching {
        controls,
        emitter,
        seed,
    };
    let Some(job_toml) = fetching.fetch("fetching the job", || endpoints.job()).await else {
        return Ok(());
    };
    let mut job = Job::from_toml(&job_toml).map_err(|e| format!("the relay's job: {e}"))?;
    if job.needs_tokenizer() {
        let Some(json) = fetching
            .fetch("fetching the job's tokenizer", || endpoints.tokenizer())
            .await
        else {
            return Ok(());
        };
        job = job
            .with_tokenizer_json(json)
            .map_err(|e| format!("the relay's tokenizer: {e}"))?;
    }
    if job.needs_base() {
        // The frozen base, checked against the job's pin before anything trains on it.
        let Some(bytes) = fetching
            .fetch("fetching the job's frozen base", || endpoints.base())
            .await
        else {
            return Ok(());
        };
        job = job
            .with_checkpoint("the relay's /api/base", &bytes)
            .map_err(|e| format!("the relay's frozen base: {e}"))?;
    }
    let job = Arc::new(job);
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
    emit_data(emitter, &data, &job);

    emitter.state(State::Loading, "starting the backend");
    let choice = backend::choose(&options.backend).await;
    let adapter = choice.adapter.clone();

    emitter.state(State::Loading, "fetching the newest snapshot");
    let Some(snapshot) = fetching
        .fetch("fetching the snapshot", || endpoints.snapshot_of(&job))
        .await
    else {
        return Ok(());
    };
    let snapshot = snapshot?;
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
        snapshot,
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
    state.privacy = engine::privacy::PrivatePeer::for_job(&job, data.train.len())
        .map_err(|e| format!("the job is private, and the browser gave no randomness: {e}"))?;
    let config = DriverConfig {
        token: options.token.clone(),
        window: options.window,
        give_up_after_ms: None,
        seed,
    };
    let mut page = Page::new(options, controls, emitter, job, data, backend, seed);
    // The first evaluation compiles the forward pass's kernels: seconds on a software adapter.
    emitter.state(
        State::Loading,
        "preparing the model (the first pass compiles its kernels)",
    );
    page.show_model(&state).await;

    let ran = Driver::new(&mut page, endpoints, BrowserClock, config)
        .run(&mut state)
        .await;
    match ran {
        Ok(()) => {
            page.show(State::Stopped, "left the relay");
            Ok(())
        }
        Err(Stop::Refused(why)) => {
            page.show(State::Refused, why.clone());
            Err(why)
        }
        Err(Stop::Failed(why) | Stop::Unreachable(why)) => {
            page.show(State::Failed, why.clone());
            Err(why)
        }
    }
}

fn emit_data(emitter: &Emitter, data: &Dataset, job: &Job) {
    let language = job.model.is_language_model();
    let two_d = data.features() == 2 && !language;
    let shown = if two_d { data.train.len().min(600) } else { 0 };
    emitter.emit(&Event::Data {
        name: data.name.clone(),
        train: data.train.len(),
        test: data.test.len(),
        classes: data.classes,
        features: data.features(),
        language,
        token_unit: job.token_unit(),
        label_words: job.config.task.prompt.as_ref().map_or_else(Vec::new, |p| {
            p.labels.iter().map(|w| w.trim().to_string()).collect()
        }),
        points: data.train.x[..shown * data.features()].to_vec(),
        labels: data.train.y[..shown].to_vec(),
    });
}

/// What the client fetches from the relay before it joins, with the page told of each retry.
struct Fetching<'a> {
    controls: &'a Controls,
    emitter: &'a Emitter,
    seed: u64,
}

impl Fetching<'_> {
    /// `get()` until it answers; `None` (the page then reads "stopped") once the person stops.
    async fn fetch<T, Fut>(&self, what: &str, get: impl FnMut() -> Fut) -> Option<T>
    where
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let answer = with_retries(
            get,
            |e: &str, backoff: f64| {
                self.emitter.state(
                    State::Reconnecting,
                    format!("{what}: {e}; again in {:.1} s", backoff / 1000.0),
                )
            },
            || self.controls.stopped(),
            self.seed,
        )
        .await;
        if answer.is_none() {
            self.emitter.state(State::Stopped, "stopped");
        }
        answer
    }
}
