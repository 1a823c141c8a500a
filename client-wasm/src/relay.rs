//! The relay as a browser reaches it: `fetch` for the job and snapshots, the page's
//! `WebSocket`, both through gloo. The loop that uses them is `engine::driver`'s.

use crate::clock::sleep_ms;
use engine::driver::{Connection, Incoming, Transport};
use engine::{Job, Snapshot, SnapshotReader};
use futures_util::StreamExt;
use gloo_net::http::Request;
use gloo_net::websocket::{Message as WsMessage, WebSocketError, futures::WebSocket};
use js_sys::{Reflect, Uint8Array};
use protocol::RelayUrls;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::ReadableStreamDefaultReader;

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

    /// The job's `tokenizer.json`, for a job whose text is BPE tokens.
    pub async fn tokenizer(&self) -> Result<Vec<u8>, String> {
        self.bytes("/api/tokenizer").await
    }

    /// The frozen base's checkpoint, for a job that trains part of its model.
    pub async fn base(&self) -> Result<Vec<u8>, String> {
        self.bytes("/api/base").await
    }

    /// The newest snapshot of `job`, decoded as its bytes arrive, so that θ is the tab's only
    /// copy of the weights (a tab's WebAssembly memory never shrinks: the file's bytes beside θ
    /// would stay its cost). The outer error is the network's, worth a retry; the inner one
    /// says the snapshot does not fit the job.
    pub async fn snapshot_of(&self, job: &Job) -> Result<Result<Snapshot, String>, String> {
        let response = self.get("/api/snapshot").await?;
        let body = response
            .body()
            .ok_or("the relay's snapshot response has no body")?;
        let stream: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        let mut reader = SnapshotReader::new(job.id, job.model.layout());
        let mut piece = Vec::new();
        loop {
            let read = JsFuture::from(stream.read())
                .await
                .map_err(|e| format!("reading the snapshot: {e:?}"))?;
            let field = |name: &str| Reflect::get(&read, &name.into()).unwrap_or_default();
            if field("done").as_bool() == Some(true) {
                break;
            }
            let chunk: Uint8Array = field("value").unchecked_into();
            piece.resize(chunk.length() as usize, 0);
            chunk.copy_to(&mut piece);
            if let Err(e) = reader.feed(&piece) {
                let _ = stream.cancel();
                return Ok(Err(misfit(e)));
            }
        }
        Ok(reader.finish().map_err(misfit))
    }

    /// `GET path`, the body as bytes.
    async fn bytes(&self, path: &str) -> Result<Vec<u8>, String> {
        self.get(path)
            .await?
            .binary()
            .await
            .map_err(|e| e.to_string())
    }
}

impl Transport for Endpoints {
    type Connection = Socket;

    fn address(&self) -> &str {
        &self.ws
    }

    async fn connect(&mut self) -> Result<Socket, String> {
        let ws = WebSocket::open(&self.ws).map_err(|e| e.to_string())?;
        Ok(Socket { ws: Some(ws) })
    }

    async fn snapshot(&mut self, job: &Job) -> Result<Snapshot, String> {
        self.snapshot_of(job).await?
    }
}

/// The page's websocket to the relay.
pub struct Socket {
    /// `None` once closed (gloo's `close` takes the socket).
    ws: Option<WebSocket>,
}

impl Connection for Socket {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        use futures_util::SinkExt;
        let ws = self.ws.as_mut().ok_or("the socket is closed")?;
        ws.send(WsMessage::Bytes(frame))
            .await
            .map_err(|e| e.to_string())
    }

    async fn recv(&mut self) -> Incoming {
        let Some(ws) = self.ws.as_mut() else {
            return Incoming::Lost("the socket is closed".into());
        };
        // `next()` reads a channel the socket's callbacks fill: dropping it loses nothing.
        loop {
            return match ws.next().await {
                None => Incoming::Lost("the relay closed the connection".into()),
                Some(Ok(WsMessage::Bytes(bytes))) => Incoming::Frame(bytes),
                Some(Ok(WsMessage::Text(_))) => Incoming::Unexpected("a text frame".into()),
                Some(Err(WebSocketError::ConnectionClose(event))) => Incoming::Closed {
                    code: event.code,
                    reason: event.reason,
                },
                // An `error` event is followed by the `close` event that carries the code.
                Some(Err(WebSocketError::ConnectionError)) => continue,
                Some(Err(e)) => Incoming::Lost(format!("connection lost: {e}")),
            };
        }
    }

    async fn close(&mut self, reason: &str) {
        if let Some(ws) = self.ws.take() {
            let _ = ws.close(Some(1000), Some(reason));
        }
    }
}

/// Why the relay's snapshot makes no replica of the job, for the page.
pub fn misfit(e: impl std::fmt::Display) -> String {
    format!("the relay's snapshot does not fit the job: {e}")
}

/// Retries `f` with the peer driver's backoff, reporting each failure, until it succeeds or
/// `stopped()` says to give up.
pub async fn with_retries<T, F, Fut>(
    mut f: F,
    mut on_failure: impl FnMut(&str, f64),
    stopped: impl Fn() -> bool,
    seed: u64,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut delays = engine::driver::backoff(seed);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if stopped() {
                    return None;
                }
                let delay = delays.next().map_or(3_000.0, |d| d.as_secs_f64() * 1_000.0);
                on_failure(&e, delay);
                sleep_ms(delay).await;
            }
        }
    }
}
