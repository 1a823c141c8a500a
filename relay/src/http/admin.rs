//! The host's side, behind `--admin-token`: pause and resume, the peers, dropping one, and the
//! dashboard page that uses them.

use super::errors::{internal, shutting_down};
use crate::context::Context;
use crate::sequencer::Command;
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use protocol::PeerId;
use std::sync::Arc;
use tokio::sync::oneshot;

pub async fn pause(State(ctx): State<Arc<Context>>) -> Response {
    pause_or_resume(&ctx, true).await
}

pub async fn resume(State(ctx): State<Arc<Context>>) -> Response {
    pause_or_resume(&ctx, false).await
}

/// The admin API's gate, one layer in front of every `/api/admin/*` route: a request without
/// the admin token (`Authorization: Bearer …`) is refused before it reaches a handler.
pub async fn require_admin(
    State(ctx): State<Arc<Context>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &ctx.config.admin_token else {
        return (
            StatusCode::NOT_FOUND,
            "administration is off: start the relay with --admin-token",
        )
            .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|given| crate::secret::tokens_match(given, expected)) {
        return (StatusCode::UNAUTHORIZED, "wrong or missing admin token").into_response();
    }
    next.run(request).await
}

/// Sends the sequencer the command `make` builds around a reply channel and waits for its
/// answer; `None` once the sequencer is gone (the relay is shutting down).
async fn ask<T>(ctx: &Context, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    ctx.sequencer.send(make(reply)).await.ok()?;
    answer.await.ok()
}

async fn pause_or_resume(ctx: &Context, paused: bool) -> Response {
    match ask(ctx, |reply| Command::Pause { paused, reply }).await {
        Some(Ok(())) => {
            let word = if paused { "paused" } else { "resumed" };
            (StatusCode::OK, format!("job {word}\n")).into_response()
        }
        Some(Err(e)) => internal(format!("recording the pause: {e}")),
        None => shutting_down(),
    }
}

/// `GET /api/admin/peers`: every peer seen in the last minutes, connected first.
pub async fn peers(State(ctx): State<Arc<Context>>) -> Response {
    axum::Json(serde_json::json!({ "peers": ctx.stats.board.view() })).into_response()
}

/// `POST /api/admin/peers/{peer}/drop`: closes that peer's socket with `DROPPED` (it does not
/// reconnect on its own).
pub async fn drop_peer(State(ctx): State<Arc<Context>>, Path(peer): Path<u32>) -> Response {
    let drop = |reply| Command::Drop {
        peer: PeerId(peer),
        reply,
    };
    match ask(&ctx, drop).await {
        Some(true) => (StatusCode::OK, format!("peer {peer} dropped\n")).into_response(),
        Some(false) => (
            StatusCode::NOT_FOUND,
            format!("peer {peer} is not connected\n"),
        )
            .into_response(),
        None => shutting_down(),
    }
}

/// `POST /api/admin/peers/{peer}/release`: lifts that peer's quarantine; its record starts
/// clean (so it is quarantined again only by as many clipped contributions).
pub async fn release_peer(State(ctx): State<Arc<Context>>, Path(peer): Path<u32>) -> Response {
    let release = |reply| Command::Release {
        peer: PeerId(peer),
        reply,
    };
    match ask(&ctx, release).await {
        Some(Ok(true)) => (StatusCode::OK, format!("peer {peer} released\n")).into_response(),
        Some(Ok(false)) => (
            StatusCode::NOT_FOUND,
            format!("peer {peer} is not quarantined\n"),
        )
            .into_response(),
        Some(Err(e)) => internal(format!("recording the release: {e}")),
        None => shutting_down(),
    }
}

/// `/admin`: the host's dashboard, built into the relay (it works without `--web`). It asks for
/// the admin token and reads the API above with it.
pub async fn dashboard() -> impl IntoResponse {
    axum::response::Html(include_str!("admin.html"))
}
