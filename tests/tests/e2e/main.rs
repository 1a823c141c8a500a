//! End-to-end tests, one binary: real relay and worker processes on 127.0.0.1.

mod abuse;
mod classify;
mod cluster;
mod committee;
mod jetstream;
mod language;
mod privacy;
mod relay;
