//! The onebyte wire protocol: identifiers, seed derivation, the one-byte quantizer and the
//! binary codec of every message that crosses the relay.
//!
//! No async and no burn here: the relay, the engine, the native worker and the browser client
//! all share this crate, so it must stay small and portable (it builds for wasm32 unchanged).

mod error;
pub mod framing;
mod ids;
pub mod message;
pub mod quant;
pub mod seed;
pub mod varint;

pub use error::DecodeError;
pub use ids::{Counter, JobId, PeerId, Version};
pub use message::{LogEntry, Message, RejectReason, WeightHash};
pub use quant::{QuantizeError, Quantizer};
pub use seed::DirectionSeed;

/// Version of the wire format. A peer and a relay that disagree refuse each other in `Hello`.
pub const PROTOCOL_VERSION: u16 = 1;
