//! Answers for requests that fail on the relay's side.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the relay is shutting down",
    )
        .into_response()
}

/// A failure the host reads in the relay's log; the client learns only that it happened (the
/// error may name the store's path or other details of the host's machine).
pub fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("request failed: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the relay failed to answer this request; its host can read why in the relay's log\n",
    )
        .into_response()
}
