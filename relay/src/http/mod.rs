//! The relay's HTTP side: the router and its layers. Handlers live by concern: `reads` (the
//! job, snapshots, the log, status, metrics), `admin` (the host's dashboard and its API),
//! `socket` (the websocket upgrade), `origins` (who may use the relay from another page),
//! `serve` (plain or TLS, until a signal), `errors`.

mod admin;
mod errors;
mod origins;
mod reads;
mod serve;
mod socket;

use crate::context::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::sync::Arc;
use std::time::Duration;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;

pub use serve::serve;

/// Longest an HTTP request (not the websocket) may take; a snapshot of a large model is the
/// slowest answer the relay gives.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request body: nothing the relay accepts over HTTP has one.
const REQUEST_BODY_LIMIT: usize = 4096;

/// The router over a shared context.
pub fn router(ctx: Arc<Context>) -> Router {
    let reads = Router::new()
        .route("/api/job", get(reads::job))
        .route("/api/snapshot", get(reads::snapshot))
        .route("/api/tokenizer", get(reads::tokenizer))
        .route("/api/base", get(reads::base))
        .route("/api/log", get(reads::log))
        .route("/api/status", get(reads::status));
    let reads = match origins::cross_origin_reads(&ctx.config.allow_origins) {
        Some(cors) => reads.layer(cors),
        None => reads,
    };
    // Every admin route behind one gate: the token is checked before any handler runs.
    let admin = Router::new()
        .route("/api/admin/pause", post(admin::pause))
        .route("/api/admin/resume", post(admin::resume))
        .route("/api/admin/peers", get(admin::peers))
        .route("/api/admin/peers/{peer}/drop", post(admin::drop_peer))
        .route("/api/admin/peers/{peer}/release", post(admin::release_peer))
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            admin::require_admin,
        ));
    let api = reads
        .merge(admin)
        .route("/admin", get(admin::dashboard))
        .route("/metrics", get(reads::metrics))
        .route("/ws", get(socket::websocket));
    let router = match &ctx.config.web {
        // `x.br` or `x.gz` beside `x` is sent to browsers that accept it (the page's wasm
        // engine: megabytes, a sixth of that in brotli).
        Some(dir) => {
            api.fallback_service(ServeDir::new(dir).precompressed_br().precompressed_gzip())
        }
        None => api.route("/", get(reads::index)),
    };
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(REQUEST_BODY_LIMIT))
        .with_state(ctx)
}
