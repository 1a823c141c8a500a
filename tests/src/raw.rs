//! A peer that speaks the wire protocol by hand, for tests that need exact control: sending
//! bad frames, recording every acknowledgement, or not reading at all.

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use protocol::{
    Counter, JobId, LogCursor, LogEntry, Message, PROTOCOL_VERSION, PeerId, RejectReason,
    ResumeSecret, Serial, Version, varint,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the websocket, with an `Origin` header if given.
pub async fn connect(ws_url: &str, origin: Option<&str>) -> Result<Socket> {
    let mut request = ws_url.into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", HeaderValue::from_str(origin)?);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// Opens the websocket over a TCP socket with a tiny receive buffer: a peer that stops
/// reading fills up quickly.
pub async fn connect_with_small_buffer(addr: std::net::SocketAddr) -> Result<Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_recv_buffer_size(4096)?;
    socket.connect(&addr.into())?;
    socket.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(socket.into())?;
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
            .await?;
    Ok(ws)
}

/// A TCP connection to `addr` from the loopback address `source` (any of 127.0.0.0/8): the
/// relay counts each source as another network address.
pub async fn tcp_from(
    source: std::net::IpAddr,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    Ok(socket.connect(addr).await?)
}

/// Opens the websocket from the loopback address `source`.
pub async fn connect_from(source: std::net::IpAddr, addr: std::net::SocketAddr) -> Result<Socket> {
    let tcp = tcp_from(source, addr).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
            .await?;
    Ok(ws)
}

/// The `Hello` of a new peer reading the log from `from`.
pub fn hello(job: JobId, from: Version, token: &str) -> Message {
    Message::Hello {
        protocol: PROTOCOL_VERSION,
        job,
        resume: None,
        from,
        token: token.into(),
    }
}

/// Sends one message as a binary frame.
pub async fn send(socket: &mut Socket, msg: &Message) -> Result<()> {
    socket
        .send(WsMessage::Binary(msg.encode().into()))
        .await
        .context("sending")
}

/// What the relay sent next.
#[derive(Debug)]
pub enum Received {
    Message(Message),
    /// A close frame: its code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Gone,
}

/// Reads the next protocol message or close.
pub async fn receive(socket: &mut Socket) -> Received {
    loop {
        match socket.next().await {
            Some(Ok(WsMessage::Binary(bytes))) => {
                return Received::Message(
                    Message::decode(&bytes).expect("the relay sends valid messages"),
                );
            }
            Some(Ok(WsMessage::Close(Some(frame)))) => {
                return Received::Closed(u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(WsMessage::Close(None))) | None | Some(Err(_)) => return Received::Gone,
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads until the relay closes; returns the close code and reason. Fails, naming the
/// messages it read, if the connection ends without a close frame or none comes within
/// [`crate::WAIT`].
pub async fn expect_close(socket: &mut Socket) -> Result<(u16, String)> {
    let mut seen = Vec::new();
    let wait = async {
        loop {
            match receive(socket).await {
                Received::Message(msg) => seen.push(msg.kind()),
                Received::Closed(code, reason) => return Ok((code, reason)),
                Received::Gone => return Err("the connection ended without a close frame"),
            }
        }
    };
    let closed = tokio::time::timeout(crate::WAIT, wait).await;
    match closed {
        Ok(Ok(closed)) => Ok(closed),
        Ok(Err(why)) => bail!("{why}, after {seen:?}"),
        Err(_) => bail!("no close frame within {:?}, after {seen:?}", crate::WAIT),
    }
}

/// A joined peer that follows the log and can contribute arbitrary bytes.
pub struct RawPeer {
    pub socket: Socket,
    pub id: PeerId,
    /// What resumes `id` (from the relay's `Welcome`).
    pub secret: ResumeSecret,
    pub next_counter: Counter,
    pub cursor: LogCursor,
    /// `(counter, version)` of each of its contributions seen in the log: its acceptance.
    pub accepted: Vec<(Counter, Version)>,
    pub rejected: u64,
    /// Why the latest contribution was turned down.
    pub last_rejection: Option<RejectReason>,
}

impl RawPeer {
    /// Joins from version 0.
    pub async fn join(ws_url: &str, job: JobId, token: &str) -> Result<RawPeer> {
        RawPeer::join_on(connect(ws_url, None).await?, job, token).await
    }

    /// Joins from version 0 over an open websocket.
    pub async fn join_on(mut socket: Socket, job: JobId, token: &str) -> Result<RawPeer> {
        send(&mut socket, &hello(job, Version(0), token)).await?;
        let (id, secret, next_counter) = match receive(&mut socket).await {
            Received::Message(Message::Welcome {
                peer,
                next_counter,
                secret,
                ..
            }) => (peer, secret, next_counter),
            other => bail!("expected Welcome, got {other:?}"),
        };
        let cursor = match receive(&mut socket).await {
            Received::Message(Message::CounterTable { version, entries }) => {
                LogCursor::from_table(version, &entries)
            }
            other => bail!("expected CounterTable, got {other:?}"),
        };
        Ok(RawPeer {
            socket,
            id,
            secret,
            next_counter,
            cursor,
            accepted: Vec::new(),
            rejected: 0,
            last_rejection: None,
        })
    }

    /// Sends a contribution computed "at" the newest version this peer has seen.
    pub async fn contribute(&mut self, byte: u8) -> Result<()> {
        let msg = Message::Contribute {
            counter: Serial::of(self.next_counter.0),
            base_version: Serial::of(self.cursor.version().0),
            bytes: vec![byte],
        };
        self.next_counter = Counter(self.next_counter.0 + 1);
        send(&mut self.socket, &msg).await
    }

    /// Handles the next message; `false` once the socket is closed.
    pub async fn pump(&mut self) -> Result<bool> {
        match receive(&mut self.socket).await {
            Received::Message(Message::LogBatch {
                first_version,
                entries,
            }) => {
                let entries = self.cursor.unpack(first_version, &entries)?;
                let at = (first_version.0..).map(Version);
                for (entry, version) in entries.iter().zip(at) {
                    if entry.peer == self.id {
                        self.accepted.push((entry.counter, version));
                    }
                }
            }
            Received::Message(Message::Rejected { reason, .. }) => {
                self.rejected += 1;
                self.last_rejection = Some(reason);
            }
            Received::Message(_) => {}
            Received::Closed(..) | Received::Gone => return Ok(false),
        }
        Ok(true)
    }
}

/// Decodes a `GET /api/log` body: length-prefixed messages, a counter table then batches.
pub fn decode_log(mut body: &[u8]) -> Result<Vec<LogEntry>> {
    let mut cursor: Option<LogCursor> = None;
    let mut log = Vec::new();
    while !body.is_empty() {
        let len = varint::get(&mut body, "record")? as usize;
        if body.len() < len {
            bail!("truncated log record");
        }
        let (record, rest) = body.split_at(len);
        body = rest;
        match Message::decode(record)? {
            Message::CounterTable { version, entries } => {
                cursor = Some(LogCursor::from_table(version, &entries));
            }
            Message::LogBatch {
                first_version,
                entries,
            } => {
                let cursor = cursor
                    .as_mut()
                    .ok_or_else(|| anyhow!("batch before the table"))?;
                log.extend(cursor.unpack(first_version, &entries)?);
            }
            other => bail!("unexpected {} in the log", other.kind()),
        }
    }
    Ok(log)
}
