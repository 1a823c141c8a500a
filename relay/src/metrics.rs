//! `GET /metrics`: the relay's figures in the Prometheus/OpenMetrics text format.

use crate::stats::Stats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;

/// Renders the current figures. A fresh registry per scrape: the values live in [`Stats`].
pub fn render(stats: &Stats) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("onebyte");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    let gauges: [(&str, &str, u64); 5] = [
        (
            "log_version",
            "Entries in the durable log",
            load(&stats.version),
        ),
        ("peers", "Peers connected", load(&stats.peers)),
        (
            "follower_version",
            "Version of the relay's own replica",
            load(&stats.follower_version),
        ),
        (
            "snapshot_version",
            "Version of the newest snapshot",
            load(&stats.snapshot_version),
        ),
        (
            "paused",
            "1 while the job is paused",
            u64::from(stats.paused.load(Relaxed)),
        ),
    ];
    for (name, help, value) in gauges {
        let g = Gauge::<i64>::default();
        g.set(value as i64);
        registry.register(name, help, g);
    }
    let counters: [(&str, &str, u64); 8] = [
        (
            "contributions_accepted",
            "Contributions written to the log",
            load(&stats.accepted),
        ),
        (
            "contributions_rejected",
            "Contributions refused",
            load(&stats.rejected),
        ),
        (
            "sockets_refused",
            "Sockets closed with a refusal code",
            load(&stats.refused),
        ),
        (
            "slow_consumers_dropped",
            "Peers dropped because their queue filled",
            load(&stats.slow_consumers_dropped),
        ),
        (
            "received_bytes",
            "Message bytes received from peers",
            load(&stats.bytes_in),
        ),
        (
            "sent_bytes",
            "Message bytes sent to peers",
            load(&stats.bytes_out),
        ),
        (
            "hashes_checked",
            "Peer weight hashes compared with the follower",
            load(&stats.hashes_checked),
        ),
        (
            "hashes_diverged",
            "Peer weight hashes that differed",
            load(&stats.hashes_diverged),
        ),
    ];
    for (name, help, value) in counters {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    }
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}
