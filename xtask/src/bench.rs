//! `cargo xtask bench`: installs what the benchmark drives, builds it
//! (bench/, crate ingress-xdp-bench) and the agent it starts in release mode,
//! and runs it as root. It writes bench/RESULTS.md and bench/results.png
//! (with `--quick`: target/bench-quick/) and prints a summary. The reads and
//! upgrade parts build release 0.1.0 from git history on first use
//! (tests/support/old_release.rs, cached in target/compat/0.1.0).

use anyhow::Result;

use super::{as_root, ensure_debian_packages, setup, status, workspace_root};

/// Debian packages the benchmark runs.
const BENCH_PACKAGES: &[&str] = &[
    "iproute2",          // ip netns / veth
    "util-linux",        // nsenter
    "ethtool",           // veth queues, GRO, xdp_drops
    "iptables",          // INPUT and raw PREROUTING drops
    "nftables",          // netdev ingress drop
    "xdp-tools",         // xdp-filter, the nearest peer
    "bpftool",           // pins xdp-filter's program to test-run it
    "docker.io",         // the private dockerd of the control-plane part
    "busybox-static",    // its test image (tests/support/docker.rs)
    "socat",             // ditto
    "git",               // 0.1.0 from history, for the reads and upgrade parts
    "fonts-dejavu-core", // text of the chart
];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short run (a minute or two) that keeps the benchmark working in CI;
    /// too few trials to judge anything.
    #[arg(long)]
    quick: bool,
    /// More arguments for the benchmark (after `--`), e.g. `--parts cost,rate`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl BenchArgs {
    /// The CI smoke run.
    pub fn quick() -> Self {
        Self {
            quick: true,
            args: Vec::new(),
        }
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    setup(false)?;
    ensure_debian_packages(BENCH_PACKAGES)?;
    // The agent binary too: the control-plane part runs `ingress-xdp run`.
    crate::release_build()?;
    let bin = workspace_root().join("target/release/ingress-xdp-bench");
    let mut bench_args: Vec<String> = Vec::new();
    if args.quick {
        bench_args.push("--quick".into());
    }
    bench_args.extend(args.args);
    status(&mut as_root(&bin, &bench_args))
}
