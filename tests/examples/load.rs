//! Load generator: many websocket peers against a real relay process.
//!
//! For each peer count it runs the peers for a while at a fixed total contribution rate and
//! prints what the relay sustained: accepted contributions/s, deliveries/s (entries received
//! summed over peers), latency from a peer's send to another peer's receipt (p50/p99), the
//! relay's RSS and CPU, and the bytes per contribution counted on the peers' sockets (framing
//! and masks included). Then it times a fresh join against the log it built, with and
//! without the snapshot.
//!
//! With `--edges 1,2,4` the same load runs against a relay spread over processes instead: a
//! three-server NATS JetStream cluster (R3), one sequencer and that many edges, the peers split
//! across the edges; CPU and memory are then the sum over every process (NATS included).
//!
//! `target/debug/examples/load --peers 100,1000 --seconds 10 --rate 500 --tick-ms 5` (after
//! `cargo build --workspace --bins --examples`).

use anyhow::{Context as _, Result, bail};
use e2e::nats::Nats;
use e2e::raw;
use e2e::{Relay, SequencerProcess};
use futures_util::{SinkExt, StreamExt};
use protocol::{LogCursor, Message, PROTOCOL_VERSION, PeerId, Serial, Version};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A TCP stream that counts the bytes crossing it.
struct Counted {
    inner: tokio::net::TcpStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read
            .fetch_add((buf.filled().len() - before) as u64, Relaxed);
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &poll {
            self.written.fetch_add(*n as u64, Relaxed);
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What all simulated peers share.
struct Shared {
    start: Instant,
    /// Send time (µs since start, +1 so 0 means unknown) of each peer's counter.
    sent_at: Vec<Vec<AtomicU64>>,
    sent: AtomicU64,
    delivered: AtomicU64,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    latencies: std::sync::Mutex<Vec<u32>>,
    recording: std::sync::atomic::AtomicBool,
}

struct Args {
    peers: Vec<usize>,
    seconds: u64,
    rate: f64,
    tick_ms: u64,
    /// Edge counts to run over NATS; empty: the single relay.
    edges: Vec<usize>,
}

fn parse_args() -> Result<Args> {
    let mut peers = vec![100, 1000];
    let mut edges = Vec::new();
    let mut seconds = 10;
    let mut rate = 500.0;
    let mut tick_ms = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().context("every option takes a value")?;
        match a.as_str() {
            "--peers" => {
                peers = v
                    .split(',')
                    .map(|p| p.parse())
                    .collect::<Result<_, _>>()
                    .context("--peers takes numbers like 100,1000")?
            }
            "--seconds" => seconds = v.parse()?,
            "--rate" => rate = v.parse()?,
            "--tick-ms" => tick_ms = v.parse()?,
            "--edges" => {
                edges = v
                    .split(',')
                    .map(|p| p.parse())
                    .collect::<Result<_, _>>()
                    .context("--edges takes numbers like 1,2,4")?
            }
            other => {
                bail!("unknown option {other} (use --peers, --seconds, --rate, --tick-ms, --edges)")
            }
        }
    }
    Ok(Args {
        peers,
        seconds,
        rate,
        tick_ms,
        edges,
    })
}

/// What one run loads: the relays peers connect to, and every process whose CPU and memory
/// count.
struct Target {
    relays: Vec<Relay>,
    pids: Vec<u32>,
    _sequencer: Option<SequencerProcess>,
    _nats: Option<Nats>,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let tick = args.tick_ms.to_string();
    let relay_args = [
        "--max-peers",
        "20000",
        "--rate-limit",
        "100000",
        "--peer-queue",
        "65536",
        "--tick-ms",
        &tick,
        // Every simulated peer comes from 127.0.0.1.
        "--max-connections",
        "12000",
        "--max-connections-per-address",
        "0",
        "--max-peers-per-address",
        "0",
        "--joins-per-minute",
        "0",
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "relay load: total offered rate {} contributions/s, {} s per run, relay tick {} ms",
            args.rate, args.seconds, args.tick_ms
        );
        let layouts: Vec<usize> = if args.edges.is_empty() {
            vec![0]
        } else {
            args.edges.clone()
        };
        for &edges in &layouts {
            for &n in &args.peers {
                let dir = tempfile::tempdir()?;
                let target = if edges == 0 {
                    let relay = Relay::start(&dir.path().join("load.db"), &relay_args)?;
                    Target {
                        pids: vec![relay.pid()],
                        relays: vec![relay],
                        _sequencer: None,
                        _nats: None,
                    }
                } else {
                    let nats = Nats::cluster(3)?;
                    let urls = nats.urls();
                    let cluster = [&relay_args[..], &["--nats", &urls]].concat();
                    let sequencer =
                        SequencerProcess::start(&dir.path().join("sequencer.db"), &cluster)?;
                    let edge_args = [&cluster[..], &["--role", "edge"]].concat();
                    let relays = (0..edges)
                        .map(|i| Relay::start(&dir.path().join(format!("edge{i}.db")), &edge_args))
                        .collect::<Result<Vec<_>>>()?;
                    let mut pids: Vec<u32> = relays.iter().map(Relay::pid).collect();
                    pids.push(sequencer.pid());
                    pids.extend(nats.servers.iter().filter_map(|s| s.pid()));
                    Target {
                        relays,
                        pids,
                        _sequencer: Some(sequencer),
                        _nats: Some(nats),
                    }
                };
                if edges == 0 {
                    println!("\none relay process (SQLite log)");
                } else {
                    println!("\n{edges} edge(s), one sequencer, 3 NATS servers (R3)");
                }
                run(&target, n, args.seconds, args.rate).await?;
                if edges == 0 {
                    join_times(&target.relays[0]).await?;
                }
            }
        }
        Ok(())
    })
}

async fn run(target: &Target, peers: usize, seconds: u64, rate: f64) -> Result<()> {
    let job = target.relays[0].job().await?;
    let per_peer_capacity = (rate / peers as f64 * seconds as f64 * 2.0) as usize + 64;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        sent_at: (0..peers)
            .map(|_| (0..per_peer_capacity).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        up: Arc::new(AtomicU64::new(0)),
        down: Arc::new(AtomicU64::new(0)),
        latencies: std::sync::Mutex::new(Vec::new()),
        recording: std::sync::atomic::AtomicBool::new(false),
    });
    let interval = Duration::from_secs_f64(peers as f64 / rate);
    let mut tasks = Vec::new();
    for i in 0..peers {
        let relay = &target.relays[i % target.relays.len()];
        let tcp = tokio::net::TcpStream::connect(relay.addr).await?;
        tcp.set_nodelay(true)?;
        let counted = Counted {
            inner: tcp,
            read: shared.down.clone(),
            written: shared.up.clone(),
        };
        let (mut ws, _) = tokio_tungstenite::client_async(relay.ws_url(), counted).await?;
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            job: job.id,
            resume: None,
            from: Version(0),
            token: String::new(),
        };
        ws.send(WsMessage::Binary(hello.encode().into())).await?;
        let Some(Ok(WsMessage::Binary(welcome))) = ws.next().await else {
            bail!("no Welcome");
        };
        let Message::Welcome { peer, .. } = Message::decode(&welcome)? else {
            bail!("expected Welcome");
        };
        let Some(Ok(WsMessage::Binary(table))) = ws.next().await else {
            bail!("no CounterTable");
        };
        let Message::CounterTable { version, entries } = Message::decode(&table)? else {
            bail!("expected CounterTable");
        };
        let cursor = LogCursor::from_table(version, &entries);
        let shared = shared.clone();
        // Spread the peers' send times over one interval.
        let offset = interval.mul_f64(tasks.len() as f64 / peers as f64);
        tasks.push(tokio::spawn(async move {
            peer_loop(ws, peer, cursor, shared, interval, offset).await
        }));
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let relay = &target.relays[0];
    let status0 = relay.status().await?;
    let (cpu0, t0) = (cpu_ticks_of(&target.pids)?, Instant::now());
    let (sent0, del0, up0, down0) = (
        shared.sent.load(Relaxed),
        shared.delivered.load(Relaxed),
        shared.up.load(Relaxed),
        shared.down.load(Relaxed),
    );
    shared.recording.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    shared.recording.store(false, Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks_of(&target.pids)? - cpu0) as f64 / 100.0 / elapsed;
    let status1 = relay.status().await?;
    let rss = target
        .pids
        .iter()
        .map(|pid| rss_kib(*pid))
        .sum::<Result<u64>>()?;
    let sent = shared.sent.load(Relaxed) - sent0;
    let delivered = shared.delivered.load(Relaxed) - del0;
    let up = shared.up.load(Relaxed) - up0;
    let down = shared.down.load(Relaxed) - down0;
    for t in tasks {
        t.abort();
    }
    // Every accepted contribution is one log entry: the head moved by as many.
    let accepted =
        status1["version"].as_u64().unwrap_or(0) - status0["version"].as_u64().unwrap_or(0);
    let mut lat = shared.latencies.lock().expect("not poisoned").clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    println!("{peers} peers:");
    println!(
        "  accepted {:.0}/s (offered {:.0}/s), deliveries {:.0}/s",
        accepted as f64 / elapsed,
        sent as f64 / elapsed,
        delivered as f64 / elapsed
    );
    println!(
        "  latency send → receipt by another peer: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
        pct(0.50),
        pct(0.99),
        lat.len()
    );
    println!(
        "  relay RSS {:.1} MiB, CPU {:.0} % of one core (every relay process)",
        rss as f64 / 1024.0,
        cpu * 100.0
    );
    println!(
        "  wire bytes per contribution (socket, framing included): up {:.2} B, down {:.2} B per peer",
        up as f64 / sent.max(1) as f64,
        down as f64 / delivered.max(1) as f64
    );
    Ok(())
}

async fn peer_loop<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    peer: PeerId,
    mut cursor: LogCursor,
    shared: Arc<Shared>,
    interval: Duration,
    offset: Duration,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counter = 0u64;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let slots = &shared.sent_at[peer.0 as usize % shared.sent_at.len()];
                if let Some(slot) = slots.get(counter as usize) {
                    slot.store(shared.start.elapsed().as_micros() as u64 + 1, Relaxed);
                }
                let msg = Message::Contribute {
                    counter: Serial::of(counter),
                    base_version: Serial::of(cursor.version().0),
                    bytes: vec![(counter % 251) as u8],
                };
                counter += 1;
                shared.sent.fetch_add(1, Relaxed);
                tx.send(WsMessage::Binary(msg.encode().into())).await?;
            }
            frame = rx.next() => {
                let Some(Ok(WsMessage::Binary(bytes))) = frame else { return Ok(()) };
                if let Message::LogBatch { first_version, entries } = Message::decode(&bytes)? {
                    let entries = cursor.unpack(first_version, &entries)?;
                    shared.delivered.fetch_add(entries.len() as u64, Relaxed);
                    if shared.recording.load(Relaxed) {
                        let now = shared.start.elapsed().as_micros() as u64 + 1;
                        let mut samples = Vec::new();
                        for e in entries.iter().filter(|e| e.peer != peer) {
                            n += 1;
                            if !n.is_multiple_of(8) {
                                continue;
                            }
                            let slots = &shared.sent_at[e.peer.0 as usize % shared.sent_at.len()];
                            if let Some(t) = slots.get(e.counter.0 as usize).map(|s| s.load(Relaxed)).filter(|t| *t > 0) {
                                samples.push(now.saturating_sub(t) as u32);
                            }
                        }
                        shared.latencies.lock().expect("not poisoned").extend(samples);
                    }
                }
            }
        }
    }
}

/// Time for a fresh CPU replica to reach the log's head: from version 0, and from the snapshot.
async fn join_times(relay: &Relay) -> Result<()> {
    let job = Arc::new(relay.job().await?);
    let head = relay.status().await?["version"].as_u64().unwrap_or(0);
    // From version 0: the whole log through the websocket.
    let start = Instant::now();
    let mut replica = engine::Replica::new(job.clone(), engine::cpu_device());
    catch_up(relay, &job, &mut replica, head).await?;
    let from_zero = start.elapsed();
    // From the snapshot: one GET, then the tail.
    let start = Instant::now();
    let bytes = reqwest::get(format!("{}/api/snapshot", relay.url()))
        .await?
        .bytes()
        .await?;
    let mut replica = engine::Replica::from_snapshot(job.clone(), engine::cpu_device(), &bytes)?;
    let snapshot_version = replica.version();
    catch_up(relay, &job, &mut replica, head).await?;
    let with_snapshot = start.elapsed();
    println!(
        "  join to version {head}: {:.1} ms replaying from 0, {:.1} ms from the snapshot at {snapshot_version} ({} KiB)",
        from_zero.as_secs_f64() * 1e3,
        with_snapshot.as_secs_f64() * 1e3,
        bytes.len() / 1024
    );
    Ok(())
}

async fn catch_up(
    relay: &Relay,
    job: &engine::Job,
    replica: &mut engine::Replica,
    head: u64,
) -> Result<()> {
    let mut socket = raw::connect(&relay.ws_url(), None).await?;
    raw::send(&mut socket, &raw::hello(job.id, replica.version(), "")).await?;
    let mut cursor = None;
    while replica.version().0 < head {
        match raw::receive(&mut socket).await {
            raw::Received::Message(Message::CounterTable { version, entries }) => {
                cursor = Some(LogCursor::from_table(version, &entries));
            }
            raw::Received::Message(Message::LogBatch {
                first_version,
                entries,
            }) => {
                let cursor = cursor.as_mut().context("batch before table")?;
                let entries = cursor.unpack(first_version, &entries)?;
                let room = (head - replica.version().0) as usize;
                replica.apply(&entries[..room.min(entries.len())]);
            }
            raw::Received::Message(_) => {}
            other => bail!("catch-up ended: {other:?}"),
        }
    }
    Ok(())
}

fn cpu_ticks_of(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|pid| cpu_ticks(*pid)).sum()
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()
        .map_err(Into::into)
}
