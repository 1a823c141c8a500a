//! Where a relay lives: its HTTP base and its websocket, from the URL a person gives.
//!
//! People paste `http://host:port`, `https://…`, `ws://host:port/ws`, a trailing slash, a relay
//! behind a path (`https://host/onebyte/`), or the page's own address with its join token
//! (`https://host/?token=…`); every peer (native or browser) needs the same two URLs from any
//! of them, and keeps the query.

use thiserror::Error;
use url::Url;

/// A relay URL that names no relay.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RelayUrlError {
    #[error("`{url}`: expected a URL like http://host:port ({reason})")]
    Malformed { url: String, reason: String },
    #[error("`{url}`: unknown scheme `{scheme}` (use http, https, ws or wss)")]
    Scheme { url: String, scheme: String },
}

/// The relay's HTTP base (`/api/…` lives under it), its websocket (`…/ws`, with the given
/// query), and the join token the query carries, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrls {
    /// No trailing slash and no query: endpoints are appended (`{http}/api/job`).
    pub http: String,
    pub ws: String,
    /// `token=…` from the query: a join link names its token, so `--token` can be left out.
    pub token: Option<String>,
}

impl RelayUrls {
    pub fn parse(relay: &str) -> Result<Self, RelayUrlError> {
        let given = relay.trim();
        if !given.contains("://") {
            return Err(RelayUrlError::Malformed {
                url: given.to_string(),
                reason: "no scheme: write http://… or https://…".into(),
            });
        }
        let mut url = Url::parse(given).map_err(|e| RelayUrlError::Malformed {
            url: given.to_string(),
            reason: e.to_string(),
        })?;
        let (http, ws) = match url.scheme() {
            "http" | "ws" => ("http", "ws"),
            "https" | "wss" => ("https", "wss"),
            other => {
                return Err(RelayUrlError::Scheme {
                    url: given.to_string(),
                    scheme: other.to_string(),
                });
            }
        };
        if url.host().is_none() {
            return Err(RelayUrlError::Malformed {
                url: given.to_string(),
                reason: "no host".into(),
            });
        }
        let token = url
            .query_pairs()
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.into_owned());
        let query = url.query().map(str::to_string);
        url.set_query(None);
        url.set_fragment(None);
        let path = url.path().trim_end_matches('/');
        let base = path.strip_suffix("/ws").unwrap_or(path).to_string();
        url.set_path(&base);
        // Scheme changes between special schemes (http ↔ ws) are allowed by the url crate.
        let mut http_url = url.clone();
        http_url.set_scheme(http).expect("http is a special scheme");
        let mut ws_url = url;
        ws_url.set_scheme(ws).expect("ws is a special scheme");
        ws_url.set_path(&format!("{base}/ws"));
        ws_url.set_query(query.as_deref());
        Ok(RelayUrls {
            http: http_url.as_str().trim_end_matches('/').to_string(),
            ws: ws_url.into(),
            token,
        })
    }
}

/// `ws` with `backend=…` added to its query: what a peer computes on, which the relay shows its
/// host (the dashboard). `ws` is a websocket URL from [`RelayUrls::parse`].
pub fn websocket_with_backend(ws: &str, backend: &str) -> String {
    match Url::parse(ws) {
        Ok(mut url) => {
            url.query_pairs_mut().append_pair("backend", backend);
            url.into()
        }
        Err(_) => ws.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(http: &str, ws: &str, token: Option<&str>) -> RelayUrls {
        RelayUrls {
            http: http.into(),
            ws: ws.into(),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn any_form_of_the_relay_url_gives_the_same_two_urls() {
        let plain = urls("http://h:1", "ws://h:1/ws", None);
        for given in [
            "http://h:1",
            "http://h:1/",
            "ws://h:1/ws",
            "ws://h:1/ws/",
            "ws://h:1",
            " http://h:1 ",
        ] {
            assert_eq!(RelayUrls::parse(given).unwrap(), plain, "{given}");
        }
        assert_eq!(
            RelayUrls::parse("wss://h/ws").unwrap(),
            urls("https://h", "wss://h/ws", None)
        );
        assert_eq!(
            RelayUrls::parse("https://h:443/").unwrap(),
            urls("https://h", "wss://h/ws", None),
            "the default port is implied"
        );
    }

    #[test]
    fn a_relay_behind_a_path_keeps_its_path() {
        let expected = urls("https://h/onebyte", "wss://h/onebyte/ws", None);
        for given in [
            "https://h/onebyte",
            "https://h/onebyte/",
            "wss://h/onebyte/ws",
        ] {
            assert_eq!(RelayUrls::parse(given).unwrap(), expected, "{given}");
        }
    }

    #[test]
    fn the_query_stays_on_the_websocket_and_names_the_token() {
        let expected = urls("http://h", "ws://h/ws?token=x", Some("x"));
        for given in ["http://h/?token=x", "http://h?token=x", "ws://h/ws?token=x"] {
            assert_eq!(RelayUrls::parse(given).unwrap(), expected, "{given}");
        }
        let other = RelayUrls::parse("https://h:8443/p/?room=2&token=a%20b#top").unwrap();
        assert_eq!(
            other,
            urls(
                "https://h:8443/p",
                "wss://h:8443/p/ws?room=2&token=a%20b",
                Some("a b")
            )
        );
    }

    #[test]
    fn the_backend_joins_the_query_and_keeps_the_token() {
        assert_eq!(
            websocket_with_backend("ws://h/ws", "cpu"),
            "ws://h/ws?backend=cpu"
        );
        assert_eq!(
            websocket_with_backend("wss://h/p/ws?token=x", "wgpu, 16 lanes"),
            "wss://h/p/ws?token=x&backend=wgpu%2C+16+lanes"
        );
    }

    #[test]
    fn what_names_no_relay_is_refused_with_a_reason() {
        for given in ["h:1", "localhost:8080", "", "http://", "http://:80"] {
            let e = RelayUrls::parse(given).unwrap_err();
            assert!(
                matches!(
                    e,
                    RelayUrlError::Malformed { .. } | RelayUrlError::Scheme { .. }
                ),
                "{given}: {e}"
            );
        }
        assert!(matches!(
            RelayUrls::parse("ftp://h"),
            Err(RelayUrlError::Scheme { .. })
        ));
        assert!(
            RelayUrls::parse("h:1")
                .unwrap_err()
                .to_string()
                .contains("http://host:port")
        );
    }
}
