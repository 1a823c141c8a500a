//! The relay as `onebyte join` reaches it: reqwest for the job and snapshots, tungstenite for
//! the websocket, tokio's clock. The loop that uses them is `engine::driver`'s.

use anyhow::{Context as _, Result};
use engine::driver::{Clock, Connection, Incoming, Transport};
use engine::snapshot::SnapshotError;
use engine::{Job, Snapshot, SnapshotReader};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::RelayUrls;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where the relay lives, and how to reach it.
#[derive(Clone)]
pub struct Relay {
    pub http: String,
    pub ws: String,
    client: reqwest::Client,
    /// TLS settings for the websocket when `--ca-cert` adds a root.
    tls: Option<tokio_tungstenite::Connector>,
    /// `--adversary`: how each contribution (or vote) is falsified, with the job's codec.
    pub adversary: Option<(Adversary, protocol::Quantizer)>,
}

/// How an `--adversary` peer falsifies what it sends (for testing a relay's defences).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Adversary {
    /// The largest magnitude, with the sign that raises the loss: clipping catches it.
    Worst,
    /// The honest magnitude with the sign flipped: no magnitude bound catches it; committees
    /// outvote it.
    Flip,
}

impl Relay {
    /// The relay at `url`, trusting `ca_cert` (PEM) beside the web's roots; and the join token
    /// the URL's query names (`?token=…`), if any.
    pub fn new(url: &str, ca_cert: Option<&std::path::Path>) -> Result<(Self, Option<String>)> {
        let RelayUrls { http, ws, token } = RelayUrls::parse(url).context("--relay")?;
        let mut client = reqwest::Client::builder();
        let mut tls = None;
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("could not read --ca-cert {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("--ca-cert {} is not a PEM certificate", path.display())
            })?;
            client = client.add_root_certificate(cert);
            tls = Some(websocket_tls(&pem)?);
        }
        let relay = Relay {
            http,
            ws,
            client: client.build()?,
            tls,
            adversary: None,
        };
        Ok((relay, token))
    }

    /// `GET path` as text.
    pub async fn text(&self, path: &str) -> Result<String> {
        Ok(self
            .client
            .get(format!("{}{path}", self.http))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// `GET path`, the body as bytes.
    pub async fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let resp = self
            .client
            .get(format!("{}{path}", self.http))
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.bytes().await?.to_vec())
    }

    /// The newest snapshot of `job`, decoded as its bytes arrive (`engine::SnapshotReader`),
    /// so that the file is never held beside θ. `Err` is the network's (worth a retry);
    /// `Ok(Err)` says the snapshot does not fit the job.
    pub async fn snapshot_of(&self, job: &Job) -> Result<Result<Snapshot, SnapshotError>> {
        let mut response = self
            .client
            .get(format!("{}/api/snapshot", self.http))
            .send()
            .await?
            .error_for_status()?;
        let mut reader = SnapshotReader::new(job.id, job.model.layout());
        while let Some(piece) = response.chunk().await? {
            if let Err(e) = reader.feed(&piece) {
                return Ok(Err(e));
            }
        }
        Ok(reader.finish())
    }

    /// The newest snapshot of `job`, retried with the driver's backoff until `limit` has
    /// passed while the relay does not answer.
    pub async fn snapshot_within(&self, limit: Duration, job: &Job) -> Result<Snapshot> {
        with_retries(limit, || self.snapshot_of(job))
            .await?
            .context("the relay's snapshot does not fit the job")
    }
}

impl Transport for Relay {
    type Connection = Socket;

    fn address(&self) -> &str {
        &self.ws
    }

    async fn connect(&mut self) -> Result<Socket, String> {
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            &self.ws,
            None,
            true,
            self.tls.clone(),
        );
        let (ws, _) = connect.await.map_err(|e| e.to_string())?;
        let (tx, rx) = ws.split();
        Ok(Socket {
            tx,
            rx,
            adversary: self.adversary,
        })
    }

    async fn snapshot(&mut self, job: &Job) -> Result<Snapshot, String> {
        self.snapshot_of(job)
            .await
            .map_err(|e| format!("{e:#}"))?
            .map_err(|e| format!("the relay's snapshot does not fit the job: {e}"))
    }
}

/// How long a closing worker waits for the relay to answer its close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One websocket to the relay.
pub struct Socket {
    tx: SplitSink<Stream, WsMessage>,
    rx: SplitStream<Stream>,
    adversary: Option<(Adversary, protocol::Quantizer)>,
}

impl Connection for Socket {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        let frame = match self.adversary {
            Some((adversary, quantizer)) => falsified(adversary, quantizer, frame),
            None => frame,
        };
        self.tx
            .send(WsMessage::Binary(frame.into()))
            .await
            .map_err(|e| e.to_string())
    }

    async fn recv(&mut self) -> Incoming {
        // `next()` holds nothing between polls, so dropping this future loses no frame.
        loop {
            return match self.rx.next().await {
                None => Incoming::Lost("the relay closed the connection".into()),
                Some(Err(e)) => Incoming::Lost(format!("connection lost: {e}")),
                Some(Ok(WsMessage::Binary(bytes))) => Incoming::Frame(bytes.to_vec()),
                Some(Ok(WsMessage::Close(Some(CloseFrame { code, reason })))) => Incoming::Closed {
                    code: code.into(),
                    reason: reason.to_string(),
                },
                Some(Ok(WsMessage::Close(None))) => {
                    Incoming::Lost("the relay closed the connection".into())
                }
                Some(Ok(WsMessage::Text(_))) => Incoming::Unexpected("a text frame".into()),
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => continue,
            };
        }
    }

    /// Sends a normal close with `reason`, then reads until the relay answers it (bounded): a
    /// socket dropped with unread bytes is reset, and the relay could lose what it had not read.
    async fn close(&mut self, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: reason.to_string().into(),
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            if self.tx.send(WsMessage::Close(Some(frame))).await.is_err() {
                return;
            }
            while let Some(Ok(frame)) = self.rx.next().await {
                if matches!(frame, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// A `Contribute` or `Vote` frame with its byte falsified; every other frame unchanged.
/// `Worst`: the largest magnitude, with the sign opposite to the honest estimate's (an
/// estimate of zero gets the positive sign). `Flip`: the honest byte with its sign flipped.
fn falsified(adversary: Adversary, quantizer: protocol::Quantizer, frame: Vec<u8>) -> Vec<u8> {
    use protocol::Message;
    let falsify = |byte: u8| {
        let honest = quantizer.decode(byte);
        match adversary {
            Adversary::Worst => quantizer.encode(if honest > 0.0 {
                f32::NEG_INFINITY
            } else {
                f32::INFINITY
            }),
            Adversary::Flip => quantizer.encode(-honest),
        }
    };
    match Message::decode(&frame) {
        Ok(Message::Contribute {
            counter,
            base_version,
            bytes,
        }) => Message::Contribute {
            counter,
            base_version,
            bytes: bytes.into_iter().map(falsify).collect(),
        }
        .encode(),
        Ok(Message::Vote {
            round,
            base_version,
            byte,
        }) => Message::Vote {
            round,
            base_version,
            byte: falsify(byte),
        }
        .encode(),
        _ => frame,
    }
}

/// tokio's clock, in milliseconds since the peer started.
#[derive(Clone, Copy)]
pub struct TokioClock {
    start: Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            start: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1_000.0
    }

    async fn sleep_ms(&self, ms: f64) {
        if ms > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(ms / 1_000.0)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// rustls settings trusting the web's roots and the certificate in `pem`.
fn websocket_tls(pem: &[u8]) -> Result<tokio_tungstenite::Connector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.context("--ca-cert holds a bad certificate")?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}

/// Retries `f` with the driver's backoff until it succeeds or `limit` has passed.
pub async fn with_retries<T, F, Fut>(limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = Instant::now();
    let mut delays = engine::driver::backoff(std::process::id().into());
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(3));
                if start.elapsed() + delay > limit {
                    return Err(e.context(format!(
                        "the relay did not answer for {} s",
                        limit.as_secs()
                    )));
                }
                tracing::debug!("retrying: {e:#}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
