//! The relay's HTTP endpoints and websocket, from a browser.

use crate::clock::sleep_ms;
use gloo_net::http::Request;
use protocol::RelayUrls;

/// Where the relay lives.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub http: String,
    pub ws: String,
}

impl Endpoints {
    /// From the relay's base URL (`http(s)://host:port`, or `ws(s)://…`).
    pub fn parse(relay: &str) -> Result<Self, String> {
        // The page passes its token separately (from its own address); the websocket keeps
        // whatever query the relay URL had.
        let RelayUrls { http, ws, .. } =
            RelayUrls::parse(relay).map_err(|e| format!("relay {e}"))?;
        Ok(Endpoints { http, ws })
    }

    async fn get(&self, path: &str) -> Result<gloo_net::http::Response, String> {
        let url = format!("{}{path}", self.http);
        let resp = Request::get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.ok() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        Ok(resp)
    }

    /// The job file (TOML).
    pub async fn job(&self) -> Result<String, String> {
        self.get("/api/job")
            .await?
            .text()
            .await
            .map_err(|e| e.to_string())
    }

    /// The newest snapshot (safetensors).
    pub async fn snapshot(&self) -> Result<Vec<u8>, String> {
        self.get("/api/snapshot")
            .await?
            .binary()
            .await
            .map_err(|e| e.to_string())
    }
}

/// Retries `f` with backoff (0.1 s doubling to 5 s), reporting each failure, until it succeeds
/// or `stopped()` says to give up.
pub async fn with_retries<T, F, Fut>(
    mut f: F,
    mut on_failure: impl FnMut(&str, f64),
    stopped: impl Fn() -> bool,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut backoff = 100.0;
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if stopped() {
                    return None;
                }
                on_failure(&e, backoff);
                sleep_ms(backoff).await;
                backoff = (backoff * 2.0).min(5_000.0);
            }
        }
    }
}
