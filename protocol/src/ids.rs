//! Small integer identifiers. They are varint-coded on the wire, so small values cost one byte.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// A training job. Every seed is derived under a job id, so two jobs never share directions.
    JobId(u64)
);
id!(
    /// A peer within one job, assigned by the relay (or by the simulator).
    PeerId(u32)
);
id!(
    /// A peer's own contribution counter. Together with the job and peer it names a direction.
    Counter(u64)
);
id!(
    /// A position in the job's log: the weights at version `v` have applied `log[0..v)`.
    Version(u64)
);

impl PeerId {
    /// The direction a committee shares: a committee job's log names every round under this id,
    /// with the round as its counter, so every replica derives the direction its members
    /// evaluated. The relay never hands it to a peer.
    pub const COMMITTEE: PeerId = PeerId(u32::MAX);
}

impl Version {
    /// The version after applying one more entry.
    pub fn next(self) -> Self {
        Version(self.0 + 1)
    }
}

/// What a peer must show to resume its id after a reconnect: 16 random bytes the relay hands
/// out in `Welcome` and keeps only as a hash. Without it anyone could take over a disconnected
/// peer's id and its counter stream.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResumeSecret(pub [u8; 16]);

impl fmt::Debug for ResumeSecret {
    /// Never printed: logs are not a place for credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeSecret(…)")
    }
}

/// A peer id with the secret that proves it is this peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub peer: PeerId,
    pub secret: ResumeSecret,
}
