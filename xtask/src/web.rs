//! The browser side: the wasm client, wasm-bindgen, npm packages, Chromium.

use crate::tools::{cargo, describe, ensure_debs, lint_while_building, root, run, target_dir};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The cargo profile of the page's wasm build and of the wasm tests (one build for both).
const WASM_PROFILE: &str = "web";

/// The version of `wasm-bindgen` that `Cargo.lock` pins: the CLI must match it exactly.
fn locked_wasm_bindgen() -> Result<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\""
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_string());
        }
    }
    bail!("Cargo.lock does not mention wasm-bindgen")
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    home.join("bin").join(name)
}

/// `wasm-bindgen` (and its test runner) at the locked version, installed when missing.
pub fn ensure_wasm_bindgen() -> Result<PathBuf> {
    let version = locked_wasm_bindgen()?;
    let bin = cargo_bin("wasm-bindgen");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("wasm-bindgen {version}"))
        .unwrap_or(false);
    if !installed {
        let mut install = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        install.args([
            "install",
            "wasm-bindgen-cli",
            "--version",
            &version,
            "--force",
        ]);
        // The CLI's own lock file sometimes names a yanked crate; without --locked cargo picks
        // compatible versions instead.
        run(
            &format!("installing wasm-bindgen-cli {version} (the version in Cargo.lock)"),
            install,
        )?;
    }
    Ok(bin)
}

/// Makes the wasm32 standard library available. Returns whether it has to be built from
/// source (`-Zbuild-std`) because rustup could not download it.
pub fn ensure_wasm_target() -> Result<bool> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(WASM_TARGET))
        .unwrap_or(false);
    if installed {
        return Ok(false);
    }
    let script = root().join("../shared/ci/wasm-std.sh");
    if !script.exists() {
        let mut add = Command::new("rustup");
        add.args(["target", "add", WASM_TARGET]);
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

/// A cargo command for the wasm32 target (getrandom's browser backend is configured in
/// `.cargo/config.toml`); `-Zbuild-std` when the prebuilt std is missing.
fn wasm_cargo(subcommand: &str, build_std: bool) -> Command {
    let mut cmd = cargo();
    // The `web` profile (Cargo.toml): a release build without DWARF, which would be ten times
    // the module and which wasm-bindgen drops anyway. Panics still name file and line.
    cmd.args([
        subcommand,
        "--profile",
        WASM_PROFILE,
        "--target",
        WASM_TARGET,
        "-p",
        "onebyte-client-wasm",
    ]);
    lint_while_building(&mut cmd);
    if build_std {
        cmd.env("RUSTC_BOOTSTRAP", "1")
            .arg("-Zbuild-std=std,panic_abort");
    }
    cmd
}

/// npm packages of `dir` from its lock file.
fn npm_install(dir: &str) -> Result<()> {
    let mut npm = Command::new("npm");
    npm.current_dir(root().join(dir))
        .args(["ci", "--no-audit", "--no-fund"]);
    run(&format!("npm packages of {dir}/ (npm ci)"), npm)
}

/// Builds the browser package into `web/pkg/` and copies uPlot into `web/vendor/`.
///
/// In the `web` profile (a release build at `opt-level = "s"` without DWARF), which the wasm tests
/// reuse; wasm-opt stays out of this path (minutes for little).
pub fn build_web() -> Result<()> {
    let build_std = ensure_wasm_target()?;
    let bindgen = ensure_wasm_bindgen()?;
    run(
        "the browser client for wasm32 (engine, WebGPU and CPU backends), linted by clippy",
        wasm_cargo("build", build_std),
    )?;
    let wasm = target_dir()
        .join(WASM_TARGET)
        .join(WASM_PROFILE)
        .join("client_wasm.wasm");
    let mut generate = Command::new(bindgen);
    generate
        .arg("--target")
        .arg("web")
        .arg("--no-typescript")
        // Function names are a fifth of the module; panics still say file and line.
        .arg("--remove-name-section")
        .arg("--out-dir")
        .arg(root().join("web").join("pkg"))
        .arg(&wasm);
    run("JavaScript bindings into web/pkg (wasm-bindgen)", generate)?;
    let bindings = std::fs::read_to_string(root().join("web/pkg/client_wasm.js"))?;
    if bindings.contains("command_export") {
        // Every call from JavaScript would run the static constructors again (a quarter of a
        // CPU tab's time): `client-wasm/src/lib.rs`'s start function must call them once.
        bail!(
            "the wasm module links as a command: its exports run the static constructors on \
             every call (see `start` in client-wasm/src/lib.rs)"
        );
    }
    npm_install("web")?;
    let vendor = root().join("web").join("vendor");
    std::fs::create_dir_all(&vendor)?;
    let dist = root().join("web/node_modules/uplot/dist");
    for file in ["uPlot.esm.js", "uPlot.min.css"] {
        std::fs::copy(dist.join(file), vendor.join(file))
            .with_context(|| format!("copying {file} from {}", dist.display()))?;
    }
    let module = root().join("web/pkg/client_wasm_bg.wasm");
    let mut gzip = Command::new("gzip");
    gzip.args(["-9", "--keep", "--force"]).arg(&module);
    run(
        "web/pkg/client_wasm_bg.wasm.gz, which the relay serves to browsers that accept gzip",
        gzip,
    )?;
    let brotli = module.with_extension("wasm.br");
    // Quality 11 takes half a minute; wasm-bindgen rewrites the module every time (a new mtime),
    // so whether the .br is current is judged by the module's contents.
    let stamp = target_dir().join("web-brotli.stamp");
    let print = fingerprint(&std::fs::read(&module)?);
    let current = brotli.exists() && std::fs::read_to_string(&stamp).ok() == Some(print.clone());
    if !current {
        let _ = std::fs::remove_file(&brotli);
    }
    match ensure_debs(&["brotli"], "the page's brotli-compressed engine") {
        Ok(()) if current => eprintln!(
            "\n==> {}: up to date (compressed from this very module)",
            brotli.display()
        ),
        Ok(()) => {
            let mut compress = Command::new("brotli");
            compress
                .args(["--quality=11", "--keep", "--force"])
                .arg(format!("--output={}", brotli.display()))
                .arg(&module);
            run(
                "web/pkg/client_wasm_bg.wasm.br, which the relay serves to browsers that accept \
                 brotli (all current ones)",
                compress,
            )?;
            std::fs::write(&stamp, print)?;
        }
        Err(e) => eprintln!("    ({e:#}; the page is served gzipped only)"),
    }
    let size = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.len() as f64 / 1e6);
    eprintln!(
        "    web/pkg/client_wasm_bg.wasm: {:.1} MB, {:.2} MB gzipped{}",
        size(&module)?,
        size(&module.with_extension("wasm.gz"))?,
        size(&brotli).map_or(String::new(), |b| format!(", {b:.2} MB brotli"))
    );
    Ok(())
}

/// FNV-1a of `bytes`, in hex: enough to tell one build of the module from another.
fn fingerprint(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x} {}", bytes.len())
}

/// The client's wasm tests under Node.js (wasm-bindgen-test-runner).
pub fn wasm_tests() -> Result<()> {
    let build_std = ensure_wasm_target()?;
    let bindgen = ensure_wasm_bindgen()?;
    let runner = bindgen.with_file_name("wasm-bindgen-test-runner");
    let mut test = wasm_cargo("test", build_std);
    test.env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner);
    run("wasm tests of the browser client (Node.js)", test)
}

/// Debian's Chromium, which playwright-core drives (no downloaded browsers).
pub fn ensure_chromium() -> Result<()> {
    ensure_debs(&["chromium"], "browser tests in headless Chromium")
}

/// The page as a peer, measured in Chromium (`tests/browser/bench.mjs`): WebGPU against the CPU
/// backend, contributions/s and busy share. Needs the built page and the relay binary.
pub fn browser_bench() -> Result<()> {
    ensure_chromium()?;
    npm_install("tests/browser")?;
    let mut bench = Command::new("node");
    bench
        .current_dir(root().join("tests/browser"))
        .arg("bench.mjs")
        .env("ONEBYTE_BIN_DIR", target_dir().join("debug"));
    run(
        "the page in headless Chromium: WebGPU (SwiftShader) against the CPU in wasm",
        bench,
    )
}

/// `node --test` over the browser suite, its npm packages installed.
pub fn browser_test_command() -> Result<Command> {
    npm_install("tests/browser")?;
    let mut test = Command::new("node");
    test.current_dir(root().join("tests/browser"))
        .args(["--test", "--test-concurrency=1"])
        .env("ONEBYTE_BIN_DIR", target_dir().join("debug"))
        .env("ONEBYTE_ARTIFACTS", root().join("artifacts"));
    Ok(test)
}

/// The page end to end: real relay and workers, the built page in Chromium.
pub fn browser_tests() -> Result<()> {
    ensure_chromium()?;
    let mut test = browser_test_command()?;
    test.env(
        crate::tools::ONE_CPU_THREAD.0,
        crate::tools::ONE_CPU_THREAD.1,
    );
    eprintln!("    (screenshots go to artifacts/)");
    let what = format!(
        "browser end to end: the page in Chromium, WebGPU and CPU ({})",
        describe(&test)
    );
    run(&what, test)
}
