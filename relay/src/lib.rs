//! The onebyte relay: hosts one training job.
//!
//! It serves the job, snapshots and the page, sequences the peers' one-byte contributions into
//! a durable log ([`sequencer`], [`log`], [`store`]), broadcasts the log ([`broadcaster`]), and
//! keeps its own replica ([`follower`]) for snapshots and for checking that every peer holds
//! the same weights. It never receives training data.

pub mod board;
pub mod broadcaster;
pub mod cluster;
pub mod committee;
pub mod config;
pub mod context;
pub mod follower;
pub mod http;
pub mod influence;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod peer;
pub mod rate;
pub mod secret;
pub mod sequencer;
pub mod server;
pub mod stats;
pub mod store;

pub use config::RelayConfig;
pub use server::run;
