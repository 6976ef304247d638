//! Part 2's goals: ours beside the bare XDP_DROP, measured head to head.
//!
//! The ranking ([`crate::rate`]) gives every method its own runs, a minute
//! or more apart, and on this machine (a VM) the speed of the whole machine
//! drifts by several percent over that time: there a method that does
//! strictly more work can come out faster than its subset (in one run the
//! minimal check plus a rule lookup ranked below the same plus all our
//! maps). Here the two receivers are installed at once, each on a veth pair
//! of its own, and the generator alternates between them in short slices
//! (ABAB, then BABA), so a drift falls on both alike. Each round uses fresh
//! pairs and freshly loaded programs, and rounds still differ by several
//! percent from one set-up to the next: the goals take the median of the
//! rounds' ratios, and the report shows their spread.

use std::time::Duration;

use anyhow::{Context, Result};

use aya::programs::Xdp;

use crate::{
    counters, cpu,
    frames::BLOCKED_PORT,
    generator::{Generator, Sent},
    methods::{Installed, Method},
    ours::Ours,
    progs::{Reference, XDP_TX},
    rate::{RateSettings, SETTLE, check_traffic, syn_to_receiver},
    stats::Summary,
    topo::{Pair, RxSetup},
};

#[derive(Clone, Copy, Debug)]
pub struct DuelSettings {
    pub rounds: usize,
    /// Slices per method and round, for the rate and again for the cost.
    pub slices: usize,
    pub slice: Duration,
}

/// One round: the same measurement as the ranking's, per side.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// Mpps dropped, (challenger, bare).
    pub mpps: (f64, f64),
    /// Receiver ns per packet, (challenger, bare).
    pub cost_ns: (f64, f64),
}

/// What a round measures, side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Rate,
    Cost,
}

impl Measure {
    pub const ALL: [Measure; 2] = [Measure::Rate, Measure::Cost];

    pub fn unit(self) -> &'static str {
        match self {
            Measure::Rate => "Mpps",
            Measure::Cost => "receiver ns/packet",
        }
    }

    pub fn digits(self) -> usize {
        match self {
            Measure::Rate => 2,
            Measure::Cost => 0,
        }
    }

    /// (ours, bare) in one round.
    pub fn sides(self, r: &Round) -> (f64, f64) {
        match self {
            Measure::Rate => r.mpps,
            Measure::Cost => r.cost_ns,
        }
    }

    /// Ours over bare, in one round.
    pub fn ratio(self, r: &Round) -> f64 {
        let (ours, bare) = self.sides(r);
        ours / bare
    }
}

#[derive(Clone, Debug)]
pub struct DuelResults {
    pub settings: DuelSettings,
    /// The challenger, beside [`Method::BareDrop`].
    pub ours: Method,
    pub rounds: Vec<Round>,
}

impl DuelResults {
    /// `f` of every round, summarised.
    pub fn summary(&self, f: impl Fn(&Round) -> f64) -> Option<Summary> {
        Summary::of(&self.rounds.iter().map(f).collect::<Vec<_>>())
    }
}

/// The two receivers of a round, installed on their pairs, and a generator
/// for each.
struct Sides<'a> {
    installed: [Installed<'a>; 2],
    generators: [Generator<'a>; 2],
}

impl<'a> Sides<'a> {
    fn install(
        pairs: &'a [Pair; 2],
        methods: [Method; 2],
        tx_prog: &'a Xdp,
        ours: &'a Ours,
        batch: u32,
    ) -> Result<Self> {
        let install = |i: usize| methods[i].install(&pairs[i], BLOCKED_PORT, ours);
        let generator = |p: &Pair| Generator::new(tx_prog, p, syn_to_receiver(p), batch);
        Ok(Self {
            installed: [install(0)?, install(1)?],
            generators: [generator(&pairs[0])?, generator(&pairs[1])?],
        })
    }

    /// Runs the generators in alternating slices on `cpus`; what each sent,
    /// in total.
    fn alternate(&self, cpus: &[usize], settings: DuelSettings) -> Result<[Sent; 2]> {
        let mut total = [Sent {
            frames: 0,
            wall: Duration::ZERO,
        }; 2];
        for n in 0..settings.slices {
            for i in order(n, settings.slices) {
                let sent = self.generators[i].run(cpus, settings.slice)?;
                total[i].frames += sent.frames;
                total[i].wall += sent.wall;
            }
        }
        Ok(total)
    }
}

/// Runs `settings.rounds` rounds of `ours` against the bare XDP_DROP.
pub fn measure(
    reference: &Reference,
    ours_method: Method,
    rate: RateSettings,
    settings: DuelSettings,
) -> Result<DuelResults> {
    let ours = Ours::with_blocks("dl", &[&BLOCKED_PORT.to_string()])?;
    let tx_prog = reference.xdp(XDP_TX)?;
    let mut rounds = Vec::with_capacity(settings.rounds);
    for round in 0..settings.rounds {
        crate::interrupt::check()?;
        let sides = [ours_method, Method::BareDrop];
        let ctx = || format!("head to head, round {}", round + 1);
        let mpps = rates(tx_prog, &ours, sides, rate, settings).with_context(ctx)?;
        let cost_ns = costs(tx_prog, &ours, sides, rate, settings).with_context(ctx)?;
        let r = Round {
            mpps: (mpps[0], mpps[1]),
            cost_ns: (cost_ns[0], cost_ns[1]),
        };
        eprintln!(
            "bench: part 2 head to head {}: {} {:.2} vs {:.2} Mpps ({:.3}x), receiver {:.1} vs {:.1} ns/packet ({:.3}x)",
            round + 1,
            ours_method.name(),
            r.mpps.0,
            r.mpps.1,
            Measure::Rate.ratio(&r),
            r.cost_ns.0,
            r.cost_ns.1,
            Measure::Cost.ratio(&r)
        );
        rounds.push(r);
    }
    Ok(DuelResults {
        settings,
        ours: ours_method,
        rounds,
    })
}

/// The order of the sides in slice `n` of a round: ABAB, then BABA, so
/// neither side always goes first after the other.
fn order(n: usize, slices: usize) -> [usize; 2] {
    let half = slices / 2;
    let second_half = n >= half;
    let position = if second_half { n - half } else { n };
    if position.is_multiple_of(2) != second_half {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// Mpps each side dropped, set up as the ranking's rate.
fn rates(
    tx_prog: &Xdp,
    ours: &Ours,
    methods: [Method; 2],
    rate: RateSettings,
    settings: DuelSettings,
) -> Result<[f64; 2]> {
    let setup = RxSetup {
        queues: 2,
        threaded: false,
    };
    // Declared first, dropped last: the methods come off before the pairs go.
    let pairs = [Pair::tagged("da", setup)?, Pair::tagged("db", setup)?];
    let sides = Sides::install(&pairs, methods, tx_prog, ours, rate.batch)?;
    let cpus = [0, 1];
    let read = |i: usize| {
        sides.installed[i]
            .counter
            .read(&pairs[i].rx, &pairs[i].rx_if)
    };
    for generator in &sides.generators {
        generator.run(&cpus, rate.warmup)?;
    }
    std::thread::sleep(SETTLE);
    let before = [read(0)?, read(1)?];
    let sent = sides.alternate(&cpus, settings)?;
    std::thread::sleep(SETTLE);
    let mut mpps = [0.0; 2];
    for i in 0..2 {
        let counted = read(i)?.saturating_sub(before[i]);
        check_traffic(methods[i], &sent[i], counted)?;
        mpps[i] = sent[i].per_sec(counted) / 1e6;
    }
    Ok(mpps)
}

/// Receiver ns per packet of each side, set up as the ranking's cost: one
/// rx queue, threaded NAPI, both kthreads on CPU 1 (only one has traffic at
/// a time), the generator on CPU 0.
fn costs(
    tx_prog: &Xdp,
    ours: &Ours,
    methods: [Method; 2],
    rate: RateSettings,
    settings: DuelSettings,
) -> Result<[f64; 2]> {
    let setup = RxSetup {
        queues: 1,
        threaded: true,
    };
    let pairs = [Pair::tagged("ca", setup)?, Pair::tagged("cb", setup)?];
    let sides = Sides::install(&pairs, methods, tx_prog, ours, rate.batch)?;
    let mut kthreads = [0; 2];
    for i in 0..2 {
        sides.generators[i].run(&[0], rate.warmup)?;
        // Found after installing: the kernel may recreate NAPI on attach.
        kthreads[i] = cpu::napi_kthread(&pairs[i].rx_if)?;
        cpu::pin_task(kthreads[i], 1)?;
    }
    std::thread::sleep(SETTLE);
    let read = |i: usize| -> Result<(u64, u64)> {
        Ok((
            cpu::run_time_ns(kthreads[i])?,
            counters::rx_packets(&pairs[i].rx, &pairs[i].rx_if)?,
        ))
    };
    let before = [read(0)?, read(1)?];
    let sent = sides.alternate(&[0], settings)?;
    std::thread::sleep(SETTLE);
    let mut cost = [0.0; 2];
    for i in 0..2 {
        let after = read(i)?;
        let ran = after.0.saturating_sub(before[i].0);
        let packets = after.1.saturating_sub(before[i].1);
        check_traffic(methods[i], &sent[i], packets)?;
        cost[i] = ran as f64 / packets as f64;
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_leads_half_the_slices() {
        assert_eq!(order(0, 2)[0], 0);
        assert_eq!(order(1, 2)[0], 1);
        for slices in [2, 4, 8, 12] {
            let firsts: Vec<usize> = (0..slices).map(|n| order(n, slices)[0]).collect();
            let led_by_a = firsts.iter().filter(|&&i| i == 0).count();
            assert_eq!(led_by_a * 2, slices, "{firsts:?}");
        }
        // ABAB then BABA: A, B, A, B | B, A, B, A leads.
        let firsts: Vec<usize> = (0..8).map(|n| order(n, 8)[0]).collect();
        assert_eq!(firsts, [0, 1, 0, 1, 1, 0, 1, 0]);
    }
}
