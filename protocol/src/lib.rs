//! The onebyte wire protocol: identifiers, seed derivation, the one-byte quantizer and the
//! binary codec of every message that crosses the relay.
//!
//! No async and no burn here: the relay, the engine, the native worker and the browser client
//! all share this crate, so it must stay small and portable (it builds for wasm32 unchanged).

pub mod close;
mod error;
pub mod framing;
mod ids;
pub mod log;
pub mod message;
pub mod quant;
pub mod seed;
pub mod serial;
mod url;
pub mod varint;

pub use error::DecodeError;
pub use ids::{Counter, JobId, PeerId, Resume, ResumeSecret, Version};
pub use log::{LogCursor, LogError};
pub use message::{LogEntry, Message, PackedEntry, RejectReason, WeightHash};
pub use quant::{QuantizeError, Quantizer};
pub use seed::DirectionSeed;
pub use serial::Serial;
pub use url::{RelayUrlError, RelayUrls, websocket_with_backend};

/// Peers report their weight hash at every version that is a multiple of this; the relay's
/// follower hashes the same versions and compares.
pub const HASH_REPORT_INTERVAL: u64 = 256;

/// Version of the wire format. A peer and a relay that disagree refuse each other in `Hello`.
/// (4: a contribution's acceptance is its entry in the log, `Accepted` answers votes only;
/// a `Contribute` may carry a run of estimates.)
pub const PROTOCOL_VERSION: u16 = 4;
