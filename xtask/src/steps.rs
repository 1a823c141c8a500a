//! The steps behind each command.

use crate::tools::{
    ONE_CPU_THREAD, cargo, cargo_linted, describe, ensure_debs, root, run, target_dir,
};
use crate::web;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Builds `onebyte` (at low priority: a tab training beside it keeps its CPU) with its output
/// in `log`, then starts two workers on the demo relay at `url`.
fn start_workers(
    workers: &Mutex<Vec<std::process::Child>>,
    url: &str,
    bin: &std::path::Path,
    log: &std::path::Path,
) {
    let began = Instant::now();
    let built = std::fs::File::create(log).and_then(|out| {
        let err = out.try_clone()?;
        niced(cargo_linted(&["build", "--workspace", "--bins"]))
            .stdout(out)
            .stderr(err)
            .status()
    });
    match built {
        Ok(status) if status.success() => {}
        Ok(status) => {
            return eprintln!(
                "\n==> building the native workers failed ({status}); see {}",
                log.display()
            );
        }
        Err(e) => return eprintln!("\n==> could not build the native workers: {e}"),
    }
    let mut started = workers.lock().expect("no panics while holding it");
    for seed in ["1", "2"] {
        match Command::new(bin.join("onebyte"))
            .args(["join", "--relay", url, "--seed", seed])
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => started.push(child),
            Err(e) => return eprintln!("\n==> could not start onebyte join: {e}"),
        }
    }
    eprintln!(
        "\n==> two native workers joined ({:.0} s to build them); the job trains while you watch",
        began.elapsed().as_secs_f64()
    );
}

/// `cmd` under `nice -n 10`, with the same arguments, environment and directory.
fn niced(cmd: Command) -> Command {
    let mut nice = Command::new("nice");
    nice.args(["-n", "10"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => nice.env(key, value),
            None => nice.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        nice.current_dir(dir);
    }
    nice
}

/// Makes sure a rustup component is installed (rustfmt, clippy).
fn ensure_component(name: &str, probe: &[&str]) -> Result<()> {
    let ok = cargo()
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    eprintln!("==> {name} is missing; installing it with rustup");
    let status = Command::new("rustup")
        .args(["component", "add", name])
        .status()
        .with_context(|| format!("rustup is needed to install {name}"))?;
    if !status.success() {
        bail!("could not install the rustup component {name}");
    }
    Ok(())
}

pub fn test() -> Result<()> {
    let start = Instant::now();
    ensure_component("rustfmt", &["fmt", "--version"])?;
    ensure_component("clippy", &["clippy", "--version"])?;
    ensure_lavapipe()?;
    ensure_debs(
        &["nats-server"],
        "the relay's JetStream tests (NATS servers and a cluster on loopback)",
    )?;

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run("formatting (cargo fmt --check)", fmt)?;

    web::build_web()?;
    web::wasm_tests()?;

    // Clippy lints these builds as they compile (warnings are errors): no separate check pass.
    let mut native = cargo_linted(&["test", "--workspace"]);
    native.env(ONE_CPU_THREAD.0, ONE_CPU_THREAD.1);
    run(
        "native tests (protocol, engine on CPU and lavapipe, relay, workers end to end), \
         linted by clippy",
        native,
    )?;
    run(
        "the relay and worker binaries for the browser tests",
        cargo_linted(&["build", "--workspace", "--bins"]),
    )?;
    web::browser_tests()?;

    eprintln!(
        "\nall checks passed in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn demo(args: &[String]) -> Result<()> {
    let start = Instant::now();
    web::build_web()?;
    // `--job lm` and `--job sentiment`: the tiny transformer, pre-trained first (once) so that
    // the swarm fine-tunes a model that already writes like its corpus.
    let mut args = args.to_vec();
    if let Some(i) = args.iter().position(|a| a == "--job")
        && let Some(demo) = args.get(i + 1).and_then(|job| PretrainedDemo::named(job))
    {
        args[i + 1] = demo.prepare()?.display().to_string();
    }
    let args = args.as_slice();
    // Only the relay before the URL; the workers build afterwards, in the background. Both
    // with the whole workspace's features (`--workspace`), as `cargo xtask test` builds them:
    // `-p onebyte-relay` alone would resolve other features, and each command would then
    // rebuild the dependencies the other had built.
    run(
        "building the relay (the native workers follow in the background)",
        cargo_linted(&["build", "--workspace", "--bin", "onebyte-relay"]),
    )?;
    let bin = target_dir().join("debug");
    let job = args
        .iter()
        .position(|a| a == "--job")
        .and_then(|i| args.get(i + 1));
    let store = demo_store(job.map(std::path::Path::new));
    let mut relay = Command::new(bin.join("onebyte-relay"));
    relay.arg("--store").arg(&store).args(args);
    if !args.iter().any(|a| a == "--web") {
        relay.arg("--web").arg(root().join("web"));
    }
    eprintln!(
        "\n==> starting the relay with {} (store {})",
        if args.iter().any(|a| a == "--job") {
            "the given job"
        } else {
            "the built-in demo job"
        },
        store.display()
    );
    eprintln!("    $ {}", describe(&relay));
    let mut relay = relay
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not start onebyte-relay")?;
    let stdout = relay.stdout.take().expect("piped");
    let mut url = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(u) = line.strip_prefix("listening on ") {
            url = Some(u.trim().to_string());
            break;
        }
    }
    let Some(url) = url else {
        let status = relay.wait()?;
        bail!("the relay stopped before listening ({status})");
    };
    let workers = Arc::new(Mutex::new(Vec::new()));
    let log = target_dir().join("demo-workers.log");
    eprintln!(
        "\n==> building the native workers in the background (log: {}); two join once built",
        log.display()
    );
    let _building = {
        let (workers, url, bin) = (workers.clone(), url.clone(), bin.clone());
        std::thread::spawn(move || start_workers(&workers, &url, &bin, &log))
    };
    println!(
        "\nonebyte demo is running at {url}  (open it and press Join; ready {:.0} s after the \
         start)",
        start.elapsed().as_secs_f64()
    );
    println!("  widget:   {url}/embed.html  (the embeddable teaching demo)");
    println!("  status:   {url}/api/status");
    println!("  metrics:  {url}/metrics");
    println!(
        "  join another peer:  {} join --relay {url}",
        bin.join("onebyte").display()
    );
    println!("Ctrl-C stops it.");
    let status = relay.wait()?;
    for mut w in workers
        .lock()
        .expect("no panics while holding it")
        .drain(..)
    {
        let _ = w.kill();
    }
    if !status.success() {
        bail!("the relay exited with {status}");
    }
    Ok(())
}

/// The demo's store for `job` (a job file; `None`: the built-in demo job). One store per job
/// file: a store holds one job, and a demo of another job starts fresh.
fn demo_store(job: Option<&std::path::Path>) -> PathBuf {
    match job.and_then(std::path::Path::file_stem) {
        Some(stem) => target_dir().join(format!("demo-{}.db", stem.to_string_lossy())),
        None => target_dir().join("demo-relay.db"),
    }
}

/// A demo job hosted from a checkpoint that `onebyte pretrain` makes on first use (about a
/// minute on 2 cores), cached under `target/demo-NAME/` and reused after.
struct PretrainedDemo {
    /// `--job NAME`.
    name: &'static str,
    /// What is pre-trained, for the progress line.
    what: &'static str,
    /// The job pre-trained on its corpus, in `deploy/jobs/`.
    pretrain: &'static str,
    /// The job hosted from the checkpoint, in `deploy/jobs/`.
    hosted: &'static str,
    /// The checkpoint's file name beside the hosted job (its `init`).
    checkpoint: &'static str,
    /// `(said, says)`: the hosted job's text with this replaced (`None`: as it is).
    rewrite: Option<(&'static str, &'static str)>,
    steps: &'static str,
}

impl PretrainedDemo {
    const ALL: [PretrainedDemo; 2] = [
        PretrainedDemo {
            name: "lm",
            what: "the tiny transformer on the built-in corpus",
            pretrain: "tiny-lm.toml",
            hosted: "tiny-lm.toml",
            checkpoint: "model.safetensors",
            rewrite: Some((
                "name = \"tiny-lm\"",
                "name = \"tiny-lm-pretrained\"\ninit = \"model.safetensors\"   # from `onebyte pretrain`",
            )),
            steps: "1000",
        },
        PretrainedDemo {
            name: "sentiment",
            what: "the tiny transformer on the built-in reviews",
            pretrain: "reviews-lm.toml",
            hosted: "reviews-sentiment.toml",
            checkpoint: "reviews-lm.safetensors",
            rewrite: None,
            steps: "1500",
        },
    ];

    fn named(name: &str) -> Option<&'static PretrainedDemo> {
        PretrainedDemo::ALL.iter().find(|demo| demo.name == name)
    }

    /// The hosted job's file under `target/demo-NAME/`, beside its checkpoint, which is
    /// pre-trained here unless it is already there.
    fn prepare(&self) -> Result<PathBuf> {
        run(
            "building the native binaries (`onebyte pretrain` makes the checkpoint)",
            cargo_linted(&["build", "--workspace", "--bins"]),
        )?;
        let jobs = root().join("deploy/jobs");
        let dir = target_dir().join(format!("demo-{}", self.name));
        std::fs::create_dir_all(&dir)?;
        let model = dir.join(self.checkpoint);
        let hosted = std::fs::read_to_string(jobs.join(self.hosted))?;
        let hosted = match self.rewrite {
            None => hosted,
            Some((said, says)) => {
                if !hosted.contains(said) {
                    bail!(
                        "deploy/jobs/{} no longer says {said}; update the xtask",
                        self.hosted
                    );
                }
                hosted.replacen(said, says, 1)
            }
        };
        if !hosted.contains(&format!("init = \"{}\"", self.checkpoint)) {
            bail!(
                "the demo job does not start from {}; update the xtask",
                self.checkpoint
            );
        }
        let job = dir.join(match self.rewrite {
            None => self.hosted.to_string(),
            Some(_) => self.hosted.replace(".toml", "-pretrained.toml"),
        });
        if model.exists() {
            eprintln!(
                "\n==> the pre-trained model is already there: {} (delete it to train anew)",
                model.display()
            );
        } else {
            let mut pretrain = Command::new(target_dir().join("debug").join("onebyte"));
            pretrain
                .args(["pretrain", "--job"])
                .arg(jobs.join(self.pretrain))
                .args(["--steps", self.steps, "--out"])
                .arg(&model);
            run(
                &format!("pre-training {} (once; cached)", self.what),
                pretrain,
            )?;
            // A store holds the job it began with: a new checkpoint starts a new one.
            let store = demo_store(Some(&job));
            for suffix in ["", "-wal", "-shm"] {
                let mut path = store.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
        std::fs::write(
            &job,
            format!(
                "# Written by `cargo xtask demo --job {}`.\n{hosted}",
                self.name
            ),
        )?;
        Ok(job)
    }
}

pub fn bench() -> Result<()> {
    ensure_lavapipe()?;
    // One build with the workspace's features (the same artifacts as `cargo xtask test`).
    run(
        "building the benchmarks, the relay and the worker",
        cargo_linted(&["build", "--workspace", "--bins", "--examples"]),
    )?;
    let examples = target_dir().join("debug").join("examples");
    run(
        "engine benchmarks (CPU backend and wgpu)",
        Command::new(examples.join("bench")),
    )?;
    run(
        "relay under load: 100 and 1 000 websocket peers, then join times",
        Command::new(examples.join("load")),
    )?;
    let mut longer_tick = Command::new(examples.join("load"));
    longer_tick.args(["--tick-ms", "20"]);
    run(
        "the same with a 20 ms tick: fewer, fuller batches (latency for downlink bytes)",
        longer_tick,
    )?;
    ensure_debs(
        &["nats-server"],
        "the relay spread over processes (a NATS JetStream cluster on loopback)",
    )?;
    let mut edges = Command::new(examples.join("load"));
    edges.args(["--edges", "0,1,2,4"]);
    run(
        "the same load on one relay, then on 1, 2 and 4 edges with one sequencer over a 3-server NATS cluster",
        edges,
    )?;
    web::build_web()?;
    web::browser_bench()
}

/// Mesa's lavapipe: a software Vulkan driver, so wgpu tests have an adapter without a GPU.
fn ensure_lavapipe() -> Result<()> {
    ensure_debs(
        &["mesa-vulkan-drivers", "libvulkan1"],
        "GPU kernel tests on software Vulkan (lavapipe)",
    )
}
