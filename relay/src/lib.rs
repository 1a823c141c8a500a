//! The relay: one training job's sequencer, durable log and web server.
//!
//! Not written yet: the relay issue fills this crate (axum, a write-ahead log in an embedded
//! store, snapshots from a CPU follower, consistency checks). `onebyte simulate` stands in for it
//! with an in-memory log until then.
