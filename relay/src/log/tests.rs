use super::*;

/// The store at `path` and its log.
async fn open(
    path: &std::path::Path,
    job: Option<&str>,
) -> Result<(crate::store::Stores, LogStore), crate::store::StoreError> {
    let (stores, _) = crate::store::open(path, job).await?;
    let log = LogStore::sqlite(stores.file.clone()).await?;
    Ok((stores, log))
}

fn entry(peer: u32, counter: u64) -> LogEntry {
    LogEntry {
        peer: PeerId(peer),
        counter: Counter(counter),
        byte: (counter % 256) as u8,
    }
}

fn entries(list: &[(u32, u64)]) -> Arc<[LogEntry]> {
    list.iter().map(|&(p, c)| entry(p, c)).collect()
}

#[tokio::test]
async fn the_log_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let job = "[job]\nname = \"a\"\n";
    {
        let (_stores, log) = open(&path, Some(job)).await.unwrap();
        log.append(Version(0), entries(&[(0, 0), (1, 0), (0, 1)]))
            .await
            .unwrap();
    }
    let (_stores, log) = open(&path, None).await.unwrap();
    assert_eq!(log.head(), Version(3));
    assert_eq!(
        log.read(Version(1), Version(3)).await.unwrap(),
        [entry(1, 0), entry(0, 1)]
    );
    assert_eq!(
        log.counter_table(Version(3)).await.unwrap(),
        [(PeerId(0), Counter(1)), (PeerId(1), Counter(0))]
    );
    assert_eq!(
        log.counter_table(Version(1)).await.unwrap(),
        [(PeerId(0), Counter(0))]
    );
}

#[tokio::test]
async fn an_append_that_does_not_continue_the_log_is_refused() {
    // The directory lives as long as the test: the SQLite log opens a connection per read.
    let (_dir, sqlite) = sqlite_log().await;
    for log in [LogStore::memory().await, sqlite] {
        log.append(Version(0), entries(&[(0, 0)])).await.unwrap();
        for at in [Version(0), Version(2)] {
            let refused = log.append(at, entries(&[(0, 1)])).await.unwrap_err();
            assert!(
                matches!(
                    refused,
                    LogStoreError::NotAtHead {
                        head: Version(1),
                        ..
                    }
                ),
                "{refused}"
            );
        }
        assert_eq!(
            log.read(Version(0), Version(9)).await.unwrap(),
            [entry(0, 0)]
        );
    }
}

async fn sqlite_log() -> (tempfile::TempDir, LogStore) {
    let dir = tempfile::tempdir().unwrap();
    let (_stores, log) = open(&dir.path().join("l.db"), Some("name = \"a\""))
        .await
        .unwrap();
    (dir, log)
}

#[tokio::test]
async fn counter_tables_come_from_checkpoints_and_the_log_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let (_stores, log) = open(&path, Some("name = \"a\"")).await.unwrap();
    log.append(Version(0), entries(&[(0, 0), (1, 0)]))
        .await
        .unwrap();
    // A checkpoint at 2 that the log does not back: the table must come from it.
    let at_2 = vec![(PeerId(0), Counter(7)), (PeerId(300), Counter(1 << 40))];
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO counter_checkpoints (version, counters) VALUES (2, ?1)",
            [sqlite::encode_table(&at_2)],
        )
        .unwrap();
    log.append(Version(2), entries(&[(1, 1), (2, 5)]))
        .await
        .unwrap();
    assert_eq!(log.counter_table(Version(2)).await.unwrap(), at_2);
    assert_eq!(
        log.counter_table(Version(4)).await.unwrap(),
        [
            (PeerId(0), Counter(7)),
            (PeerId(1), Counter(1)),
            (PeerId(2), Counter(5)),
            (PeerId(300), Counter(1 << 40))
        ]
    );
    assert_eq!(
        log.counter_table(Version(1)).await.unwrap(),
        [(PeerId(0), Counter(0))],
        "before the first checkpoint: the log alone"
    );
}

#[tokio::test]
async fn old_checkpoints_are_thinned_and_old_tables_still_come_out_right() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let (_stores, log) = open(&path, Some("name = \"a\"")).await.unwrap();
    // 40 checkpoints' worth of entries: peer (v % 7), counters growing.
    let total = 40 * CHECKPOINT_EVERY;
    let mut version = 0;
    while version < total {
        let n = 1000.min(total - version);
        let chunk: Arc<[LogEntry]> = (version..version + n)
            .map(|v| entry((v % 7) as u32, v))
            .collect();
        log.append(Version(version), chunk).await.unwrap();
        version += n;
    }
    let kept: Vec<i64> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT version FROM counter_checkpoints ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let sparse = SPARSE_CHECKPOINT_EVERY as i64;
    // The one at 0 (written when the log opened) and the sparse and dense ones since.
    assert_eq!(
        kept.len() as u64,
        1 + DENSE_CHECKPOINTS
            + 1
            + (total - DENSE_CHECKPOINTS * CHECKPOINT_EVERY) / SPARSE_CHECKPOINT_EVERY,
        "{kept:?}"
    );
    assert!(
        kept.iter()
            .filter(|&&v| v < kept[kept.len() - 17])
            .all(|v| v % sparse == 0)
    );
    // A table in the thinned part: the sparse checkpoint before it and the log since.
    let at = Version(5 * CHECKPOINT_EVERY + 3);
    let expected: Vec<(PeerId, Counter)> = (0..7u64)
        .map(|p| {
            let last = (0..at.0).rev().find(|v| v % 7 == p).unwrap();
            (PeerId(p as u32), Counter(last))
        })
        .collect();
    assert_eq!(log.counter_table(at).await.unwrap(), expected);
}

/// What a subscriber received, as one list; each chunk continues the one before.
async fn take(sub: &mut LogSubscription, n: usize) -> Vec<LogEntry> {
    let mut got = Vec::new();
    let mut at = sub.position();
    while got.len() < n {
        let chunk = sub.next().await.unwrap();
        assert_eq!(chunk.first, at, "chunks continue one another");
        at = Version(at.0 + chunk.entries.len() as u64);
        got.extend_from_slice(&chunk.entries);
    }
    got
}

#[tokio::test]
async fn a_subscription_catches_up_then_follows_and_reads_what_it_fell_behind_on() {
    // The directory lives as long as the test: the SQLite log opens a connection per read.
    let (_dir, sqlite) = sqlite_log().await;
    for log in [LogStore::memory().await, sqlite] {
        let all: Vec<LogEntry> = (0..3000u64).map(|v| entry((v % 3) as u32, v)).collect();
        log.append(Version(0), all[..1000].into()).await.unwrap();
        // From the middle of what is durable: a read, then the appends as they come.
        let mut sub = log.subscribe(Version(400));
        let appender = {
            let log = log.clone();
            let all = all.clone();
            tokio::spawn(async move {
                for (i, chunk) in all[1000..].chunks(10).enumerate() {
                    log.append(Version(1000 + 10 * i as u64), chunk.into())
                        .await
                        .unwrap();
                }
            })
        };
        // A subscriber that falls further behind than the live chunks kept: 200 appends of
        // 10 are within them, so lag it by waiting for the appender first on every other log.
        appender.await.unwrap();
        let got = take(&mut sub, 2600).await;
        assert_eq!(got, all[400..]);
        assert_eq!(sub.position(), Version(3000));
        // And live from here.
        let next = tokio::spawn(async move { sub.next().await.unwrap() });
        tokio::task::yield_now().await;
        log.append(Version(3000), entries(&[(5, 0)])).await.unwrap();
        let chunk = next.await.unwrap();
        assert_eq!(
            (chunk.first, &chunk.entries[..]),
            (Version(3000), &[entry(5, 0)][..])
        );
    }
}

#[tokio::test]
async fn a_subscriber_lagging_past_the_live_chunks_reads_the_rest() {
    let log = LogStore::memory().await;
    let mut sub = log.subscribe(Version(0));
    let total = (LIVE_CHUNKS as u64 + 100) * 2;
    for v in (0..total).step_by(2) {
        log.append(Version(v), entries(&[(0, v), (1, v)]))
            .await
            .unwrap();
    }
    let got = take(&mut sub, total as usize).await;
    assert_eq!(got.len() as u64, total);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, e)| e.counter.0 == (i as u64 / 2) * 2)
    );
}
