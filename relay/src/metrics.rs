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
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        registry.register(name, help, g);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    gauge(
        &mut registry,
        "log_version",
        "Entries in the durable log",
        stats.version.load(Relaxed) as i64,
    );
    gauge(
        &mut registry,
        "peers",
        "Peers connected",
        stats.peers.load(Relaxed) as i64,
    );
    gauge(
        &mut registry,
        "follower_version",
        "Version of the relay's own replica",
        stats.follower_version.load(Relaxed) as i64,
    );
    gauge(
        &mut registry,
        "snapshot_version",
        "Version of the newest snapshot",
        stats.snapshot_version.load(Relaxed) as i64,
    );
    gauge(
        &mut registry,
        "paused",
        "1 while the job is paused",
        i64::from(stats.paused.load(Relaxed)),
    );
    counter(
        &mut registry,
        "contributions_accepted",
        "Contributions written to the log",
        stats.accepted.load(Relaxed),
    );
    counter(
        &mut registry,
        "contributions_rejected",
        "Contributions refused",
        stats.rejected.load(Relaxed),
    );
    counter(
        &mut registry,
        "sockets_refused",
        "Sockets closed with a refusal code",
        stats.refused.load(Relaxed),
    );
    counter(
        &mut registry,
        "slow_consumers_dropped",
        "Peers dropped because their queue filled",
        stats.slow_consumers_dropped.load(Relaxed),
    );
    counter(
        &mut registry,
        "received_bytes",
        "Message bytes received from peers",
        stats.bytes_in.load(Relaxed),
    );
    counter(
        &mut registry,
        "sent_bytes",
        "Message bytes sent to peers",
        stats.bytes_out.load(Relaxed),
    );
    counter(
        &mut registry,
        "hashes_checked",
        "Peer weight hashes compared with the follower",
        stats.hashes_checked.load(Relaxed),
    );
    counter(
        &mut registry,
        "hashes_diverged",
        "Peer weight hashes that differed",
        stats.hashes_diverged.load(Relaxed),
    );
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}
