//! Helpers for the end-to-end tests: start the real `onebyte-relay` and `onebyte` binaries on
//! loopback, and talk the wire protocol directly where a test needs to misbehave.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test executable.

pub mod nats;
pub mod raw;
pub mod tls;

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The path of a workspace binary, built by `cargo test --workspace`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --workspace`) so the \
         binaries are built",
        path.display()
    );
    path
}

/// Runs the `onebyte` command line to its end and returns its standard output; panics with its
/// standard error if it fails.
pub fn onebyte<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let out = Command::new(binary("onebyte"))
        .args(args)
        .output()
        .expect("onebyte runs");
    assert!(
        out.status.success(),
        "onebyte failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A relay process on 127.0.0.1.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub store: PathBuf,
    args: Vec<String>,
}

impl Relay {
    /// Starts a relay on a free port with `store` and extra arguments.
    pub fn start(store: &Path, args: &[&str]) -> Result<Relay> {
        Relay::start_on(
            "127.0.0.1:0",
            store,
            args.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn start_on(listen: &str, store: &Path, args: Vec<String>) -> Result<Relay> {
        let mut child = Command::new(binary("onebyte-relay"))
            .arg("--listen")
            .arg(listen)
            .arg("--store")
            .arg(store)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting onebyte-relay")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (scheme, addr) = loop {
            let Some(line) = lines.next() else {
                let status = child.wait()?;
                bail!("the relay exited before listening ({status})");
            };
            let line = line?;
            if let Some(url) = line.strip_prefix("listening on http://") {
                break ("http", url.trim().parse::<SocketAddr>()?);
            }
            if let Some(url) = line.strip_prefix("listening on https://") {
                break ("https", url.trim().parse::<SocketAddr>()?);
            }
            if Instant::now() > deadline {
                bail!("the relay did not start listening within 60 s");
            }
        };
        // Keep draining stdout so the relay never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Relay {
            child,
            addr,
            scheme,
            store: store.to_path_buf(),
            args,
        })
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay process's resident memory, in bytes (Linux only).
    pub fn resident_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(kib * 1024)
    }

    /// `http://127.0.0.1:PORT` (https with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the relay again on the same port and store, with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let listen = self.addr.to_string();
        let deadline = Instant::now() + WAIT;
        loop {
            match Relay::start_on(&listen, &self.store, self.args.clone()) {
                Ok(relay) => {
                    *self = relay;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `GET path`, the body as text.
    async fn get(&self, path: &str) -> Result<String> {
        Ok(reqwest::get(format!("{}{path}", self.url()))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// `GET /api/status` as JSON.
    pub async fn status(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.get("/api/status").await?)?)
    }

    /// `GET /api/status`, or the error as a JSON string (for waits, which report what they saw).
    pub async fn status_or_error(&self) -> serde_json::Value {
        self.status()
            .await
            .unwrap_or_else(|e| serde_json::Value::String(format!("{e:#}")))
    }

    /// Polls the status until `done` holds for it (and returns it), or fails after `timeout`
    /// naming `what` it waited for and the last status.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        wait_for(timeout, what, || self.status_or_error(), done).await
    }

    /// `GET /api/admin/peers` with the admin `token`, as JSON.
    pub async fn admin_peers(&self, token: &str) -> Result<serde_json::Value> {
        let body = reqwest::Client::new()
            .get(format!("{}/api/admin/peers", self.url()))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// `POST` to an admin `path` with the admin `token`; the response's status code.
    pub async fn admin_post(&self, path: &str, token: &str) -> Result<u16> {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.url()))
            .bearer_auth(token)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// The job the relay hosts.
    pub async fn job(&self) -> Result<engine::Job> {
        Ok(engine::Job::from_toml(&self.get("/api/job").await?)?)
    }

    /// The whole durable log, through `GET /api/log`.
    pub async fn log(&self) -> Result<Vec<protocol::LogEntry>> {
        let body = reqwest::get(format!("{}/api/log?from=0", self.url()))
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        raw::decode_log(&body)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A relay process that only sequences (`--role sequencer`): it listens on no port.
///
/// Supervised as `deploy/onebyte-relay.service` supervises it: a candidate that stops on its
/// own with a failure (it lost its lease: on a busy machine a renewal can take longer than the
/// lease) is started again. Only [`SequencerProcess::kill`] stops it for good.
pub struct SequencerProcess {
    child: Arc<Mutex<Child>>,
    supervised: Arc<AtomicBool>,
    store: PathBuf,
    args: Vec<String>,
}

impl SequencerProcess {
    /// Starts `onebyte-relay --role sequencer` with `store` and extra arguments (`--nats …`),
    /// and waits until it says it sequences.
    pub fn start(store: &Path, args: &[&str]) -> Result<SequencerProcess> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = Arc::new(Mutex::new(Self::candidate(store, &args)?));
        let supervised = Arc::new(AtomicBool::new(true));
        let (watched, watching) = (child.clone(), supervised.clone());
        let (store_again, args_again) = (store.to_path_buf(), args.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                let mut child = watched.lock().expect("no panics while holding it");
                if !watching.load(Ordering::SeqCst) {
                    return;
                }
                match child.try_wait() {
                    Ok(Some(status)) if !status.success() => {
                        eprintln!("the sequencer stopped ({status}): starting it again");
                        match Self::candidate(&store_again, &args_again) {
                            Ok(again) => *child = again,
                            Err(e) => eprintln!("the sequencer did not start again: {e:#}"),
                        }
                    }
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) => {}
                }
            }
        });
        Ok(SequencerProcess {
            child,
            supervised,
            store: store.to_path_buf(),
            args,
        })
    }

    /// One candidate process, once it says it is one.
    fn candidate(store: &Path, args: &[String]) -> Result<Child> {
        let mut child = Command::new(binary("onebyte-relay"))
            .args(["--role", "sequencer", "--store"])
            .arg(store)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting onebyte-relay --role sequencer")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let Some(line) = lines.next() else {
                let status = child.wait()?;
                bail!("the sequencer exited before it started ({status})");
            };
            if line?.starts_with("onebyte relay: sequencer candidate of job") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(child)
    }

    /// The process id of the candidate running now.
    pub fn pid(&self) -> u32 {
        self.child.lock().expect("no panics while holding it").id()
    }

    /// SIGKILL: no shutdown code runs, and nothing starts it again.
    pub fn kill(&mut self) {
        self.supervised.store(false, Ordering::SeqCst);
        let mut child = self.child.lock().expect("no panics while holding it");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again on the same store, with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        *self = SequencerProcess::start(&self.store.clone(), &args)?;
        Ok(())
    }
}

impl Drop for SequencerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a test waits for something that takes a second or two at rest: generous, because
/// the checks must hold on a machine busy with other work.
pub const WAIT: Duration = Duration::from_secs(120);

/// A worker process (`onebyte join`).
pub struct Worker {
    child: Child,
    /// Its standard output, a line each (the last is its JSON report).
    stdout: Lines,
    /// Its latest lines of standard error (also echoed to the test's own).
    stderr: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// How long a test waits for a worker to finish: far longer than any test needs on a busy
/// machine, so that a worker that hangs fails the test with its output instead of hanging CI.
const WORKER_DEADLINE: Duration = Duration::from_secs(600);

/// Lines a process printed, the latest `keep` of them.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl Lines {
    /// Reads `from` a line at a time on a thread, keeping the latest `keep` (and echoing each
    /// to the test's standard error when `echo`).
    fn collect(
        from: impl std::io::Read + Send + 'static,
        keep: usize,
        echo: bool,
    ) -> (Lines, std::thread::JoinHandle<()>) {
        let lines = Lines::default();
        let kept = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                let mut kept = kept.0.lock().expect("no panics while holding it");
                if kept.len() == keep {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        (lines, reader)
    }

    fn last(&self) -> String {
        let lines = self.0.lock().expect("no panics while holding it");
        lines.back().cloned().unwrap_or_default()
    }

    fn tail(&self) -> String {
        let lines = self.0.lock().expect("no panics while holding it");
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Worker {
    /// Starts `onebyte join --relay URL --json --backend cpu ARGS…` (the CPU unless ARGS say
    /// otherwise: measuring backends would only slow the tests).
    pub fn start(relay: &str, args: &[&str]) -> Result<Worker> {
        let backend: &[&str] = if args.contains(&"--backend") {
            &[]
        } else {
            &["--backend", "cpu"]
        };
        let mut child = Command::new(binary("onebyte"))
            .args(["join", "--relay", relay, "--json"])
            .args(backend)
            .args(args)
            .env("RUST_LOG", "warn,onebyte::join=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting onebyte join")?;
        let (stdout, out_reader) = Lines::collect(child.stdout.take().expect("piped"), 4, false);
        let (stderr, err_reader) = Lines::collect(child.stderr.take().expect("piped"), 20, true);
        Ok(Worker {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        })
    }

    /// Waits for the worker to exit successfully and returns its JSON report. A worker that
    /// fails, or is still running after [`WORKER_DEADLINE`], is an error that shows its last
    /// lines of output.
    pub fn finish(mut self) -> Result<serde_json::Value> {
        let deadline = Instant::now() + WORKER_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the worker was still running after {WORKER_DEADLINE:?}; its last output                      line: {:?}; its last errors:\n{}",
                    self.stdout.last(),
                    self.stderr.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let last = self.stdout.last();
        if !status.success() {
            bail!(
                "worker failed ({status}); its last output line: {last:?}; its last errors:\n{}",
                self.stderr.tail()
            );
        }
        serde_json::from_str(&last).with_context(|| format!("worker's last line: {last}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `look` every 50 ms until `done` holds for what it returns, and returns that; after
/// `timeout`, an error that names `what` it waited for and the last thing it saw.
pub async fn wait_for<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut look: F,
    done: impl Fn(&T) -> bool,
) -> Result<T>
where
    T: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = look().await;
        if done(&seen) {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last saw {seen}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
