//! What anyone may read: the job and its tokenizer, the newest snapshot, the log, status and
//! metrics (and a note at `/` when the relay serves no page).

use super::errors::internal;
use crate::context::Context;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::{LogCursor, Version, varint};
use serde::Deserialize;
use std::sync::Arc;

/// Most entries one `GET /api/log` returns; ask again from where it ended.
const LOG_PAGE: u64 = 1 << 20;
/// Most entries in one `LogBatch` of an `/api/log` answer.
const LOG_BATCH: u64 = 4096;

pub async fn index(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    let name = &ctx.job.config.job.name;
    axum::response::Html(format!(
        "<!doctype html><title>onebyte relay</title><h1>onebyte relay: {name}</h1>\
         <p>This relay was started without <code>--web</code>, so it serves no page. \
         <a href=\"/api/status\">/api/status</a> shows the job's progress.</p>"
    ))
}

pub async fn job(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/toml")],
        ctx.job_toml.clone(),
    )
}

/// The job's `tokenizer.json`, for peers of a job whose text is BPE tokens.
pub async fn tokenizer(State(ctx): State<Arc<Context>>) -> Response {
    match ctx.job.tokenizer_json() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json.to_vec()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this job has no tokenizer: its tokens are bytes",
        )
            .into_response(),
    }
}

/// The frozen base's checkpoint, for peers of a job that trains part of its model (they check
/// it against the job's `train.base_sha256`).
pub async fn base(State(ctx): State<Arc<Context>>) -> Response {
    match &ctx.base_file {
        // `Bytes` clones share the file: a base can be hundreds of megabytes.
        Some(file) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            file.clone(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this job has no checkpoint base: every parameter trains, or the base comes from \
             the job's seed",
        )
            .into_response(),
    }
}

pub async fn snapshot(State(ctx): State<Arc<Context>>) -> Response {
    match ctx.snapshots.latest().await {
        Ok(Some((version, bytes))) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::HeaderName::from_static("x-onebyte-version"),
                    version.0.to_string(),
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no snapshot yet").into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
pub struct LogRange {
    from: Option<u64>,
    to: Option<u64>,
}

/// `GET /api/log?from=V&to=W`: varint-length-prefixed messages, a `CounterTable` at `V` and
/// then `LogBatch`es up to `W` (or the durable head, at most 2^20 entries).
pub async fn log(State(ctx): State<Arc<Context>>, Query(range): Query<LogRange>) -> Response {
    let head = ctx.log.head();
    let from = Version(range.from.unwrap_or(0));
    if from > head {
        let bad = format!("from={from} is past the end of the log ({head} entries)");
        return (StatusCode::RANGE_NOT_SATISFIABLE, bad).into_response();
    }
    let to = Version(
        range
            .to
            .unwrap_or(head.0)
            .min(head.0)
            .min(from.0 + LOG_PAGE),
    );
    match packed_log(&ctx, from, to).await {
        Ok(body) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(body),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

/// The log `from..to` as a peer receives it, each message prefixed with its length: the
/// `CounterTable` at `from`, then `LogBatch`es of at most [`LOG_BATCH`] entries.
async fn packed_log(
    ctx: &Context,
    from: Version,
    to: Version,
) -> Result<Vec<u8>, crate::log::LogStoreError> {
    let mut cursor = LogCursor::new(from, ctx.log.counter_table(from).await?);
    let mut body = Vec::new();
    let mut put = |message: protocol::Message| {
        let message = message.encode();
        varint::put(&mut body, message.len() as u64);
        body.extend_from_slice(&message);
    };
    put(cursor.table_message());
    let mut at = from;
    while at < to {
        let end = Version((at.0 + LOG_BATCH).min(to.0));
        put(cursor.pack(&ctx.log.read(at, end).await?));
        at = end;
    }
    Ok(body)
}

pub async fn status(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    axum::Json(ctx.stats.status())
}

pub async fn metrics(State(ctx): State<Arc<Context>>) -> Response {
    match ctx.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => internal(e),
    }
}
