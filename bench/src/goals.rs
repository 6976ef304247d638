//! The goals, checked against the medians of this run.

use crate::{
    control::ControlResults,
    cost::{CostResults, Hook, Rules, Subject},
    duel::{DuelResults, Measure},
    frames::Kind,
    methods::Method,
    rate::{MethodResult, RateResults},
    reads::{Build, Read, ReadsResults, Table},
    stats::{Summary, percentile},
    upgrade::UpgradeResults,
};

pub struct Goal {
    pub part: u8,
    pub text: String,
    pub measured: String,
    /// None: not measured in this run.
    pub holds: Option<bool>,
}

impl Goal {
    fn new(part: u8, text: impl Into<String>, result: Option<(String, bool)>) -> Self {
        let (measured, holds) = match result {
            Some((m, h)) => (m, Some(h)),
            None => ("not measured".into(), None),
        };
        Self {
            part,
            text: text.into(),
            measured,
            holds,
        }
    }

    pub fn verdict(&self) -> &'static str {
        match self.holds {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        }
    }
}

/// Differences of medians this small count as "flat" whatever the spread.
const FLAT_FLOOR_NS: f64 = 2.0;

pub fn evaluate(
    cost: Option<&CostResults>,
    rate: Option<&RateResults>,
    control: Option<&ControlResults>,
    reads: Option<&ReadsResults>,
    upgrade: Option<&UpgradeResults>,
    feed: Option<&crate::feed::FeedResults>,
) -> Vec<Goal> {
    let mut goals = Vec::new();
    for (hook, name) in [(Hook::Xdp, "XDP"), (Hook::Tc, "TC")] {
        goals.push(Goal::new(
            1,
            format!("ours {name} <= 8 ns above the {name} floor on the IPv4 SYN, blocked and open"),
            cost.and_then(|c| worst_above_floor(c, hook, &[Kind::SynBlocked, Kind::SynOpen], 8.0)),
        ));
        goals.push(Goal::new(
            1,
            format!("ours {name} <= 15 ns above the {name} floor on the IPv6 (2 extension headers) and QinQ frames"),
            cost.and_then(|c| worst_above_floor(c, hook, &[Kind::Ipv6Exts, Kind::QinQ], 15.0)),
        ));
        if hook == Hook::Xdp {
            goals.push(Goal::new(
                1,
                "ours XDP on the blocked IPv4 SYN within 5 ns of the minimal port check",
                cost.and_then(|c| near_minimal(c, 5.0)),
            ));
        }
        goals.push(Goal::new(
            1,
            format!("ours {name} flat (within noise) from 1 to 10,000 rules and with 4,096 counted rules"),
            cost.and_then(|c| flatness(c, hook)),
        ));
    }
    goals.push(Goal::new(
        1,
        "drop events off: no measurable cost (ours XDP beside the same program built without the event code, every frame, within 2 ns)",
        cost.and_then(events_off_cost),
    ));
    goals.push(Goal::new(
        1,
        "drop events on at the rate limit: <= 10 ns more per dropped packet than events off (ours XDP, blocked IPv4 SYN); every event sent, held back or lost is counted",
        cost.and_then(events_cost),
    ));
    let rate_of = |m: Method| rate?.methods.iter().find(|r| r.method == m);
    let ratio = |a: Method, b: Method, pick: fn(&MethodResult) -> &Vec<f64>| {
        let (a, b) = (
            Summary::of(pick(rate_of(a)?))?,
            Summary::of(pick(rate_of(b)?))?,
        );
        Some((a.median / b.median, a.median, b.median))
    };
    // Another challenger (`--duel-with`) is a diagnosis, not the goal.
    let duel = rate
        .and_then(|r| r.duel.as_ref())
        .filter(|d| d.ours == Method::OursXdpNative);
    goals.push(Goal::new(
        2,
        "ours XDP native >= 0.95x the bare XDP_DROP rate (head to head: the median of the rounds' ratios)",
        duel.and_then(|d| duel_ratio(d, Measure::Rate))
            .map(|(text, x)| (text, x >= 0.95)),
    ));
    goals.push(Goal::new(
        2,
        "receiver cost of ours XDP native <= 1.10x the bare XDP_DROP program (head to head: the median of the rounds' ratios)",
        duel.and_then(|d| duel_ratio(d, Measure::Cost))
            .map(|(text, x)| (text, x <= 1.10)),
    ));
    goals.push(Goal::new(
        2,
        "drop events off: ours XDP native's rate and receiver cost beside the build without the event code (no measurable cost: within the trials' spread)",
        rate_of(Method::OursXdpNative)
            .zip(rate_of(Method::OursXdpNativeNoEventCode))
            .and_then(|(off, none)| events_off_live(off, none)),
    ));
    goals.push(Goal::new(
        2,
        "drop events on: ours XDP native >= 0.9x its rate with events off",
        ratio(Method::OursXdpNativeEvents, Method::OursXdpNative, |r| {
            &r.mpps
        })
        .map(|(x, a, b)| (format!("{x:.3}x ({a:.2} vs {b:.2} Mpps)"), x >= 0.9)),
    ));
    let p99 = |samples: &[f64]| {
        let (p50, p99) = (percentile(samples, 50.0)?, percentile(samples, 99.0)?);
        Some((
            format!(
                "p50 {p50:.0} ms, p99 {p99:.0} ms ({} trials)",
                samples.len()
            ),
            p99 <= 250.0,
        ))
    };
    goals.push(Goal::new(
        3,
        "`docker service create` returned -> port in the map: p99 <= 250 ms",
        control.and_then(|c| p99(&c.create_ms)),
    ));
    goals.push(Goal::new(
        3,
        "`docker service update` returned -> port in the map: p99 <= 250 ms",
        control.and_then(|c| p99(&c.update_ms)),
    ));
    goals.push(Goal::new(
        3,
        "full sync with 200 services <= 1 s",
        control.and_then(|c| {
            let s = Summary::of(&c.first_sync_ms)?;
            Some((
                format!(
                    "median {:.0} ms, max {:.0} ms ({} services)",
                    s.median, s.max, c.services
                ),
                s.max <= 1000.0,
            ))
        }),
    ));
    goals.push(Goal::new(
        4,
        "`ingress-xdp list` with 10,000 rules <= 20 ms (the process, spawn to exit)",
        reads.and_then(|r| worst_read(r, Read::ListCli, 20.0)),
    ));
    goals.push(Goal::new(
        4,
        "one `stats` refresh (as `stats --watch` collects it) with 10,000 rules <= 5 ms",
        reads.and_then(|r| worst_read(r, Read::StatsInProcess, 5.0)),
    ));
    goals.push(Goal::new(
        5,
        "upgrade from 0.1.0 in place under traffic: 0 packets to the blocked port pass",
        upgrade.and_then(upgrade_passed),
    ));
    goals.push(Goal::new(
        6,
        "policy feed: `docker service update` returned -> the changed rule set at every one of 1,000 workers: p99 <= 250 ms",
        feed.and_then(|f| {
            if f.latencies_ms.is_empty() {
                return None;
            }
            let (p50, p99, max) = crate::report::feed_percentiles(f);
            Some((
                format!(
                    "{} clients: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms; agent {:.0} ms CPU per update, {:.1} MB RSS",
                    f.clients,
                    f.cpu_per_trial_s * 1000.0,
                    f.rss_mb
                ),
                p99 <= 250.0,
            ))
        }),
    ));
    goals
}

/// The worst median of `read` (this build) over the part-4 tables.
fn worst_read(r: &ReadsResults, read: Read, limit: f64) -> Option<(String, bool)> {
    let mut parts = Vec::new();
    let mut worst = f64::MIN;
    for table in Table::ALL {
        let s = Summary::of(r.ms(Build::Current, table, read)?)?;
        worst = worst.max(s.median);
        parts.push(format!(
            "{}: {:.1} ms (max {:.1})",
            table.name(),
            s.median,
            s.max
        ));
    }
    Some((parts.join("; "), worst <= limit))
}

fn upgrade_passed(u: &UpgradeResults) -> Option<(String, bool)> {
    if u.trials.is_empty() {
        return None;
    }
    let sum = |f: fn(&crate::upgrade::Trial) -> u64| u.trials.iter().map(f).sum::<u64>();
    let (sent, dropped, passed) = (sum(|t| t.sent), sum(|t| t.dropped), sum(|t| t.passed));
    let to_program: Vec<f64> = u.trials.iter().map(|t| t.to_program_ms).collect();
    let to_exit: Vec<f64> = u.trials.iter().map(|t| t.to_exit_ms).collect();
    let (p, e) = (Summary::of(&to_program)?, Summary::of(&to_exit)?);
    Some((
        format!(
            "{passed} passed, {dropped} dropped of {sent} sent ({} trials); new program on the link {:.1} ms, attach exited {:.1} ms after spawn",
            u.trials.len(),
            p.median,
            e.median
        ),
        passed == 0 && u.counter_check > 0,
    ))
}

/// The largest median above the floor over `kinds` and every rule table.
fn worst_above_floor(
    c: &CostResults,
    hook: Hook,
    kinds: &[Kind],
    limit: f64,
) -> Option<(String, bool)> {
    let mut parts = Vec::new();
    let mut worst = f64::MIN;
    for &kind in kinds {
        let f = c.frame_index(kind)?;
        let mut medians = Vec::new();
        for rules in Rules::ALL {
            let m = c.above_floor(Subject::Ours(hook, rules), f)?.median;
            worst = worst.max(m);
            medians.push(format!("{m:+.1}"));
        }
        parts.push(format!("{}: {}", c.frames[f].name, medians.join(" / ")));
    }
    Some((
        format!("{} ns ({} rules)", parts.join("; "), tables()),
        worst <= limit,
    ))
}

/// "1 / 10,000 / 4,096 counted".
fn tables() -> String {
    Rules::ALL.map(Rules::short).join(" / ")
}

/// Ours XDP with events on minus events off on the blocked SYN, trial by
/// trial, and what the program counted of the events.
fn events_cost(c: &CostResults) -> Option<(String, bool)> {
    let f = c.frame_index(Kind::SynBlocked)?;
    let d = c
        .difference(Subject::OursEvents, Subject::Ours(Hook::Xdp, Rules::One), f)?
        .median;
    let (counts, matched) = c.events?;
    Some((
        format!(
            "{d:+.1} ns; of {matched} rule matches {} sent, {} held back, {} lost (counted in the program)",
            counts.sent, counts.limited, counts.lost
        ),
        d <= 10.0,
    ))
}

/// Events off against no event code, live: each median within the other's
/// min-max range counts as no measurable difference.
/// The median of the rounds' ratios, shown with their spread and the two
/// sides' medians; and that median.
fn duel_ratio(d: &DuelResults, m: Measure) -> Option<(String, f64)> {
    let x = d.summary(|r| m.ratio(r))?;
    let ours = d.summary(|r| m.sides(r).0)?;
    let bare = d.summary(|r| m.sides(r).1)?;
    Some((
        format!(
            "{:.3}x ({:.3}–{:.3} over {} rounds; {:.d$} vs {:.d$} {})",
            x.median,
            x.min,
            x.max,
            x.n,
            ours.median,
            bare.median,
            m.unit(),
            d = m.digits()
        ),
        x.median,
    ))
}

fn events_off_live(off: &MethodResult, none: &MethodResult) -> Option<(String, bool)> {
    let within = |a: &Summary, b: &Summary| {
        (b.min..=b.max).contains(&a.median) || (a.min..=a.max).contains(&b.median)
    };
    let (rate_off, rate_none) = (Summary::of(&off.mpps)?, Summary::of(&none.mpps)?);
    let (cost_off, cost_none) = (Summary::of(&off.cost_ns)?, Summary::of(&none.cost_ns)?);
    Some((
        format!(
            "{} vs {} Mpps; receiver {} vs {} ns/packet",
            rate_off.show(2),
            rate_none.show(2),
            cost_off.show(0),
            cost_none.show(0)
        ),
        within(&rate_off, &rate_none) && within(&cost_off, &cost_none),
    ))
}

/// Ours XDP (events off) minus its build without the event code, trial by
/// trial, on every frame: the worst median is the switched-off code's cost.
fn events_off_cost(c: &CostResults) -> Option<(String, bool)> {
    let mut worst = f64::MIN;
    let mut parts = Vec::new();
    for (f, frame) in c.frames.iter().enumerate() {
        let d = c
            .difference(
                Subject::Ours(Hook::Xdp, Rules::One),
                Subject::OursNoEventCode,
                f,
            )?
            .median;
        worst = worst.max(d);
        parts.push(format!("{}: {d:+.1}", frame.name));
    }
    Some((format!("{} ns", parts.join("; ")), worst <= FLAT_FLOOR_NS))
}

fn near_minimal(c: &CostResults, limit: f64) -> Option<(String, bool)> {
    let f = c.frame_index(Kind::SynBlocked)?;
    let mut worst = f64::MIN;
    let mut medians = Vec::new();
    for rules in Rules::ALL {
        let d = c
            .difference(Subject::Ours(Hook::Xdp, rules), Subject::Minimal, f)?
            .median;
        worst = worst.max(d);
        medians.push(format!("{d:+.1}"));
    }
    Some((
        format!("{} ns ({} rules)", medians.join(" / "), tables()),
        worst <= limit,
    ))
}

/// The largest change of a median from the 1-rule table to each other
/// table, against the trials' own spread.
fn flatness(c: &CostResults, hook: Hook) -> Option<(String, bool)> {
    let mut worst: Option<(f64, f64, &str, Rules)> = None;
    let mut holds = true;
    for (f, frame) in c.frames.iter().enumerate() {
        let one = c.above_floor(Subject::Ours(hook, Rules::One), f)?;
        for rules in [Rules::TenThousand, Rules::Counted] {
            let other = c.above_floor(Subject::Ours(hook, rules), f)?;
            let change = other.median - one.median;
            let noise = FLAT_FLOOR_NS.max(one.half_range()).max(other.half_range());
            holds &= change.abs() <= noise;
            if worst.is_none_or(|(w, ..)| change.abs() > w.abs()) {
                worst = Some((change, noise, frame.name, rules));
            }
        }
    }
    let (change, noise, name, rules) = worst?;
    Some((
        format!(
            "largest change {change:+.1} ns (1 -> {} rules, {name}; noise {noise:.1} ns)",
            rules.short()
        ),
        holds,
    ))
}
