//! `GET /ws`: the websocket upgrade, handed to [`crate::peer`].

use super::origins::refused_origin;
use crate::context::Context;
use crate::limits::Place;
use crate::peer;
use axum::Extension;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest message the websocket layer buffers at all; `--max-frame` is enforced below it
/// with a proper close code.
const HARD_MESSAGE_LIMIT: usize = 1 << 20;

/// A socket's read buffer: peers send messages of a few bytes, and a thousand idle sockets
/// should not hold the default 128 KiB each.
const READ_BUFFER: usize = 8 << 10;

/// What a peer may say about itself in the websocket URL's query.
#[derive(Deserialize)]
pub struct PeerQuery {
    backend: Option<String>,
}

/// `connection` is the socket's place among the relay's connections: the peer holds it for as
/// long as the websocket lives.
pub async fn websocket(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    Query(query): Query<PeerQuery>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Extension(connection): Extension<Arc<Place>>,
    State(ctx): State<Arc<Context>>,
) -> Response {
    let refused_origin = refused_origin(&ctx, &headers);
    let opened = peer::Opened {
        remote,
        connection,
        refused_origin,
        backend: query.backend.unwrap_or_default(),
    };
    ws.max_message_size(HARD_MESSAGE_LIMIT)
        .max_frame_size(HARD_MESSAGE_LIMIT)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| peer::serve(socket, ctx, opened))
}
