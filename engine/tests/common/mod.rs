//! Helpers shared by the engine's integration tests.

pub use engine::reference::synthetic_log;
