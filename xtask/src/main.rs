//! Project tasks: `cargo xtask setup|run|test`.
//!
//! `setup` makes a fresh machine of our kind ready (nightly rust-src,
//! bpf-linker linked to the nightly's own libLLVM, Debian packages for the
//! tests) and is quick when everything is there; `run` and `test` call it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod engine;
mod fuzz;
mod image;
mod install;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ingress-xdp project tasks")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent, fast when done).
    Setup {
        /// Also install the Debian packages the integration tests use.
        #[arg(long)]
        test_packages: bool,
    },
    /// Build (release) and run `ingress-xdp ARGS` as root. Without ARGS: run
    /// the agent with the defaults (default-route NIC + ingress_sbox, node
    /// default allow, policy from Docker labels).
    Run {
        /// Arguments for ingress-xdp (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: fmt, clippy, unit tests and the root-only integration
    /// tests (real BPF programs, namespaces and traffic).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz: each cargo-fuzz target (fuzz/) for --seconds, then a soak of the
    /// differential frame test (--frames, --seed) in release mode; as root.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmark: per-packet cost, drop rate beside iptables/nft/xdp-filter,
    /// control-plane latency; writes bench/RESULTS.md and a chart; as root.
    Bench(bench::BenchArgs),
    /// Build the image ingress-xdp:<version> (the release binary and its
    /// libraries, no base image) as a `docker load` archive in target/image/.
    Image(image::ImageArgs),
    /// Install the release binary, the systemd unit, shell completions
    /// (bash, zsh, fish) and the man page under --prefix (default
    /// /usr/local), or stage them under --destdir.
    Install(install::InstallArgs),
}

/// The test binaries that drive a Docker Engine, run on both engines.
const ENGINE_TESTS: &[&str] = &["agent", "agent_cluster", "agent_tls", "feed", "stack"];

/// Debian packages the integration tests run.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",       // ip netns / veth / bridge
    "iptables",       // the DOCKER-INGRESS DNAT stand-in
    "util-linux",     // nsenter, setpriv, unshare, mountpoint
    "procps",         // sysctl
    "docker.io",      // private dockerd swarms (tests/support/docker.rs)
    "busybox-static", // the test image's userland (FROM scratch)
    "socat",          // the test image's UDP responder
    "openssl",        // certificates for the TLS manager and feed clients (agent_tls, feed)
    "systemd",        // systemd-analyze verify/security of deploy/ingress-xdp.service
    "prometheus",     // a real Prometheus scraping the agent, and promtool (tests/metrics.rs)
    "man-db",         // man -l renders the generated page (tests/docs.rs)
];

fn main() -> Result<()> {
    match Xtask::parse().task {
        Task::Setup { test_packages } => setup(test_packages),
        Task::Run { args } => run(args),
        Task::Test { args } => test(args),
        Task::Fuzz(args) => fuzz::fuzz(args),
        Task::Bench(args) => bench::bench(args),
        Task::Image(args) => image::image(args),
        Task::Install(args) => install::install(args),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    // `cargo xtask` runs us with the variables cargo sets for a package's
    // own process; a nested cargo that inherits them sees a changed
    // environment and rebuilds what a plain `cargo build` built.
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && (key.starts_with("CARGO_PKG_")
                || matches!(
                    key,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_BIN_NAME"
                ))
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn setup(test_packages: bool) -> Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    if test_packages {
        ensure_debian_packages(TEST_PACKAGES)?;
        engine::ensure()?;
    }
    Ok(())
}

fn ensure_nightly() -> Result<()> {
    if output(Command::new("rustc").args(["+nightly", "--version"])).is_ok() {
        return Ok(());
    }
    eprintln!("setup: installing the nightly toolchain (eBPF needs -Z build-std)");
    status(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
        .context("rustup could not install nightly; install it by hand: rustup toolchain install nightly")
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    Ok(PathBuf::from(out.trim()))
}

fn ensure_rust_src() -> Result<()> {
    let library = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if library.exists() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly (eBPF builds core from source)");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("could not add rust-src; try: rustup component add rust-src --toolchain nightly")
}

/// The nightly's shared libLLVM: (directory, link name without `lib`/`.so`,
/// LLVM major).
fn nightly_libllvm() -> Result<(PathBuf, String, u32)> {
    let lib_dir = nightly_sysroot()?.join("lib");
    let entries =
        std::fs::read_dir(&lib_dir).with_context(|| format!("listing {}", lib_dir.display()))?;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // e.g. libLLVM-22-rust-1.97.0-nightly.so
        if let Some(stem) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so"))
            && let Some(rest) = stem.strip_prefix("LLVM-")
        {
            let major = rest
                .split('-')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
                .with_context(|| format!("no LLVM major version in {name}"))?;
            return Ok((lib_dir, stem.to_string(), major));
        }
    }
    bail!(
        "no libLLVM-*.so in {}: this nightly does not ship a shared LLVM to build bpf-linker against",
        lib_dir.display()
    )
}

/// True when an installed bpf-linker runs and resolves its libLLVM from the
/// current nightly (a nightly update would leave it pointing at a stale one).
fn bpf_linker_matches(lib_dir: &Path) -> bool {
    let Ok(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    let path = path.trim();
    if output(Command::new(path).arg("--version")).is_err() {
        return false;
    }
    let Ok(ldd) = output(Command::new("ldd").arg(path)) else {
        return false;
    };
    ldd.lines()
        .filter(|l| l.contains("libLLVM"))
        .any(|l| l.contains(&*lib_dir.to_string_lossy()) && !l.contains("not found"))
}

fn ensure_bpf_linker() -> Result<()> {
    let (lib_dir, link_name, major) = nightly_libllvm()?;
    if bpf_linker_matches(&lib_dir) {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker 0.13.0 against {}/lib{link_name}.so (LLVM {major}); takes ~3 minutes",
        lib_dir.display()
    );
    let dir = lib_dir.display();
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major},no-llvm-linking"),
            ])
            .env(
                "RUSTFLAGS",
                format!("-L {dir} -l dylib={link_name} -C link-arg=-Wl,-rpath,{dir}"),
            ),
    )
    .context("building bpf-linker failed (see the cargo output above)")?;
    if !bpf_linker_matches(&lib_dir) {
        bail!(
            "bpf-linker was installed but does not resolve the nightly's libLLVM; is ~/.cargo/bin first in PATH?"
        );
    }
    Ok(())
}

fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {} (run as root, or: sudo apt-get install -y {})",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Runs `program args` as root (directly when we are root, else via sudo).
fn as_root(program: &Path, args: &[String]) -> Command {
    if is_root() {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(program).args(args);
        cmd
    }
}

/// The release build of the binary, and of the benchmark beside it. One
/// package set for every release build (run, image, install, bench), so that
/// features unify alike and `cargo xtask test` compiles the release tree once
/// instead of once for the image and again for the bench (about 3 minutes of
/// a 2-CPU CI run). The bench crate costs a user of `run` or `image` about a
/// minute, once.
pub fn release_build() -> Result<()> {
    status(cargo().args([
        "build",
        "--release",
        "--package",
        "ingress-xdp",
        "--package",
        "ingress-xdp-bench",
    ]))
}

fn run(args: Vec<String>) -> Result<()> {
    setup(false)?;
    release_build()?;
    let bin = workspace_root().join("target/release/ingress-xdp");
    let args = if args.is_empty() {
        vec!["run".to_string()]
    } else {
        args
    };
    let st = as_root(&bin, &args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !st.success() {
        // ingress-xdp already said what went wrong; keep its exit code.
        std::process::exit(st.code().unwrap_or(1));
    }
    Ok(())
}

fn test(args: Vec<String>) -> Result<()> {
    setup(true)?;
    if !is_root() {
        bail!(
            "the integration tests load BPF programs and create namespaces: run `cargo xtask test` as root"
        );
    }
    status(cargo().args(["fmt", "--all", "--check"])).context("run `cargo fmt --all`")?;
    status(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // tests/stack.rs deploys the image (target/image/) on a test swarm.
    image::image(image::ImageArgs::default())?;
    status(cargo().arg("test").args(&args))?;
    if args.is_empty() {
        // The tests that drive a Docker Engine, again on the newer one.
        let dockerd = engine::dockerd();
        eprintln!("test: the engine tests again with {}", dockerd.display());
        status(
            cargo()
                // The same package set as the run above (no --package), so
                // features unify alike and nothing is rebuilt.
                .arg("test")
                .args(ENGINE_TESTS.iter().flat_map(|t| ["--test", t]))
                .env("IXT_DOCKERD", &dockerd),
        )?;
        // Regression smoke: the benchmark still builds and runs (it reports
        // its figures and asserts no timing).
        bench::bench(bench::BenchArgs::quick())?;
    }
    Ok(())
}
