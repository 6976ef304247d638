//! Part 4: what the control plane's reads cost with many rules.
//!
//! Two tables of 10,000 blocked ports: 10,000 single-port rules (each its own
//! `block` spec, so the first 4,096 take every counter slot and the rest
//! block uncounted), and the same number of ports as one range (one rule,
//! one counter). Each sits in a pin directory of its own, attached (XDP) to
//! both ends of a veth pair inside a namespace made here, as a node's NIC
//! and ingress_sbox would be. Per trial, interleaved:
//!
//! - in-process: `RuleTable::open` + `ranges()` (what `list` reads), and one
//!   refresh of `stats` with the maps opened once beforehand (attach points,
//!   their counters and presence, plus the ranges: what `stats --watch`
//!   collects every interval);
//! - the real CLI: the `ingress-xdp list --json` and `stats --json`
//!   processes, from spawn to exit with their output read.
//!
//! The same CLI reads run against release 0.1.0 (built from git history,
//! see [`crate::old`]) on the same tables made by its own `attach` and
//! `block`, when that binary can be had: the before/after ratio.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use ingress_xdp::{
    attach::{Presence, Registry},
    pins::Pins,
    rules::RuleTable,
};

use crate::{
    old,
    sh::run_in,
    support::{self, Netns},
};

#[derive(Clone, Copy, Debug)]
pub struct ReadsSettings {
    pub trials: usize,
}

/// Ports in each table.
pub const PORTS: u16 = 10_000;
/// Every other port from here: no two single-port rules are neighbours
/// (uncounted neighbours with equal rules are shown as one range), and none
/// is in the default ephemeral port range.
const SINGLES_FROM: u16 = 10_000;
const RANGE_FROM: u16 = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Singles,
    Range,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Singles, Table::Range];

    pub fn name(self) -> &'static str {
        match self {
            Table::Singles => "10,000 single-port rules",
            Table::Range => "10,000 ports as one range",
        }
    }

    /// The arguments of `block`: one spec per rule.
    fn specs(self) -> Vec<String> {
        match self {
            Table::Singles => (0..PORTS)
                .map(|i| (SINGLES_FROM + 2 * i).to_string())
                .collect(),
            Table::Range => vec![format!("{RANGE_FROM}-{}", RANGE_FROM + PORTS - 1)],
        }
    }

    /// Rules `list` shows for the table.
    fn listed(self) -> usize {
        match self {
            Table::Singles => usize::from(PORTS),
            Table::Range => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// This tree (the release build cargo xtask bench makes).
    Current,
    /// Release 0.1.0.
    V010,
}

impl Build {
    pub fn name(self) -> &'static str {
        match self {
            Build::Current => "this build",
            Build::V010 => "0.1.0",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// `RuleTable::open` + `ranges()` in this process.
    ListInProcess,
    /// One `stats` refresh in this process.
    StatsInProcess,
    /// The `ingress-xdp list --json` process.
    ListCli,
    /// The `ingress-xdp stats --json` process.
    StatsCli,
}

impl Read {
    pub const ALL: [Read; 4] = [
        Read::ListInProcess,
        Read::StatsInProcess,
        Read::ListCli,
        Read::StatsCli,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Read::ListInProcess => "`RuleTable::open` + `ranges()` (in-process)",
            Read::StatsInProcess => "one `stats` refresh (in-process)",
            Read::ListCli => "`ingress-xdp list --json` (process)",
            Read::StatsCli => "`ingress-xdp stats --json` (process)",
        }
    }

    /// Only this build's library can be timed in-process.
    fn applies_to(self, build: Build) -> bool {
        build == Build::Current || matches!(self, Read::ListCli | Read::StatsCli)
    }
}

/// One read of one table by one build, over all trials.
#[derive(Clone, Debug)]
pub struct Series {
    pub build: Build,
    pub table: Table,
    pub read: Read,
    pub ms: Vec<f64>,
    /// Of a process: the time it spent in the kernel (system CPU time),
    /// which a debug build does not inflate; empty for in-process reads.
    pub kernel_ms: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct ReadsResults {
    pub series: Vec<Series>,
    /// Why 0.1.0 was not measured, when it was not.
    pub old_missing: Option<String>,
    /// Attach points of each table's pin directory.
    pub points: usize,
    /// Rules of the single-port table that have a counter.
    pub singles_counted: usize,
}

impl ReadsResults {
    pub fn series(&self, build: Build, table: Table, read: Read) -> Option<&Series> {
        self.series
            .iter()
            .find(|s| s.build == build && s.table == table && s.read == read)
    }

    pub fn ms(&self, build: Build, table: Table, read: Read) -> Option<&[f64]> {
        self.series(build, table, read).map(|s| &s.ms[..])
    }
}

/// A pin directory under /sys/fs/bpf named by `support::unique`, made by
/// the binary under test; removed with everything in it on drop (unpinning
/// the links detaches them).
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> Self {
        Self {
            path: Path::new("/sys/fs/bpf").join(support::unique(tag)),
        }
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists()
            && let Err(e) = fs::remove_dir_all(&self.path)
        {
            eprintln!("bench: removing {}: {e}", self.path.display());
        }
    }
}

/// Runs `bin args` from the calling thread (and so in its network
/// namespace); its stdout, or an error naming the command and its stderr.
pub fn cli(bin: &Path, args: &[String]) -> Result<Vec<u8>> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {}", bin.display()))?;
    if !out.status.success() {
        let shown: Vec<&str> = args.iter().take(6).map(String::as_str).collect();
        bail!(
            "`{} {}{}` failed ({}): {}",
            bin.display(),
            shown.join(" "),
            if args.len() > 6 { " ..." } else { "" },
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// One table made by one build: its pin directory, attached to a veth pair
/// of its own.
struct Node {
    build: Build,
    table: Table,
    bin: PathBuf,
    /// This build's maps, opened once, as `stats --watch` holds them.
    opened: Option<(Registry, RuleTable)>,
    dir: PinDir,
}

impl Node {
    /// `attach --iface A --iface B --no-sbox`, then `block` the table; from a
    /// thread inside `ns`.
    fn make(ns: &Netns, build: Build, table: Table, bin: &Path) -> Result<Self> {
        let (a, b) = (support::unique("bwa"), support::unique("bwb"));
        run_in(
            ns,
            &format!(
                "ip link add {a} type veth peer name {b} && ip link set {a} up && ip link set {b} up"
            ),
        )?;
        let mut node = Self {
            build,
            table,
            bin: bin.to_path_buf(),
            opened: None,
            dir: PinDir::new("bwp"),
        };
        let pin_dir = node.dir.arg();
        let attach: Vec<String> = [
            "--pin-dir",
            &pin_dir,
            "attach",
            "--iface",
            &a,
            "--iface",
            &b,
            "--no-sbox",
        ]
        .map(String::from)
        .into();
        cli(bin, &attach).with_context(|| format!("{} attach", build.name()))?;
        let mut block = vec!["--pin-dir".to_string(), pin_dir, "block".into()];
        block.extend(table.specs());
        cli(bin, &block).with_context(|| format!("{} block ({})", build.name(), table.name()))?;
        if build == Build::Current {
            let pins = node.pins();
            node.opened = Some((Registry::open(&pins)?, RuleTable::open(&pins)?));
        }
        Ok(node)
    }

    fn pins(&self) -> Pins {
        Pins::new(&self.dir.path)
    }

    /// Times one read: (wall ms, the process's kernel ms); the first trial
    /// also checks what it read.
    fn read(&self, read: Read, check: bool) -> Result<(f64, Option<f64>)> {
        let args = |cmd: &str| -> Vec<String> {
            vec![
                "--pin-dir".into(),
                self.dir.arg(),
                cmd.into(),
                "--json".into(),
            ]
        };
        let cmd = match read {
            Read::ListInProcess => {
                let t = Instant::now();
                let rules = RuleTable::open(&self.pins())?.ranges()?.len();
                let ms = ms_since(t);
                return self.check_rules(check, rules).map(|()| (ms, None));
            }
            Read::StatsInProcess => {
                let t = Instant::now();
                let (registry, rules) = self.opened.as_ref().context("maps not opened")?;
                let (points, rules) = stats_refresh(registry, rules)?;
                let ms = ms_since(t);
                if check && points != POINTS {
                    bail!("stats saw {points} attached points, expected {POINTS}");
                }
                return self.check_rules(check, rules).map(|()| (ms, None));
            }
            Read::ListCli => "list",
            Read::StatsCli => "stats",
        };
        let kernel_before = children_kernel_ms();
        let t = Instant::now();
        let what = cli(&self.bin, &args(cmd))?;
        let ms = ms_since(t);
        let kernel = children_kernel_ms() - kernel_before;
        if check {
            let doc: serde_json::Value = serde_json::from_slice(&what).with_context(|| {
                format!("{} {}: output is not JSON", self.build.name(), read.name())
            })?;
            let rules = doc["rules"].as_array().map_or(0, Vec::len);
            if read == Read::StatsCli {
                let points = doc["attach_points"].as_array().map_or(0, Vec::len);
                if points != POINTS {
                    bail!(
                        "{} stats shows {points} attach points, expected {POINTS}",
                        self.build.name()
                    );
                }
            }
            self.check_rules(true, rules)?;
        }
        Ok((ms, Some(kernel)))
    }

    fn check_rules(&self, check: bool, rules: usize) -> Result<()> {
        if check && rules != self.table.listed() {
            bail!(
                "{} read {rules} rules from the table of {}, expected {}",
                self.build.name(),
                self.table.name(),
                self.table.listed()
            );
        }
        Ok(())
    }
}

/// Attach points per table (a node's NIC and its sandbox, in spirit).
const POINTS: usize = 2;

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// System CPU time of this process's waited-for children so far, in ms
/// (only the measured process ends while it is read).
fn children_kernel_ms() -> f64 {
    // SAFETY: a zeroed rusage is valid output space.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; RUSAGE_CHILDREN cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_stime.tv_sec as f64 * 1e3 + usage.ru_stime.tv_usec as f64 / 1e3
}

/// What one refresh of `ingress-xdp stats --watch` collects (cli.rs
/// `collect_stats`, with the maps opened once beforehand): every attach
/// point with its counters and presence, and the rules as ranges. Returns
/// (points attached, rules).
pub fn stats_refresh(registry: &Registry, table: &RuleTable) -> Result<(usize, usize)> {
    let mut attached = 0;
    let tally = table.tally()?;
    for point in registry.points()? {
        let counters = registry.counters_with(point.id, &tally)?;
        let presence = point.presence();
        std::hint::black_box(&counters);
        attached += usize::from(presence == Presence::Attached);
    }
    let rules = table.ranges_with(&tally)?;
    Ok((attached, std::hint::black_box(rules).len()))
}

pub fn measure(settings: ReadsSettings) -> Result<ReadsResults> {
    let current = PathBuf::from(support::bin());
    if !current.is_file() {
        bail!(
            "the ingress-xdp binary {} is missing: build it with `cargo build --release -p ingress-xdp` (cargo xtask bench does)",
            current.display()
        );
    }
    let (old_bin, old_missing) = match old::binary() {
        Ok(bin) => (Some(bin), None),
        Err(e) => {
            eprintln!("bench: part 4 without 0.1.0: {e:#}");
            (None, Some(format!("{e:#}")))
        }
    };
    let ns = Netns::new("bwn");
    let ns_path = ns.path();
    // Everything from a thread inside the namespace: the binaries' attach
    // resolves the interfaces there, and stats checks them there.
    ingress_xdp::sys::in_netns(Some(&ns_path), || {
        let mut nodes = Vec::new();
        for table in Table::ALL {
            nodes.push(Node::make(&ns, Build::Current, table, &current)?);
            if let Some(old) = &old_bin {
                nodes.push(Node::make(&ns, Build::V010, table, old)?);
            }
        }
        let singles_counted = RuleTable::open(&nodes[0].pins())?
            .ranges()?
            .iter()
            .filter(|r| r.counted)
            .count();
        let mut series: Vec<Series> = Vec::new();
        for node in &nodes {
            for read in Read::ALL.into_iter().filter(|r| r.applies_to(node.build)) {
                series.push(Series {
                    build: node.build,
                    table: node.table,
                    read,
                    ms: Vec::new(),
                    kernel_ms: Vec::new(),
                });
            }
        }
        let n = series.len();
        for trial in 0..settings.trials {
            crate::interrupt::check()?;
            // Rotated each trial: no read always runs first.
            for k in 0..n {
                let s = &mut series[(k + trial) % n];
                let node = nodes
                    .iter()
                    .find(|m| m.build == s.build && m.table == s.table)
                    .context("the node of a series")?;
                let (ms, kernel) = node.read(s.read, trial == 0).with_context(|| {
                    format!(
                        "{} of {} ({})",
                        s.read.name(),
                        s.table.name(),
                        s.build.name()
                    )
                })?;
                s.ms.push(ms);
                s.kernel_ms.extend(kernel);
            }
        }
        Ok(ReadsResults {
            series,
            old_missing: old_missing.clone(),
            points: POINTS,
            singles_counted,
        })
    })
}
