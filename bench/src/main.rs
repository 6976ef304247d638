//! `cargo xtask bench`: ingress-xdp measured beside the alternatives an
//! operator would pick, on this machine, in one run.
//!
//! 1. per-packet cost of the programs (BPF_PROG_TEST_RUN), against the
//!    test_run floor and xdp-filter;
//! 2. drop rate through a real veth (a live-frames XDP_TX generator) for
//!    ten methods, and the receiver's own cost per packet;
//! 3. control-plane latency and full-sync time against a real dockerd;
//! 4. the control plane's reads (`list`, a `stats` refresh) with 10,000
//!    rules, in-process and as the real CLI, beside release 0.1.0;
//! 5. an in-place upgrade from 0.1.0 under traffic: how long, and whether a
//!    packet to a blocked port got through.
//!
//! Writes RESULTS.md and a PNG chart, and prints a summary. It asserts no
//! timing: goals are reported, not enforced. Needs root.

#[path = "../../tests/support/mod.rs"]
mod support;

mod chart;
mod control;
mod cost;
mod counters;
mod cpu;
mod duel;
mod feed;
mod frames;
mod generator;
mod goals;
mod interrupt;
mod machine;
mod methods;
mod old;
mod ours;
mod progs;
mod rate;
mod reads;
mod report;
mod sh;
mod stats;
mod topo;
mod upgrade;
mod xdp_filter;

use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::{
    control::ControlSettings,
    cost::CostSettings,
    duel::DuelSettings,
    feed::FeedSettings,
    methods::Method,
    rate::RateSettings,
    reads::ReadsSettings,
    report::{Part, Run},
    upgrade::UpgradeSettings,
};

#[derive(Parser)]
#[command(
    name = "ingress-xdp-bench",
    about = "ingress-xdp beside the alternatives: cost, drop rate, control plane, reads, upgrade"
)]
struct Args {
    /// A small run (a minute or two) that keeps the bench working in CI;
    /// too few trials to judge the goals.
    #[arg(long)]
    quick: bool,
    /// Where RESULTS.md and results.png go [default: bench/, or
    /// target/bench-quick/ with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Parts to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_values = ["cost", "rate", "control", "reads", "upgrade", "feed"]
    )]
    parts: Vec<PartName>,
    /// Drop methods of part 2 [default: all].
    #[arg(long, value_delimiter = ',')]
    methods: Vec<Method>,
    /// The challenger of part 2's head to head with the bare XDP_DROP [default:
    /// ours-xdp-native, which the goals judge]; another method prices what
    /// part of ours costs what live (e.g. minimal-maps: our memory alone).
    #[arg(long)]
    duel_with: Option<Method>,
    /// Rounds of part 2's head to head [default: 30, or 1 with --quick].
    /// The goals sit inside the rounds' spread (about +-7%): with 12
    /// rounds, two runs of one build put the rate's median on either side
    /// of 0.95x.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    duel_rounds: Option<u16>,
    /// Trials of part 1 [default: 9, or 2 with --quick]. Each program's
    /// time comes in whole ns from the kernel and the machine drifts by a
    /// nanosecond or two between runs: to tell apart two builds whose costs
    /// differ by about 1 ns, run 25 or more, and each build more than once.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    cost_trials: Option<u16>,
    /// Copies of each program part 1 loads and averages [default: 5, or 2
    /// with --quick]. The JIT places each copy elsewhere, and placement
    /// alone moves one copy's time by 1-2 ns here, per frame, trial after
    /// trial: more trials do not average it out, more copies do.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=32))]
    cost_copies: Option<u16>,
    /// Trials of part 2 per method [default: 9, or 1 with --quick]; more
    /// narrow the medians where the machine is noisy.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    rate_trials: Option<u16>,
    /// Frames per generator batch in part 2 [default: 64]. The receiver
    /// wakes once per batch: a cost per packet that stays put from 16 to
    /// 256 is paid per packet, one that moves is paid per wake-up.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(generator::MAX_BATCH)))]
    rate_batch: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PartName {
    /// 1: per-packet cost (BPF_PROG_TEST_RUN).
    Cost,
    /// 2: drop rate and receiver cost through a veth.
    Rate,
    /// 3: control plane against dockerd.
    Control,
    /// 4: `list` and `stats` reads with 10,000 rules, beside 0.1.0.
    Reads,
    /// 5: in-place upgrade from 0.1.0 under traffic.
    Upgrade,
    /// 6: the policy feed, one manager and 1,000 simulated workers.
    Feed,
}

struct Plan {
    cost: CostSettings,
    rate: RateSettings,
    duel: DuelSettings,
    control: ControlSettings,
    reads: ReadsSettings,
    upgrade: UpgradeSettings,
    feed: FeedSettings,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                cost: CostSettings {
                    trials: 2,
                    repeat: 1_000_000,
                    copies: 2,
                },
                rate: RateSettings {
                    trials: 1,
                    duration: Duration::from_millis(300),
                    warmup: Duration::from_millis(100),
                    batch: rate::DEFAULT_BATCH,
                },
                duel: DuelSettings {
                    rounds: 1,
                    slices: 2,
                    slice: Duration::from_millis(100),
                },
                control: ControlSettings {
                    latency_trials: 5,
                    services: 20,
                    sync_trials: 2,
                    cold_start_trials: 1,
                },
                reads: ReadsSettings { trials: 3 },
                upgrade: UpgradeSettings {
                    trials: 1,
                    before: Duration::from_millis(200),
                    after: Duration::from_millis(100),
                },
                feed: FeedSettings {
                    clients: 50,
                    trials: 2,
                },
            }
        } else {
            Self {
                cost: CostSettings {
                    trials: 9,
                    repeat: 1_000_000,
                    copies: 5,
                },
                rate: RateSettings {
                    trials: 9,
                    duration: Duration::from_secs(2),
                    warmup: Duration::from_millis(300),
                    batch: rate::DEFAULT_BATCH,
                },
                duel: DuelSettings {
                    rounds: 30,
                    slices: 8,
                    slice: Duration::from_millis(250),
                },
                control: ControlSettings {
                    latency_trials: 60,
                    services: 200,
                    sync_trials: 7,
                    cold_start_trials: 5,
                },
                reads: ReadsSettings { trials: 21 },
                upgrade: UpgradeSettings {
                    trials: 7,
                    before: Duration::from_millis(300),
                    after: Duration::from_millis(200),
                },
                feed: FeedSettings {
                    clients: 1000,
                    trials: 10,
                },
            }
        }
    }
}

/// Tools each part drives, with their Debian packages.
const TOOLS: [(PartName, &str, &str); 17] = [
    (PartName::Cost, "xdp-filter", "xdp-tools"),
    (PartName::Cost, "bpftool", "bpftool"),
    (PartName::Cost, "ethtool", "ethtool"),
    (PartName::Rate, "ethtool", "ethtool"),
    (PartName::Rate, "iptables", "iptables"),
    (PartName::Rate, "nft", "nftables"),
    (PartName::Rate, "xdp-filter", "xdp-tools"),
    (PartName::Control, "dockerd", "docker.io"),
    (PartName::Control, "busybox", "busybox-static"),
    (PartName::Control, "socat", "socat"),
    // 0.1.0 is built from git history (tests/support/old_release.rs).
    (PartName::Reads, "git", "git"),
    (PartName::Upgrade, "git", "git"),
    (PartName::Upgrade, "ethtool", "ethtool"),
    (PartName::Upgrade, "nft", "nftables"),
    (PartName::Upgrade, "nsenter", "util-linux"),
    (PartName::Feed, "dockerd", "docker.io"),
    (PartName::Feed, "busybox", "busybox-static"),
];

fn main() {
    let args = Args::parse();
    match bench(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ingress-xdp-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the selected parts; Ok(false) when one of them failed (the others
/// still ran and the report says which failed).
fn bench(args: &Args) -> Result<bool> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmark loads BPF programs and creates namespaces: run it as root (cargo xtask bench)"
        );
    }
    let wanted = |p: PartName| args.parts.contains(&p);
    let tools: Vec<(&str, &str)> = TOOLS
        .iter()
        .filter(|(p, ..)| wanted(*p))
        .map(|&(_, tool, package)| (tool, package))
        .collect();
    sh::require_tools(&tools)?;
    ingress_xdp::sys::ensure_bpffs_mounted()?;
    let out = args.out.clone().unwrap_or_else(|| {
        let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        match bench_dir.parent() {
            Some(workspace) if args.quick => workspace.join("target/bench-quick"),
            _ => bench_dir.to_path_buf(),
        }
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    interrupt::install();
    let mut plan = Plan::new(args.quick);
    if let Some(trials) = args.cost_trials {
        plan.cost.trials = usize::from(trials);
    }
    if let Some(copies) = args.cost_copies {
        plan.cost.copies = usize::from(copies);
    }
    if let Some(trials) = args.rate_trials {
        plan.rate.trials = usize::from(trials);
    }
    if let Some(rounds) = args.duel_rounds {
        plan.duel.rounds = usize::from(rounds);
    }
    if let Some(batch) = args.rate_batch {
        plan.rate.batch = batch;
    }
    let started = Instant::now();
    let machine = machine::Machine::describe();
    let reference = progs::Reference::load()?;
    let cost = run_part(wanted(PartName::Cost), "1 (per-packet cost)", || {
        cost::measure(&reference, plan.cost)
    });
    let rate = run_part(wanted(PartName::Rate), "2 (drop rate)", || {
        let methods = if args.methods.is_empty() {
            &Method::ALL[..]
        } else {
            &args.methods[..]
        };
        let ranked = rate::measure(&reference, plan.rate, methods)?;
        let challenger = args.duel_with.unwrap_or(Method::OursXdpNative);
        let duel = if [challenger, Method::BareDrop]
            .iter()
            .all(|m| methods.contains(m))
        {
            Some(duel::measure(&reference, challenger, plan.rate, plan.duel)?)
        } else {
            None
        };
        Ok(rate::RateResults {
            methods: ranked,
            duel,
        })
    });
    let control = run_part(wanted(PartName::Control), "3 (control plane)", || {
        control::measure(plan.control)
    });
    let reads = run_part(wanted(PartName::Reads), "4 (reads)", || {
        reads::measure(plan.reads)
    });
    let upgrade = run_part(wanted(PartName::Upgrade), "5 (upgrade)", || {
        upgrade::measure(&reference, plan.upgrade)
    });
    let feed = run_part(wanted(PartName::Feed), "6 (policy feed)", || {
        feed::measure(plan.feed)
    });
    if interrupt::requested() {
        bail!("interrupted; cleaned up, wrote nothing");
    }
    let mut run = Run {
        quick: args.quick,
        machine,
        cost_settings: plan.cost,
        rate_settings: plan.rate,
        control_settings: plan.control,
        reads_settings: plan.reads,
        upgrade_settings: plan.upgrade,
        feed_settings: plan.feed,
        cost,
        rate,
        control,
        reads,
        upgrade,
        feed,
        elapsed: Duration::ZERO,
    };
    run.machine.finish();
    run.elapsed = started.elapsed();

    let goals = goals::evaluate(
        run.cost.done(),
        run.rate.done(),
        run.control.done(),
        run.reads.done(),
        run.upgrade.done(),
        run.feed.done(),
    );
    let chart_name = "results.png";
    let chart_path = out.join(chart_name);
    chart::write(&run, &chart_path)?;
    let md_path = out.join("RESULTS.md");
    std::fs::write(&md_path, report::markdown(&run, &goals, chart_name))
        .with_context(|| format!("writing {}", md_path.display()))?;
    let written = [md_path, chart_path].map(|p| p.display().to_string());
    print!("{}", report::summary(&run, &goals, &written));
    let failed = [
        matches!(run.cost, Part::Failed(_)),
        matches!(run.rate, Part::Failed(_)),
        matches!(run.control, Part::Failed(_)),
        matches!(run.reads, Part::Failed(_)),
        matches!(run.upgrade, Part::Failed(_)),
        matches!(run.feed, Part::Failed(_)),
    ];
    Ok(!failed.contains(&true))
}

/// Runs one part, turning its error or panic (the reused test fixtures
/// panic) into a failed part so that the others still run.
fn run_part<T>(wanted: bool, name: &str, f: impl FnOnce() -> Result<T>) -> Part<T> {
    if !wanted {
        return Part::Skipped;
    }
    eprintln!("bench: part {name}...");
    let t = Instant::now();
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(t)) => Part::Done(t),
        _ if interrupt::requested() => Part::Failed("interrupted".into()),
        Ok(Err(e)) => Part::Failed(format!("{e:#}")),
        Err(panic) => Part::Failed(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()),
        ),
    };
    match &outcome {
        Part::Failed(e) => eprintln!("bench: part {name} FAILED: {e}"),
        _ => eprintln!(
            "bench: part {name} done in {:.0} s",
            t.elapsed().as_secs_f64()
        ),
    }
    outcome
}
