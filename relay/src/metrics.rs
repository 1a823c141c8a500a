//! `GET /metrics`: the relay's figures in the Prometheus/OpenMetrics text format.

use crate::stats::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// The relay's registry, built once at start. The figures themselves live in [`Stats`] (plain
/// atomics the hot paths bump); a collector reads them at each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(stats: Arc<Stats>) -> Self {
        let mut registry = Registry::with_prefix("onebyte");
        registry.register_collector(Box::new(StatsCollector(stats)));
        Metrics { registry }
    }

    /// The current figures as OpenMetrics text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        let gauges: [(&str, &str, u64); 6] = [
            (
                "log_version",
                "Entries in the durable log",
                load(&self.0.version),
            ),
            ("peers", "Peers connected", load(&self.0.peers)),
            (
                "peers_quarantined",
                "Peers whose contributions are rejected until the host releases them",
                load(&self.0.quarantined),
            ),
            (
                "follower_version",
                "Version of the relay's own replica",
                load(&self.0.follower_version),
            ),
            (
                "snapshot_version",
                "Version of the newest snapshot",
                load(&self.0.snapshot_version),
            ),
            (
                "paused",
                "1 while the job is paused",
                u64::from(self.0.paused.load(Relaxed)),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 11] = [
            (
                "connections_refused",
                "TCP connections closed at once by the connection limits",
                load(&self.0.connections_refused),
            ),
            (
                "peers_closed_idle",
                "Joined peers closed for answering no ping or going quiet",
                load(&self.0.idle_closed),
            ),
            (
                "contributions_accepted",
                "Contributions written to the log",
                load(&self.0.accepted),
            ),
            (
                "contributions_clipped",
                "Contributions logged clipped to the relay's bound",
                load(&self.0.clipped),
            ),
            (
                "contributions_rejected",
                "Contributions refused",
                load(&self.0.rejected),
            ),
            (
                "sockets_refused",
                "Sockets closed with a refusal code",
                load(&self.0.refused),
            ),
            (
                "slow_consumers_dropped",
                "Peers dropped because their queue filled",
                load(&self.0.slow_consumers_dropped),
            ),
            (
                "received_bytes",
                "Message bytes received from peers",
                load(&self.0.bytes_in),
            ),
            (
                "sent_bytes",
                "Message bytes sent to peers",
                load(&self.0.bytes_out),
            ),
            (
                "hashes_checked",
                "Peer weight hashes compared with the follower",
                load(&self.0.hashes_checked),
            ),
            (
                "hashes_diverged",
                "Peer weight hashes that differed",
                load(&self.0.hashes_diverged),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
