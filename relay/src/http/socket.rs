//! `GET /ws`: the websocket upgrade, handed to [`crate::peer`].

use super::origins::refused_origin;
use crate::peer;
use crate::server::Context;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use std::sync::Arc;

/// Largest message the websocket layer buffers at all; `--max-frame` is enforced below it
/// with a proper close code.
const HARD_MESSAGE_LIMIT: usize = 1 << 20;

/// What a peer may say about itself in the websocket URL's query.
#[derive(Deserialize)]
pub struct PeerQuery {
    backend: Option<String>,
}

pub async fn websocket(
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
