//! What the driver needs from its surroundings to move bytes and tell time: the relay's
//! websocket and snapshot ([`Transport`], [`Connection`]) and a clock ([`Clock`]). The native
//! worker implements them on tokio, tungstenite and reqwest; the browser on the page's
//! `WebSocket`, `fetch` and timers.
// Both peers drive the engine on one thread (a current-thread runtime, the browser's event
// loop), so nobody needs these futures to be `Send` and the traits use plain `async fn`.
#![allow(async_fn_in_trait)]

/// What a connection delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A binary frame.
    Frame(Vec<u8>),
    /// The relay closed the connection with this close code and reason.
    Closed { code: u16, reason: String },
    /// The connection ended without a close code: the line dropped, or the stream ended.
    Lost(String),
    /// Something the relay protocol never sends (a text frame): this is not a relay.
    Unexpected(String),
}

/// One open websocket to the relay.
pub trait Connection {
    /// Sends one binary frame.
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String>;
    /// The next thing the connection delivers. Must be cancel-safe: the driver races it
    /// against a timer and drops it when the timer wins.
    async fn recv(&mut self) -> Incoming;
    /// Closes normally, saying why.
    async fn close(&mut self, reason: &str);
}

/// The relay, as a peer reaches it.
pub trait Transport {
    type Connection: Connection;
    /// The websocket's address, for messages.
    fn address(&self) -> &str;
    /// Opens the websocket.
    async fn connect(&mut self) -> Result<Self::Connection, String>;
    /// The relay's newest snapshot of `job`, decoded as its bytes arrive
    /// ([`crate::SnapshotReader`]), so that the peer never holds the file beside θ. A snapshot
    /// that does not fit the job (cut short, altered) is an error like a lost connection: the
    /// driver fetches it again with backoff.
    async fn snapshot(&mut self, job: &crate::Job) -> Result<crate::Snapshot, String>;
}

/// Time, in milliseconds (wasm32 in a browser has no `Instant`).
pub trait Clock {
    /// Milliseconds since some fixed point.
    fn now_ms(&self) -> f64;
    /// Waits `ms` milliseconds; `0` still yields to the runtime, so frames get their turn.
    async fn sleep_ms(&self, ms: f64);
}
