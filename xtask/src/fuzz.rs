//! `cargo xtask fuzz`: the cargo-fuzz targets of the text parsers (fuzz/),
//! each for a bounded time, then a long soak of the differential frame test
//! (tests/differential.rs) with a seed of its own.

use std::{
    fs::File,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use super::{cargo, is_root, output, setup, status, workspace_root};

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds each cargo-fuzz target runs (0: skip the targets).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Frames of the differential soak (0: skip the soak).
    #[arg(long, default_value_t = 10_000_000)]
    frames: u64,
    /// Seed of the soak (default: a random one, printed).
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Run only these cargo-fuzz targets (repeatable; default: all).
    #[arg(long = "target")]
    targets: Vec<String>,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a seed: {e}"))
}

/// What one libFuzzer run reported.
struct TargetRun {
    name: String,
    execs: Option<u64>,
    seconds: f64,
    log: std::path::PathBuf,
}

pub fn fuzz(args: FuzzArgs) -> Result<()> {
    setup(false)?;
    let mut runs = Vec::new();
    if args.seconds > 0 {
        ensure_cargo_fuzz()?;
        let targets = if args.targets.is_empty() {
            list_targets()?
        } else {
            args.targets.clone()
        };
        for target in &targets {
            runs.push(run_target(target, args.seconds)?);
        }
    }
    if args.frames > 0 {
        soak(args.frames, args.seed.unwrap_or_else(random_seed))?;
    }
    for r in &runs {
        eprintln!(
            "fuzz: {:<12} {:>12} execs in {:>5.1} s ({} /s), no crash (log: {})",
            r.name,
            r.execs.map_or("?".into(), |e| e.to_string()),
            r.seconds,
            r.execs
                .map_or("?".into(), |e| format!("{:.0}", e as f64 / r.seconds)),
            r.log.display()
        );
    }
    Ok(())
}

fn fuzz_dir() -> std::path::PathBuf {
    workspace_root().join("fuzz")
}

fn ensure_cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_ok() {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz failed")
}

fn list_targets() -> Result<Vec<String>> {
    let out = output(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "list"])
            .current_dir(fuzz_dir()),
    )?;
    let targets: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if targets.is_empty() {
        bail!(
            "cargo fuzz list found no targets in {}",
            fuzz_dir().display()
        );
    }
    Ok(targets)
}

/// The number after `key` in libFuzzer's final stats.
fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').trim().parse().ok())
}

fn run_target(target: &str, seconds: u64) -> Result<TargetRun> {
    let logs = workspace_root().join("target/fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{target}.log"));
    let log = File::create(&log_path)?;
    eprintln!(
        "fuzz: {target} for {seconds} s (libFuzzer output in {})",
        log_path.display()
    );
    let started = Instant::now();
    let st = Command::new("cargo")
        .args(["+nightly", "fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .current_dir(fuzz_dir())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let took = started.elapsed().as_secs_f64();
    let mut text = String::new();
    File::open(&log_path)?.read_to_string(&mut text)?;
    if !st.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({st}); the crashing input is under {}; \
             keep it as a unit test next to the parser. Last lines:\n{}",
            fuzz_dir().join("artifacts").join(target).display(),
            tail.join("\n")
        );
    }
    Ok(TargetRun {
        name: target.to_string(),
        execs: stat(&text, "stat::number_of_executed_units"),
        // "Done 123 runs in 31 second(s)"
        seconds: text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("Done ")?.split(" in ").nth(1))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(took),
        log: log_path,
    })
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map(|()| u64::from_le_bytes(bytes))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// The differential test (tests/differential.rs), built with optimizations,
/// on `frames` frames of `seed`.
fn soak(frames: u64, seed: u64) -> Result<()> {
    if !is_root() {
        bail!("the differential soak loads BPF programs: run `cargo xtask fuzz` as root");
    }
    eprintln!(
        "fuzz: differential soak of {frames} frames, seed {seed:#x} \
         (rerun: cargo xtask fuzz --seconds 0 --frames {frames} --seed {seed:#x})"
    );
    let started = Instant::now();
    status(
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "ingress-xdp",
                "--test",
                "differential",
                "--",
                "--nocapture",
                "programs_agree_with_the_reference",
            ])
            .env("INGRESS_XDP_DIFF_FRAMES", frames.to_string())
            .env("INGRESS_XDP_DIFF_SEED", format!("{seed:#x}"))
            .stdin(Stdio::null()),
    )
    .with_context(|| {
        format!(
            "the differential soak found a disagreement (seed {seed:#x}); the shrunk case is saved under {}",
            Path::new("tests/fixtures/differential").display()
        )
    })?;
    eprintln!(
        "fuzz: soak of {frames} frames done in {:.1?}",
        started.elapsed()
    );
    Ok(())
}
