//! Part 1: the per-packet cost of each program, from BPF_PROG_TEST_RUN.
//!
//! The kernel runs the program `repeat` times on one frame and reports the
//! mean time of a run in whole nanoseconds (`bpf_test_timer`: total time /
//! repeat). That includes test_run's own per-run overhead, which the floor
//! programs (a fixed verdict, one per hook: skb runs cost more) measure; the
//! tables report each program above the floor of its hook. Trials interleave
//! every program and frame, so slow drift on a shared machine spreads over
//! all of them instead of biasing one.

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ingress_xdp::{
    events::{self, Counts, Settings, Switch},
    rules::RuleTable,
};
use ingress_xdp_common::MAX_RULE_COUNTERS;

use crate::{
    cpu,
    frames::{self, BLOCKED_PORT, Frame, Kind},
    ours::{self, Ours},
    progs::{FLOOR_TC, FLOOR_XDP, MINIMAL_DROP, MINIMAL_LOOKUP, MINIMAL_MAPS, Reference},
    stats::Summary,
    topo::{Pair, RxSetup},
    xdp_filter::XdpFilter,
};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// TC_ACT_UNSPEC (-1) as test_run reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// 10,000 more blocked ports for the "many rules" table.
const MANY_RULES: &str = "20000-29999";
/// The first of the single-port rules that fill the counter table.
const COUNTED_FROM: u16 = 20000;

#[derive(Clone, Copy, Debug)]
pub struct CostSettings {
    pub trials: usize,
    pub repeat: u32,
    /// Copies of each program loaded side by side (see [`run_copies`]).
    pub copies: usize,
}

/// Which rule table our programs run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// 8080/tcp and 8080/udp: the port the frames use.
    One,
    /// The same plus 10,000 other tcp ports (one range: one rule).
    TenThousand,
    /// 8080/tcp, 8080/udp and 4,094 more single-port tcp rules, each its own
    /// spec and so its own counter: 4,096 counted rules, a full counter
    /// table.
    Counted,
}

impl Rules {
    pub const ALL: [Rules; 3] = [Rules::One, Rules::TenThousand, Rules::Counted];

    /// For goal texts: "1 / 10,000 / 4,096 counted".
    pub fn short(self) -> &'static str {
        match self {
            Rules::One => "1",
            Rules::TenThousand => "10,000",
            Rules::Counted => "4,096 counted",
        }
    }

    /// The rule specs, as `ingress-xdp block` takes them (one per rule).
    fn specs(self) -> Vec<String> {
        let mut specs = vec!["8080".to_string(), "8080/udp".to_string()];
        match self {
            Rules::One => {}
            Rules::TenThousand => specs.push(MANY_RULES.into()),
            Rules::Counted => {
                let more = COUNTED_RULES - specs.len();
                specs.extend((0..more).map(|i| (COUNTED_FROM + i as u16).to_string()));
            }
        }
        specs
    }
}

/// Rules with a counter of their own in the full table: every counter slot
/// but the uncounted sink (slot 0).
pub const COUNTED_RULES: usize = MAX_RULE_COUNTERS as usize - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Floor(Hook),
    Ours(Hook, Rules),
    XdpFilter,
    /// The reference minimal port check (fixed offset, no map).
    Minimal,
    /// The minimal check with its verdict from one rule-array slot: the
    /// lookup no table-driven filter can skip.
    MinimalLookup,
    /// The minimal check plus ingress-xdp's map accesses for a blocked port.
    MinimalMaps,
    /// Ours XDP, 1 port, with drop events on at the default rate limit
    /// (nearly every packet of a test run finds the bucket empty).
    OursEvents,
    /// Ours XDP, 1 port, built with the event code compiled out: beside
    /// `Ours(Xdp, One)` (events off), what the switched-off code costs.
    OursNoEventCode,
}

impl Subject {
    pub const ALL: [Subject; 14] = [
        Subject::Floor(Hook::Xdp),
        Subject::Floor(Hook::Tc),
        Subject::Ours(Hook::Xdp, Rules::One),
        Subject::Ours(Hook::Xdp, Rules::TenThousand),
        Subject::Ours(Hook::Xdp, Rules::Counted),
        Subject::Ours(Hook::Tc, Rules::One),
        Subject::Ours(Hook::Tc, Rules::TenThousand),
        Subject::Ours(Hook::Tc, Rules::Counted),
        Subject::XdpFilter,
        Subject::Minimal,
        Subject::MinimalLookup,
        Subject::MinimalMaps,
        Subject::OursEvents,
        Subject::OursNoEventCode,
    ];

    pub fn hook(self) -> Hook {
        match self {
            Subject::Floor(h) | Subject::Ours(h, _) => h,
            Subject::XdpFilter
            | Subject::Minimal
            | Subject::MinimalLookup
            | Subject::MinimalMaps
            | Subject::OursEvents
            | Subject::OursNoEventCode => Hook::Xdp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Subject::Floor(Hook::Xdp) => "floor (XDP)",
            Subject::Floor(Hook::Tc) => "floor (TC)",
            Subject::Ours(Hook::Xdp, Rules::One) => "ours XDP, 1 port",
            Subject::Ours(Hook::Xdp, Rules::TenThousand) => "ours XDP, 10k ports",
            Subject::Ours(Hook::Xdp, Rules::Counted) => "ours XDP, 4,096 counted",
            Subject::Ours(Hook::Tc, Rules::One) => "ours TC, 1 port",
            Subject::Ours(Hook::Tc, Rules::TenThousand) => "ours TC, 10k ports",
            Subject::Ours(Hook::Tc, Rules::Counted) => "ours TC, 4,096 counted",
            Subject::XdpFilter => "xdp-filter",
            Subject::Minimal => "minimal port check",
            Subject::MinimalLookup => "minimal + rule lookup",
            Subject::MinimalMaps => "minimal + our maps",
            Subject::OursEvents => "ours XDP, events on",
            Subject::OursNoEventCode => "ours XDP, no event code",
        }
    }
}

/// What one program did with one frame, over all trials.
#[derive(Clone, Debug)]
pub struct Cell {
    pub subject: Subject,
    pub frame: usize,
    /// "drop", "pass", "aborted" (XDP_ABORTED) or "other".
    pub verdict: &'static str,
    /// Mean ns per run, one value per trial.
    pub ns: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct CostResults {
    pub frames: Vec<Frame>,
    pub cells: Vec<Cell>,
    /// What the event limiter of the events-on table counted over every
    /// trial, and the rule matches that had to send an event.
    pub events: Option<(Counts, u64)>,
    /// The xdp-filter program that ran (name and id), for the report.
    pub xdp_filter_prog: String,
}

impl CostResults {
    fn cell(&self, subject: Subject, frame: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.subject == subject && c.frame == frame)
    }

    pub fn frame_index(&self, kind: Kind) -> Option<usize> {
        self.frames.iter().position(|f| f.kind == kind)
    }

    pub fn verdict(&self, subject: Subject, frame: usize) -> Option<&'static str> {
        self.cell(subject, frame).map(|c| c.verdict)
    }

    pub fn absolute(&self, subject: Subject, frame: usize) -> Option<Summary> {
        Summary::of(&self.cell(subject, frame)?.ns)
    }

    /// ns above the floor of the subject's hook, trial by trial.
    pub fn above_floor(&self, subject: Subject, frame: usize) -> Option<Summary> {
        let floor = self.cell(Subject::Floor(subject.hook()), frame)?;
        let cell = self.cell(subject, frame)?;
        let diffs: Vec<f64> = cell.ns.iter().zip(&floor.ns).map(|(a, f)| a - f).collect();
        Summary::of(&diffs)
    }

    /// ns of `a` minus ns of `b`, trial by trial.
    pub fn difference(&self, a: Subject, b: Subject, frame: usize) -> Option<Summary> {
        let (a, b) = (self.cell(a, frame)?, self.cell(b, frame)?);
        let diffs: Vec<f64> = a.ns.iter().zip(&b.ns).map(|(x, y)| x - y).collect();
        Summary::of(&diffs)
    }
}

enum Prog<'a> {
    Xdp(&'a Xdp),
    Tc(&'a SchedClassifier),
}

impl Prog<'_> {
    /// (return value, mean ns per run).
    fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let r = match self {
            Prog::Xdp(p) => p.test_run(opts),
            Prog::Tc(p) => p.test_run(opts),
        }
        .context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }

    fn verdict(&self, ret: u32) -> &'static str {
        match (self, ret) {
            (Prog::Xdp(_), XDP_DROP) | (Prog::Tc(_), TC_ACT_SHOT) => "drop",
            (Prog::Xdp(_), XDP_PASS) | (Prog::Tc(_), TC_ACT_UNSPEC | TC_ACT_OK) => "pass",
            (Prog::Xdp(_), XDP_ABORTED) => "aborted",
            _ => "other",
        }
    }
}

/// Runs part 1 on one pinned CPU (the last), in a thread of its own so the
/// caller's affinity stays as it was.
pub fn measure(reference: &Reference, settings: CostSettings) -> Result<CostResults> {
    let copies = settings.copies.max(1);
    let load = |f: &dyn Fn() -> Result<Ebpf>| (0..copies).map(|_| f()).collect::<Result<Vec<_>>>();
    let few = Ours::with_blocks("bc", &Rules::One.specs())?;
    let many = Ours::with_blocks("bc", &Rules::TenThousand.specs())?;
    let counted = Ours::with_blocks("bc", &Rules::Counted.specs())?;
    check_counted(&counted)?;
    let xdp_few = load(&|| few.load_xdp(0))?;
    let xdp_many = load(&|| many.load_xdp(0))?;
    let xdp_counted = load(&|| counted.load_xdp(0))?;
    let tc_few = load(&|| few.load_tc(1))?;
    let tc_many = load(&|| many.load_tc(1))?;
    let tc_counted = load(&|| counted.load_tc(1))?;
    let with_events = Ours::with_blocks("bce", &Rules::One.specs())?;
    let mut switch = Switch::open(with_events.pins())?;
    switch.set(Settings {
        enabled: true,
        rate: events::DEFAULT_RATE,
        burst: events::DEFAULT_BURST,
    })?;
    let xdp_events = load(&|| with_events.load_xdp(0))?;
    let xdp_no_event_code = load(&|| few.load_xdp_without_events(0))?;
    let more_references = (1..copies)
        .map(|_| Reference::load())
        .collect::<Result<Vec<_>>>()?;
    let references: Vec<&Reference> = std::iter::once(reference)
        .chain(more_references.iter())
        .collect();

    let pair = Pair::new(RxSetup {
        queues: 1,
        threaded: false,
    })?;
    let filter = XdpFilter::load(&pair.rx, &pair.rx_if, BLOCKED_PORT)?;
    let filter_prog = filter.program(&few.pins().dir().join("xdp-filter"))?;
    let filter_info = filter_prog
        .info()
        .map(|i| format!("{} (id {})", i.name_as_str().unwrap_or("?"), i.id()))
        .unwrap_or_else(|_| "xdp-filter".into());

    let reference_xdp = |name: &str| -> Result<Vec<Prog<'_>>> {
        references
            .iter()
            .map(|r| Ok(Prog::Xdp(r.xdp(name)?)))
            .collect()
    };
    let programs = |subject: Subject| -> Result<Vec<Prog<'_>>> {
        match subject {
            Subject::Floor(Hook::Xdp) => reference_xdp(FLOOR_XDP),
            Subject::Floor(Hook::Tc) => references
                .iter()
                .map(|r| Ok(Prog::Tc(r.tc(FLOOR_TC)?)))
                .collect(),
            Subject::Ours(Hook::Xdp, Rules::One) => xdp_of(&xdp_few),
            Subject::Ours(Hook::Xdp, Rules::TenThousand) => xdp_of(&xdp_many),
            Subject::Ours(Hook::Xdp, Rules::Counted) => xdp_of(&xdp_counted),
            Subject::Ours(Hook::Tc, Rules::One) => tc_of(&tc_few),
            Subject::Ours(Hook::Tc, Rules::TenThousand) => tc_of(&tc_many),
            Subject::Ours(Hook::Tc, Rules::Counted) => tc_of(&tc_counted),
            // Loaded by xdp-tools, one copy.
            Subject::XdpFilter => Ok(vec![Prog::Xdp(&filter_prog)]),
            Subject::Minimal => reference_xdp(MINIMAL_DROP),
            Subject::MinimalLookup => reference_xdp(MINIMAL_LOOKUP),
            Subject::MinimalMaps => reference_xdp(MINIMAL_MAPS),
            Subject::OursEvents => xdp_of(&xdp_events),
            Subject::OursNoEventCode => xdp_of(&xdp_no_event_code),
        }
    };
    let subjects = Subject::ALL
        .iter()
        .map(|&s| Ok((s, programs(s)?)))
        .collect::<Result<Vec<_>>>()?;
    let frames = frames::representative();
    let mut cells: Vec<Cell> = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            cpu::pin_current_thread(cpu::count() - 1)?;
            for trial in 0..settings.trials {
                crate::interrupt::check()?;
                for (f, frame) in frames.iter().enumerate() {
                    // Rotated each trial: no program always runs first.
                    let n = subjects.len();
                    for k in 0..n {
                        let (subject, copies) = &subjects[(k + trial) % n];
                        let (verdict, ns) = run_copies(copies, &frame.bytes, settings.repeat)
                            .with_context(|| {
                                format!("test run of {} on {:?}", subject.name(), frame.name)
                            })?;
                        if trial == 0 {
                            check_ours(*subject, frame, verdict)?;
                            cells.push(Cell {
                                subject: *subject,
                                frame: f,
                                verdict,
                                ns: Vec::new(),
                            });
                        }
                        let cell = cells
                            .iter_mut()
                            .find(|c| c.subject == *subject && c.frame == f)
                            .context("cell of an earlier trial")?;
                        cell.ns.push(ns);
                    }
                }
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| bail!("the part-1 thread panicked"))
    })?;
    // Every rule match had to send an event: each is sent, held back or
    // lost, and counted so (not guessed).
    let counts = switch.counts()?;
    let matched: u64 = RuleTable::open(with_events.pins())?
        .ranges()?
        .iter()
        .map(|r| r.packets)
        .sum();
    if counts.sent + counts.limited + counts.lost != matched {
        bail!(
            "events: {} sent + {} held back + {} lost != {matched} rule matches",
            counts.sent,
            counts.limited,
            counts.lost
        );
    }
    Ok(CostResults {
        frames,
        cells,
        events: Some((counts, matched)),
        xdp_filter_prog: filter_info,
    })
}

/// The counted table must be what it claims: every rule counted, every
/// counter slot taken (a product change that merged or dropped counters
/// would otherwise measure another table).
fn check_counted(ours: &Ours) -> Result<()> {
    let rules = RuleTable::open(ours.pins())?.ranges()?;
    let counted = rules.iter().filter(|r| r.counted).count();
    if rules.len() != COUNTED_RULES || counted != COUNTED_RULES {
        bail!(
            "the counted table has {} rules, {counted} of them counted; expected {COUNTED_RULES}, all counted",
            rules.len()
        );
    }
    Ok(())
}

fn xdp_of(objects: &[Ebpf]) -> Result<Vec<Prog<'_>>> {
    objects
        .iter()
        .map(|o| Ok(Prog::Xdp(ours::xdp(o)?)))
        .collect()
}

fn tc_of(objects: &[Ebpf]) -> Result<Vec<Prog<'_>>> {
    objects.iter().map(|o| Ok(Prog::Tc(ours::tc(o)?))).collect()
}

/// Runs every copy of one program on the frame: (their verdict, the mean of
/// their ns per run). The JIT places each copy elsewhere in memory, and
/// where the code lands moves a run by a nanosecond or two here, for better
/// or worse and differently per frame: one copy would measure its placement
/// along with the program.
fn run_copies(copies: &[Prog<'_>], frame: &[u8], repeat: u32) -> Result<(&'static str, f64)> {
    let mut verdict = None;
    let mut total = 0.0;
    for (i, p) in copies.iter().enumerate() {
        let (ret, ns) = p.run(frame, repeat)?;
        let v = p.verdict(ret);
        if verdict.is_some_and(|first| first != v) {
            bail!("copy {i} returned {v}, copy 0 {}", verdict.unwrap_or("?"));
        }
        verdict = Some(v);
        total += ns;
    }
    let verdict = verdict.context("no copy of the program to run")?;
    Ok((verdict, total / copies.len() as f64))
}

/// A cost is meaningless if the program did the wrong thing.
fn check_ours(subject: Subject, frame: &Frame, verdict: &str) -> Result<()> {
    if matches!(
        subject,
        Subject::Ours(..) | Subject::OursEvents | Subject::OursNoEventCode
    ) && verdict != frame.ours
    {
        bail!(
            "{} returned {verdict} for {:?}, expected {}",
            subject.name(),
            frame.name,
            frame.ours
        );
    }
    Ok(())
}
