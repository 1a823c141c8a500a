//! Which pages may use the relay: its own, those on `--allow-origin`, and native clients (which
//! send no Origin).

use crate::context::Context;
use axum::http::{HeaderMap, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Pages on the `--allow-origin` list may also *read* the relay (job, snapshot, log, status):
/// a widget embedded in someone's course page fetches those before it opens the websocket.
/// The layer wraps those four routes only, and only GET.
pub fn cross_origin_reads(origins: &[String]) -> Option<CorsLayer> {
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

/// The page's Origin if the relay does not allow it. No Origin (a native client) is allowed, as
/// is the relay's own origin and anything on the allow-list.
pub fn refused_origin(ctx: &Context, headers: &HeaderMap) -> Option<String> {
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
