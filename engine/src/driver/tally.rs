//! What a peer counts while it runs, for its display and its report.

use std::collections::VecDeque;

/// Rates and shares are over this trailing window (ms).
const WINDOW_MS: f64 = 5_000.0;

/// What a ring all-reduce of fp32 gradients would send (and receive) for one peer's
/// `contributions` steps of a `d`-parameter model: 2·(n−1)/n·4·d bytes each way a step, taken at
/// its bound 8·d. What one byte per contribution is measured against.
pub fn fp32_allreduce_bytes(contributions: u64, d: usize) -> u64 {
    contributions * 8 * d as u64
}

/// Traffic, steps and time, kept by the driver across connections.
#[derive(Debug, Default)]
pub struct Tally {
    /// Websocket bytes sent and received, framing included.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections retried after a loss.
    pub reconnects: u64,
    /// How long the latest step took to compute (ms).
    pub step_ms: Option<f64>,
    rate: Rate,
    busy: Busy,
}

impl Tally {
    /// Contributions proposed per second over the last few seconds.
    pub fn contributions_per_s(&self, now: f64) -> f64 {
        self.rate.per_second(now)
    }

    /// Share of the last few seconds of training spent proposing or applying the log (the rest
    /// is idle: waiting on the relay, the throttle, or the browser); `None` until a second of
    /// training has been seen.
    pub fn busy_share_lately(&self, now: f64) -> Option<f64> {
        self.busy.share_lately(now)
    }

    /// The same share since this peer first trained.
    pub fn busy_share(&self, now: f64) -> Option<f64> {
        self.busy.share_overall(now)
    }

    pub(super) fn stepped(&mut self, began: f64, done: f64, contributions: usize) {
        self.busy.record(began, done, true);
        for _ in 0..contributions {
            self.rate.record(done);
        }
        self.step_ms = Some(done - began);
    }

    /// Time spent applying what the relay sent; counts as busy once the peer trains.
    pub(super) fn received(&mut self, began: f64, done: f64, training: bool) {
        self.busy.record(began, done, training);
    }

    /// Not training now (paused, behind, reconnecting): the recent share starts over.
    pub(super) fn not_training(&mut self) {
        self.busy.spans.clear();
        self.busy.window_since = None;
    }
}

/// Timestamps of recent contributions.
#[derive(Debug, Default)]
struct Rate {
    stamps: VecDeque<f64>,
}

impl Rate {
    fn record(&mut self, at: f64) {
        self.stamps.push_back(at);
        while self.stamps.front().is_some_and(|t| at - t > WINDOW_MS) {
            self.stamps.pop_front();
        }
    }

    fn per_second(&self, now: f64) -> f64 {
        let recent = self
            .stamps
            .iter()
            .filter(|&&t| now - t <= WINDOW_MS)
            .count();
        recent as f64 / (WINDOW_MS / 1_000.0)
    }
}

/// Busy spans: recent ones for the live share, a running sum for the overall one.
#[derive(Debug, Default)]
struct Busy {
    spans: VecDeque<(f64, f64)>,
    /// When the recent window's training began.
    window_since: Option<f64>,
    /// When the peer first trained.
    since: Option<f64>,
    total: f64,
}

impl Busy {
    fn record(&mut self, from: f64, to: f64, training: bool) {
        if training {
            self.since.get_or_insert(from);
            self.window_since.get_or_insert(from);
        }
        if self.since.is_none() {
            return;
        }
        self.total += to - from;
        self.spans.push_back((from, to));
        while self
            .spans
            .front()
            .is_some_and(|&(_, end)| to - end > WINDOW_MS)
        {
            self.spans.pop_front();
        }
    }

    fn share_lately(&self, now: f64) -> Option<f64> {
        let start = (now - WINDOW_MS).max(self.window_since?);
        if now - start < 1_000.0 {
            return None;
        }
        let busy: f64 = self
            .spans
            .iter()
            .map(|&(a, b)| (b.min(now) - a.max(start)).max(0.0))
            .sum();
        Some(busy / (now - start))
    }

    fn share_overall(&self, now: f64) -> Option<f64> {
        let elapsed = now - self.since?;
        (elapsed > 0.0).then(|| (self.total / elapsed).min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_shares_count_training_time_only() {
        let mut tally = Tally::default();
        // Catching up before training counts for nothing.
        tally.received(0.0, 500.0, false);
        assert_eq!(tally.busy_share(600.0), None);
        // Training: 250 ms busy in each of 4 seconds.
        for s in 1..5 {
            let t = f64::from(s) * 1_000.0;
            tally.stepped(t, t + 250.0, 2);
        }
        let now = 5_000.0;
        let lately = tally.busy_share_lately(now).unwrap();
        assert!((lately - 0.25).abs() < 1e-9, "{lately}");
        assert!((tally.busy_share(now).unwrap() - 0.25).abs() < 1e-9);
        assert!((tally.contributions_per_s(now) - 8.0 / 5.0).abs() < 1e-9);
        // A pause clears the recent share but not the overall one.
        tally.not_training();
        assert_eq!(tally.busy_share_lately(now), None);
        assert!(tally.busy_share(now).is_some());
    }
}
