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

pub fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("request failed: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}
