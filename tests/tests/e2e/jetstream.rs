//! The log seam on a real NATS JetStream: one server, and a cluster of three whose stream
//! leader is killed mid-append.

use e2e::nats::{Nats, stream_leader};
use protocol::{Counter, JobId, LogEntry, PeerId, Version};
use relay::log::{LogStore, LogStoreError, StreamPlace, jetstream};
use std::sync::Arc;
use std::time::Duration;

/// `n` entries from version `first` on: five peers in turn, each counting up.
fn entries(first: u64, n: u64) -> Arc<[LogEntry]> {
    (first..first + n)
        .map(|v| LogEntry {
            peer: PeerId((v % 5) as u32),
            counter: Counter(v / 5),
            byte: (v % 251) as u8,
        })
        .collect()
}

async fn place(nats: &Nats, job: u64, replicas: usize) -> StreamPlace {
    StreamPlace {
        jetstream: relay::cluster::connect(&nats.urls())
            .await
            .expect("NATS answers")
            .jetstream,
        job: JobId(job),
        replicas,
    }
}

async fn wait_head(log: &LogStore, at_least: Version) {
    tokio::time::timeout(
        Duration::from_secs(10),
        log.watch_head().wait_for(|head| *head >= at_least),
    )
    .await
    .expect("the head arrives")
    .expect("the log is open");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_on_jetstream_a_writer_behind_the_head_is_refused() {
    let nats = Nats::single().expect("nats-server starts");
    let first = LogStore::jetstream(&place(&nats, 7, 1).await)
        .await
        .unwrap();
    let second = LogStore::jetstream(&place(&nats, 7, 1).await)
        .await
        .unwrap();
    let mut following = first.subscribe(Version(0));

    first.append(Version(0), entries(0, 3)).await.unwrap();
    // The second writer has not seen that append: the stream itself refuses it.
    let refused = second.append(Version(0), entries(100, 2)).await;
    assert!(
        matches!(refused, Err(LogStoreError::NotAtHead { .. })),
        "{refused:?}"
    );
    // Once it has followed the stream to the head it may go on from there.
    wait_head(&second, Version(3)).await;
    second.append(Version(3), entries(3, 2)).await.unwrap();
    let stale = first.append(Version(3), entries(200, 1)).await;
    assert!(
        matches!(stale, Err(LogStoreError::NotAtHead { .. })),
        "{stale:?}"
    );

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), following.next())
            .await
            .expect("the subscription follows")
            .unwrap();
        assert_eq!(chunk.first, Version(seen.len() as u64));
        seen.extend_from_slice(&chunk.entries);
    }
    assert_eq!(seen, entries(0, 5).to_vec());
    wait_head(&first, Version(5)).await;
    assert_eq!(first.read(Version(0), Version(5)).await.unwrap(), seen);

    // A process asking other replicas of the same stream is refused, not served silently.
    let other = LogStore::jetstream(&place(&nats, 7, 2).await).await.err();
    assert!(
        matches!(
            other,
            Some(LogStoreError::Jetstream(
                jetstream::JetstreamError::Replicas {
                    has: 1,
                    asked: 2,
                    ..
                }
            ))
        ),
        "{other:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_log_reopens_at_its_head_with_its_counter_tables() {
    let nats = Nats::single().expect("nats-server starts");
    let memory = LogStore::memory().await;
    {
        let log = LogStore::jetstream(&place(&nats, 8, 1).await)
            .await
            .unwrap();
        // More than the entries kept in memory, so early reads go back to the stream.
        let total = jetstream::RECENT_ENTRIES as u64 + 5_000;
        let mut at = 0;
        while at < total {
            let n = 1_000.min(total - at);
            log.append(Version(at), entries(at, n)).await.unwrap();
            memory.append(Version(at), entries(at, n)).await.unwrap();
            at += n;
        }
    }
    let log = LogStore::jetstream(&place(&nats, 8, 1).await)
        .await
        .unwrap();
    assert_eq!(log.head(), memory.head());
    let head = log.head().0;
    for (from, to) in [(0, 10), (990, 2_010), (head - 700, head), (4_000, 4_100)] {
        assert_eq!(
            log.read(Version(from), Version(to)).await.unwrap(),
            memory.read(Version(from), Version(to)).await.unwrap(),
            "entries {from}..{to}"
        );
    }
    for at in [0, 1, 4_096, 5_000, head - 1, head] {
        assert_eq!(
            log.counter_table(Version(at)).await.unwrap(),
            memory.counter_table(Version(at)).await.unwrap(),
            "the counter table at {at}"
        );
    }
    // Another job's stream is another log.
    let other = LogStore::jetstream(&place(&nats, 9, 1).await)
        .await
        .unwrap();
    assert_eq!(other.head(), Version(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn write_ahead_on_jetstream_every_acknowledged_append_survives_the_stream_leader_killed() {
    let mut nats = Nats::cluster(3).expect("a three-server cluster starts");
    let place = place(&nats, 11, 3).await;
    let log = LogStore::jetstream(&place).await.unwrap();
    let mut acknowledged = 0u64;
    for _ in 0..20 {
        log.append(Version(acknowledged), entries(acknowledged, 7))
            .await
            .unwrap();
        acknowledged += 7;
    }
    let leader = stream_leader(&place.jetstream, &place.stream_name()).await;
    nats.server(&leader).expect("a server of ours").kill();
    // Appends wait out the election and go on; none is lost or written twice.
    for _ in 0..20 {
        log.append(Version(acknowledged), entries(acknowledged, 7))
            .await
            .unwrap();
        acknowledged += 7;
    }
    let survivors = nats
        .servers
        .iter()
        .filter(|s| s.is_running())
        .map(|s| s.url())
        .collect::<Vec<_>>()
        .join(",");
    let reader = LogStore::jetstream(&StreamPlace {
        jetstream: relay::cluster::connect(&survivors).await.unwrap().jetstream,
        ..place.clone()
    })
    .await
    .unwrap();
    let connection = relay::cluster::connect(&survivors).await.unwrap();
    let new_leader = stream_leader(&connection.jetstream, &place.stream_name()).await;
    assert_ne!(new_leader, leader, "another server leads the stream now");
    assert_eq!(reader.head(), Version(acknowledged));
    assert_eq!(
        reader
            .read(Version(0), Version(acknowledged))
            .await
            .unwrap(),
        entries(0, acknowledged).to_vec()
    );
}
