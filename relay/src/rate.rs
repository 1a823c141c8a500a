//! A running total's rate over the last few seconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A running total's rate over the last few seconds (accepted contributions per second).
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

const RATE_WINDOW: Duration = Duration::from_secs(5);

impl RateWindow {
    /// The total is now `total`.
    pub fn record(&mut self, total: u64) {
        let now = Instant::now();
        self.samples.push_back((now, total));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// How fast the total grew over the last five seconds, per second.
    pub fn per_second(&self) -> f64 {
        let now = Instant::now();
        let mut recent = self
            .samples
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW);
        let first = recent.next();
        let last = recent.next_back().or(first);
        match (first, last) {
            (Some(first), Some(last)) if last.1 > first.1 => {
                let span = now.duration_since(first.0).as_secs_f64().max(1.0);
                (last.1 - first.1) as f64 / span
            }
            _ => 0.0,
        }
    }
}
