//! Where a relay lives: its HTTP base and its websocket, from the URL a person gives.
//!
//! People paste `http://host:port`, `https://…`, `ws://host:port/ws` or a trailing slash; every
//! peer (native or browser) needs the same two URLs from any of them.

use thiserror::Error;

/// A relay URL that names no relay.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RelayUrlError {
    #[error("`{0}`: expected a URL like http://host:port")]
    NoScheme(String),
    #[error("`{url}`: unknown scheme `{scheme}` (use http, https, ws or wss)")]
    Scheme { url: String, scheme: String },
}

/// The relay's HTTP base (`/api/…` lives under it) and its websocket (`…/ws`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrls {
    pub http: String,
    pub ws: String,
}

impl RelayUrls {
    pub fn parse(relay: &str) -> Result<Self, RelayUrlError> {
        let relay = relay.trim_end_matches('/');
        let (scheme, rest) = relay
            .split_once("://")
            .ok_or_else(|| RelayUrlError::NoScheme(relay.to_string()))?;
        let (http, ws) = match scheme {
            "http" | "ws" => ("http", "ws"),
            "https" | "wss" => ("https", "wss"),
            other => {
                return Err(RelayUrlError::Scheme {
                    url: relay.to_string(),
                    scheme: other.to_string(),
                });
            }
        };
        let rest = rest.strip_suffix("/ws").unwrap_or(rest);
        Ok(RelayUrls {
            http: format!("{http}://{rest}"),
            ws: format!("{ws}://{rest}/ws"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_form_of_the_relay_url_gives_the_same_two_urls() {
        let plain = RelayUrls {
            http: "http://h:1".into(),
            ws: "ws://h:1/ws".into(),
        };
        for given in ["http://h:1", "http://h:1/", "ws://h:1/ws", "ws://h:1"] {
            assert_eq!(RelayUrls::parse(given).unwrap(), plain, "{given}");
        }
        assert_eq!(RelayUrls::parse("wss://h/ws").unwrap().http, "https://h");
        assert!(matches!(
            RelayUrls::parse("h:1"),
            Err(RelayUrlError::NoScheme(_))
        ));
        assert!(matches!(
            RelayUrls::parse("ftp://h"),
            Err(RelayUrlError::Scheme { .. })
        ));
    }
}
