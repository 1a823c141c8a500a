//! Routes: the page, the job, snapshots, the log, status, metrics, admin, and `/ws`.

use crate::peer;
use crate::sequencer::Command;
use crate::server::Context;
use crate::store::Store;
use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use protocol::{PeerId, Version, varint};
use serde::Deserialize;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

/// Largest message the websocket layer buffers at all; `--max-frame` is enforced below it
/// with a proper close code.
const HARD_MESSAGE_LIMIT: usize = 1 << 20;
/// Most entries one `GET /api/log` returns; ask again from where it ended.
const LOG_PAGE: u64 = 1 << 20;

/// The router over a shared context.
pub fn router(ctx: Arc<Context>) -> Router {
    let reads = Router::new()
        .route("/api/job", get(job))
        .route("/api/snapshot", get(snapshot))
        .route("/api/log", get(log))
        .route("/api/status", get(status));
    let reads = match cross_origin_reads(&ctx.config.allow_origins) {
        Some(cors) => reads.layer(cors),
        None => reads,
    };
    let api = reads
        .route("/api/admin/pause", post(pause))
        .route("/api/admin/resume", post(resume))
        .route("/api/admin/peers", get(peers))
        .route("/api/admin/peers/{peer}/drop", post(drop_peer))
        .route("/admin", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/ws", get(websocket));
    let router = match &ctx.config.web {
        // `x.gz` beside `x` is sent to browsers that accept gzip (the page's wasm engine: tens
        // of megabytes, a fifth of that compressed).
        Some(dir) => api.fallback_service(ServeDir::new(dir).precompressed_gzip()),
        None => api.route("/", get(index)),
    };
    router.with_state(ctx)
}

/// Pages on the `--allow-origin` list may also *read* the relay (job, snapshot, log, status):
/// a widget embedded in someone's course page fetches those before it opens the websocket.
/// The layer wraps those four routes only, and only GET.
fn cross_origin_reads(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| {
            let parsed = o.trim_end_matches('/').parse().ok();
            if parsed.is_none() {
                tracing::warn!(origin = %o, "--allow-origin is not a valid origin; ignored");
            }
            parsed
        }))
    };
    Some(
        CorsLayer::new()
            .allow_methods([axum::http::Method::GET])
            .allow_origin(allow),
    )
}

/// Serves until Ctrl-C or SIGTERM: https and wss with `--tls-cert`/`--tls-key`, else plain.
pub async fn serve(ctx: Arc<Context>, listener: tokio::net::TcpListener) -> Result<()> {
    if let (Some(cert), Some(key)) = (&ctx.config.tls_cert, &ctx.config.tls_key) {
        return serve_tls(ctx.clone(), listener, cert, key).await;
    }
    let send_buffer = ctx.config.send_buffer;
    let listener = listener.tap_io(move |tcp| {
        let _ = tcp.set_nodelay(true);
        if let Some(bytes) = send_buffer {
            let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(bytes);
        }
    });
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn serve_tls(
    ctx: Arc<Context>,
    listener: tokio::net::TcpListener,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "could not load the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown().await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    axum_server::from_tcp_rustls(listener.into_std()?, tls)?
        .handle(handle)
        .serve(router(ctx).into_make_service())
        .await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("onebyte-relay: shutting down");
}

async fn index(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    let name = &ctx.job.config.job.name;
    axum::response::Html(format!(
        "<!doctype html><title>onebyte relay</title><h1>onebyte relay: {name}</h1>\
         <p>This relay was started without <code>--web</code>, so it serves no page. \
         <a href=\"/api/status\">/api/status</a> shows the job's progress.</p>"
    ))
}

async fn job(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/toml")],
        ctx.job_toml.clone(),
    )
}

async fn snapshot(State(ctx): State<Arc<Context>>) -> Response {
    let path = ctx.config.store.clone();
    let read = tokio::task::spawn_blocking(move || Store::reopen(&path)?.latest_snapshot()).await;
    match read {
        Ok(Ok(Some((version, bytes)))) => (
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
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no snapshot yet").into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct LogRange {
    from: Option<u64>,
    to: Option<u64>,
}

/// `GET /api/log?from=V&to=W`: varint-length-prefixed messages, a `CounterTable` at `V` and
/// then `LogBatch`es up to `W` (or the durable head, at most 2^20 entries).
async fn log(State(ctx): State<Arc<Context>>, Query(range): Query<LogRange>) -> Response {
    let path = ctx.config.store.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<Result<Vec<u8>, String>> {
        let store = Store::reopen(&path)?;
        let head = store.version()?;
        let from = Version(range.from.unwrap_or(0));
        if from > head {
            return Ok(Err(format!(
                "from={from} is past the end of the log ({head} entries)"
            )));
        }
        let to = Version(
            range
                .to
                .unwrap_or(head.0)
                .min(head.0)
                .min(from.0 + LOG_PAGE),
        );
        let mut body = Vec::new();
        for message in store.packed_log(from, to, 4096)? {
            varint::put(&mut body, message.len() as u64);
            body.extend_from_slice(&message);
        }
        Ok(Ok(body))
    })
    .await;
    match read {
        Ok(Ok(Ok(body))) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(body),
        )
            .into_response(),
        Ok(Ok(Err(bad))) => (StatusCode::RANGE_NOT_SATISFIABLE, bad).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn status(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    axum::Json(ctx.stats.status())
}

async fn metrics(State(ctx): State<Arc<Context>>) -> Response {
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

async fn pause(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    pause_or_resume(&ctx, &headers, true).await
}

async fn resume(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    pause_or_resume(&ctx, &headers, false).await
}

/// The refusal for a request without the admin token (`Authorization: Bearer …`), if it is.
fn refusal_unless_admin(ctx: &Context, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &ctx.config.admin_token else {
        return Some(
            (
                StatusCode::NOT_FOUND,
                "administration is off: start the relay with --admin-token",
            )
                .into_response(),
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    (given != Some(expected.as_str()))
        .then(|| (StatusCode::UNAUTHORIZED, "wrong or missing admin token").into_response())
}

fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the relay is shutting down",
    )
        .into_response()
}

async fn pause_or_resume(ctx: &Context, headers: &HeaderMap, paused: bool) -> Response {
    if let Some(refusal) = refusal_unless_admin(ctx, headers) {
        return refusal;
    }
    if ctx.sequencer.send(Command::Pause(paused)).await.is_err() {
        return shutting_down();
    }
    let word = if paused { "paused" } else { "resumed" };
    (StatusCode::OK, format!("job {word}\n")).into_response()
}

/// `GET /api/admin/peers`: every peer seen in the last minutes, connected first.
async fn peers(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refusal_unless_admin(&ctx, &headers) {
        return refusal;
    }
    axum::Json(serde_json::json!({ "peers": ctx.stats.board.view() })).into_response()
}

/// `POST /api/admin/peers/{peer}/drop`: closes that peer's socket with `DROPPED` (it does not
/// reconnect on its own).
async fn drop_peer(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(peer): Path<u32>,
) -> Response {
    if let Some(refusal) = refusal_unless_admin(&ctx, &headers) {
        return refusal;
    }
    let (reply, dropped) = tokio::sync::oneshot::channel();
    let drop = Command::Drop {
        peer: PeerId(peer),
        reply,
    };
    if ctx.sequencer.send(drop).await.is_err() {
        return shutting_down();
    }
    match dropped.await {
        Ok(true) => (StatusCode::OK, format!("peer {peer} dropped\n")).into_response(),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            format!("peer {peer} is not connected\n"),
        )
            .into_response(),
        Err(_) => shutting_down(),
    }
}

/// `/admin`: the host's dashboard, built into the relay (it works without `--web`). It asks for
/// the admin token and reads the API above with it.
async fn dashboard() -> impl IntoResponse {
    axum::response::Html(include_str!("admin.html"))
}

/// What a peer may say about itself in the websocket URL's query.
#[derive(Deserialize)]
struct PeerQuery {
    backend: Option<String>,
}

async fn websocket(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    Query(query): Query<PeerQuery>,
    State(ctx): State<Arc<Context>>,
) -> Response {
    let refused_origin = refused_origin(&ctx, &headers);
    let backend = query.backend.unwrap_or_default();
    ws.max_message_size(HARD_MESSAGE_LIMIT)
        .max_frame_size(HARD_MESSAGE_LIMIT)
        .on_upgrade(move |socket| peer::serve(socket, ctx, refused_origin, backend))
}

/// The page's Origin if the relay does not allow it. No Origin (a native client) is allowed, as
/// is the relay's own origin and anything on the allow-list.
fn refused_origin(ctx: &Context, headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("?");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let own = origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority == host);
    let listed = ctx
        .config
        .allow_origins
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/') == origin);
    (!own && !listed).then(|| origin.to_string())
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("request failed: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}
