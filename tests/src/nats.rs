//! Real `nats-server` processes with JetStream on loopback: one alone, or a cluster of three.
//!
//! Each server gets free ports and a directory of its own; each is killed by its process id when
//! dropped. `cargo xtask test` installs Debian's `nats-server`; a machine without it fails these
//! tests with a message that says so.

use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `nats-server` process.
pub struct NatsServer {
    pub name: String,
    pub port: u16,
    /// The monitoring port: `/healthz` says when JetStream is ready.
    monitor: u16,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no goodbye to the cluster, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = Some(spawn(&self.config, &self.dir)?);
        self.wait_healthy()
    }

    /// Waits until the server's `/healthz` answers 200: it listens, and its JetStream is ready
    /// (in a cluster: a meta leader is elected and this server is current with it). A server
    /// that exits (a port taken) fails at once, with the end of its log.
    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if healthz(self.monitor).unwrap_or(false) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "nats-server {} exited ({status}): {}",
                    self.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "nats-server {} (monitor port {}) was not healthy within 30 s",
            self.name,
            self.monitor
        )
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Servers that form one JetStream domain (a cluster when there are several).
pub struct Nats {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// One server, JetStream on.
    pub fn single() -> Result<Nats> {
        Nats::start(1)
    }

    /// `n` servers in one cluster (`n` ≥ 3 for replicated streams to keep a quorum when one
    /// is killed).
    pub fn cluster(n: usize) -> Result<Nats> {
        Nats::start(n)
    }

    /// Ports are free when drawn but another test's process may take one before a server binds
    /// it: a start that does not come up healthy is tried again on fresh ports.
    fn start(n: usize) -> Result<Nats> {
        let mut attempt = 1;
        loop {
            match Nats::start_once(n) {
                Err(e) if attempt < 3 => {
                    eprintln!("starting {n} nats-server(s), attempt {attempt}: {e:#}; again");
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    fn start_once(n: usize) -> Result<Nats> {
        // A cluster name of its own: servers of two tests' clusters never join each other,
        // whatever ports they were given.
        static CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let cluster = format!(
            "onebyte-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let mut servers = Vec::new();
        for (i, (port, cluster_port, monitor)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let server_dir = dir.path().join(&name);
            std::fs::create_dir_all(&server_dir)?;
            let mut config = format!(
                "server_name: {name}\nhost: 127.0.0.1\nport: {port}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                server_dir.join("js").display()
            );
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c, _))| format!("\"nats-route://127.0.0.1:{c}\""))
                    .collect();
                config.push_str(&format!(
                    "cluster {{ name: {cluster}, host: 127.0.0.1, port: {cluster_port}, \
                     routes: [{}] }}\n",
                    routes.join(", ")
                ));
            }
            let config_path = server_dir.join("nats.conf");
            std::fs::write(&config_path, config)?;
            let child = spawn(&config_path, &server_dir)?;
            servers.push(NatsServer {
                name,
                port: *port,
                monitor: *monitor,
                dir: server_dir,
                config: config_path,
                child: Some(child),
            });
        }
        for server in &mut servers {
            server.wait_healthy()?;
        }
        Ok(Nats { servers, _dir: dir })
    }

    /// Every server's URL, comma-separated: what `--nats` takes.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn server(&mut self, name: &str) -> Option<&mut NatsServer> {
        self.servers.iter_mut().find(|s| s.name == name)
    }
}

/// The server that leads the JetStream stream `stream` now, by its `server_name`.
pub async fn stream_leader(jetstream: &async_nats::jetstream::Context, stream: &str) -> String {
    jetstream
        .get_stream(stream)
        .await
        .expect("the stream exists")
        .info()
        .await
        .expect("the stream answers")
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a replicated stream has a leader")
}

fn spawn(config: &Path, dir: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nats.log"))?;
    Command::new("nats-server")
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context(
            "could not start nats-server: these tests need NATS's server on the PATH \
             (`cargo xtask test` installs Debian's nats-server)",
        )
}

fn healthz(monitor: u16) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", monitor))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
