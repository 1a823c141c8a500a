//! The steps behind each command.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, announcing it first and timing it.
fn run(what: &str, mut cmd: Command) -> Result<()> {
    eprintln!("\n==> {what}");
    eprintln!("    $ {}", describe(&cmd));
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    eprintln!("    ok in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
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

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run("formatting (cargo fmt --check)", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run("lints (clippy, warnings are errors)", clippy)?;

    let build_std = ensure_wasm_target()?;
    let mut wasm = cargo();
    wasm.args([
        "check",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "onebyte-protocol",
        "-p",
        "onebyte-engine",
        "--features",
        "onebyte-engine/wgpu",
    ]);
    wasm_env(&mut wasm, build_std);
    run(
        "the engine's GPU path compiles for wasm32 (cargo check)",
        wasm,
    )?;

    let mut tests = cargo();
    tests.args(["test", "--workspace"]);
    run(
        "native tests (protocol, engine on CPU and lavapipe, relay, workers end to end)",
        tests,
    )?;

    eprintln!(
        "\nall checks passed in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn demo(args: &[String]) -> Result<()> {
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    run("building the relay and the worker", build)?;
    let bin = root().join("target").join("debug");
    let store = root().join("target").join("demo-relay.db");
    let mut relay = Command::new(bin.join("onebyte-relay"));
    relay.arg("--store").arg(&store).args(args);
    if !args.iter().any(|a| a == "--web") && root().join("web").join("index.html").exists() {
        relay.arg("--web").arg(root().join("web"));
    }
    eprintln!(
        "\n==> starting the relay with the built-in demo job (store {})",
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
    eprintln!("\n==> two native workers join so the job trains while you watch");
    let mut workers = Vec::new();
    for seed in ["1", "2"] {
        workers.push(
            Command::new(bin.join("onebyte"))
                .args(["join", "--relay", &url, "--seed", seed])
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("could not start onebyte join")?,
        );
    }
    println!("\nonebyte demo is running at {url}");
    println!("  status:   {url}/api/status");
    println!("  metrics:  {url}/metrics");
    println!("  join another peer:  target/debug/onebyte join --relay {url}");
    println!("Ctrl-C stops it.");
    let status = relay.wait()?;
    for mut w in workers {
        let _ = w.kill();
    }
    if !status.success() {
        bail!("the relay exited with {status}");
    }
    Ok(())
}

pub fn bench() -> Result<()> {
    ensure_lavapipe()?;
    // One build with the workspace's features (the same artifacts as `cargo xtask test`).
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins", "--examples"]);
    run("building the benchmarks, the relay and the worker", build)?;
    let examples = root().join("target").join("debug").join("examples");
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
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Debian packages missing from this machine, of those named.
fn missing_debs(packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .map(|p| p.to_string())
        .collect()
}

/// Installs Debian packages when running as root; otherwise says what to install.
fn ensure_debs(packages: &[&str], why: &str) -> Result<()> {
    let missing = missing_debs(packages);
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{why} needs the Debian packages {}; install them (sudo apt-get install {}) and rerun",
            missing.join(", "),
            missing.join(" ")
        );
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run(&format!("{why}: refreshing Debian's package lists"), update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(
        &format!("{why}: installing {}", missing.join(", ")),
        install,
    )
}

/// Makes the wasm32 standard library available. Returns whether it has to be built from
/// source (`-Zbuild-std`) because rustup could not download it.
fn ensure_wasm_target() -> Result<bool> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown"))
        .unwrap_or(false);
    if installed {
        return Ok(false);
    }
    let script = root().join("../shared/ci/wasm-std.sh");
    if !script.exists() {
        let mut add = Command::new("rustup");
        add.args(["target", "add", "wasm32-unknown-unknown"]);
        run("installing the wasm32 standard library (rustup)", add)?;
        return Ok(false);
    }
    eprintln!(
        "\n==> providing the wasm32 standard library ({}: rustup, else the rust-src route)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not run wasm-std.sh")?;
    let mode = String::from_utf8_lossy(&out.stdout);
    match mode.trim() {
        "mode=target" => Ok(false),
        "mode=build-std" => {
            eprintln!("    no prebuilt std: building it from source (-Zbuild-std)");
            Ok(true)
        }
        other => bail!("wasm-std.sh could not provide the wasm32 std ({other})"),
    }
}

/// What every wasm32 cargo command needs: getrandom's browser backend, and build-std when the
/// prebuilt std is missing.
fn wasm_env(cmd: &mut Command, build_std: bool) {
    cmd.env("RUSTFLAGS", "--cfg getrandom_backend=\"wasm_js\"");
    if build_std {
        cmd.env("RUSTC_BOOTSTRAP", "1")
            .args(["-Zbuild-std=std,panic_abort"]);
    }
}

/// Mesa's lavapipe: a software Vulkan driver, so wgpu tests have an adapter without a GPU.
fn ensure_lavapipe() -> Result<()> {
    ensure_debs(
        &["mesa-vulkan-drivers", "libvulkan1"],
        "GPU kernel tests on software Vulkan (lavapipe)",
    )
}
