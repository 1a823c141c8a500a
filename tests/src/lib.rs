//! Helpers for the end-to-end tests: start the real `onebyte-relay` and `onebyte` binaries on
//! loopback, and talk the wire protocol directly where a test needs to misbehave.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test executable.

pub mod raw;
pub mod tls;

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        let deadline = Instant::now() + Duration::from_secs(10);
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

/// A worker process (`onebyte join`).
pub struct Worker {
    child: Child,
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
        let child = Command::new(binary("onebyte"))
            .args(["join", "--relay", relay, "--json"])
            .args(backend)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting onebyte join")?;
        Ok(Worker { child })
    }

    /// Waits for the worker to exit successfully and returns its JSON report.
    pub fn finish(self) -> Result<serde_json::Value> {
        let out = self.child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("worker failed ({}): {stdout}", out.status);
        }
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| format!("worker's last line: {last}"))
    }
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
