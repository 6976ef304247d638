//! Part 2: drop rate through a real veth, every method side by side, and the
//! receiver's own cost per packet.
//!
//! Rate: the receiver has 2 rx queues and two generator threads, pinned to
//! CPU 0 and 1, send 64-byte SYNs to the blocked port. XDP_TX frames are
//! received on the sending CPU (the veth NAPI runs there), so each figure is
//! the rate of "generator + receiver": it ranks receivers, it is not the
//! receiver's limit.
//!
//! Cost: one rx queue with threaded NAPI, its kthread pinned to CPU 1 and
//! one generator thread on CPU 0; the kthread's run time (schedstat) divided
//! by the packets it took in is the receiver's cost alone.
//!
//! Every (method, trial) gets fresh veth pairs, and each round of trials
//! starts with a different method, so no method always runs first or last.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{
    counters, cpu,
    duel::DuelResults,
    frames::{self, BLOCKED_PORT},
    generator::{Generator, Sent},
    methods::Method,
    ours::Ours,
    progs::{Reference, XDP_TX},
    topo::{Pair, RX_IP, RxSetup, TX_IP},
};

/// Frame length (64-byte SYNs, as in the platform notes' measurements).
const FRAME_LEN: usize = 64;
/// Frames per generator batch by default (the platform notes' setting;
/// each batch wakes the receiver's NAPI once).
pub const DEFAULT_BATCH: u32 = 64;

/// Time for frames still in the veth ring to be processed after a run.
pub(crate) const SETTLE: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug)]
pub struct RateSettings {
    pub trials: usize,
    /// Length of one measured run.
    pub duration: Duration,
    /// Traffic before each measured run (caches, page pool, neighbours).
    pub warmup: Duration,
    /// Frames per generator batch: the receiver's NAPI wakes once per batch,
    /// so a cost that moves with it is paid per wake-up, not per packet.
    pub batch: u32,
}

/// Part 2: the ranking of every method, and the goals' head to head.
#[derive(Clone, Debug)]
pub struct RateResults {
    pub methods: Vec<MethodResult>,
    /// Not run when `--methods` leaves out ours (XDP native) or the bare
    /// XDP_DROP.
    pub duel: Option<DuelResults>,
}

/// One method over all trials.
#[derive(Clone, Debug)]
pub struct MethodResult {
    pub method: Method,
    /// Packets the method dropped (or, with no filter, the stack took in)
    /// per second, in millions; one value per trial.
    pub mpps: Vec<f64>,
    /// Share of the sent frames the method's counter did not see.
    pub missed: Vec<f64>,
    /// The receiver's ns per packet (threaded NAPI kthread).
    pub cost_ns: Vec<f64>,
    /// The kthread's busy share of its CPU during the cost runs (1.0 = the
    /// receiver was the bottleneck).
    pub cost_busy: Vec<f64>,
}

/// Measures `methods` (in this order; the rotation starts there).
pub fn measure(
    reference: &Reference,
    settings: RateSettings,
    methods: &[Method],
) -> Result<Vec<MethodResult>> {
    if cpu::count() < 2 {
        bail!("part 2 needs two CPUs (generator and receiver threads pinned apart)");
    }
    let ours = Ours::with_blocks("bd", &[&BLOCKED_PORT.to_string()])?;
    let tx_prog = reference.xdp(XDP_TX)?;
    let mut results: Vec<MethodResult> = methods
        .iter()
        .map(|&method| MethodResult {
            method,
            mpps: Vec::new(),
            missed: Vec::new(),
            cost_ns: Vec::new(),
            cost_busy: Vec::new(),
        })
        .collect();
    let n = results.len();
    for trial in 0..settings.trials {
        for i in 0..n {
            crate::interrupt::check()?;
            let r = &mut results[(i + trial) % n];
            let method = r.method;
            let trial_ctx = || format!("{} (trial {})", method.name(), trial + 1);
            let (rate, missed) =
                drop_rate(tx_prog, &ours, method, settings).with_context(trial_ctx)?;
            r.mpps.push(rate);
            r.missed.push(missed);
            let (cost, busy) =
                receiver_cost(tx_prog, &ours, method, settings).with_context(trial_ctx)?;
            r.cost_ns.push(cost);
            r.cost_busy.push(busy);
            eprintln!(
                "bench: part 2 trial {}: {:<24} {rate:6.2} Mpps ({:4.1}% missed), receiver {cost:6.1} ns/packet ({:3.0}% busy)",
                trial + 1,
                method.name(),
                missed.max(0.0) * 100.0,
                busy * 100.0
            );
        }
    }
    Ok(results)
}

pub(crate) fn syn_to_receiver(pair: &Pair) -> Vec<u8> {
    frames::syn_between(
        (pair.tx_mac, TX_IP),
        (pair.rx_mac, RX_IP),
        BLOCKED_PORT,
        FRAME_LEN,
    )
}

/// (Mpps dropped, share of the sent frames not counted) of one run.
fn drop_rate(
    tx_prog: &aya::programs::Xdp,
    ours: &Ours,
    method: Method,
    settings: RateSettings,
) -> Result<(f64, f64)> {
    let pair = Pair::new(RxSetup {
        queues: 2,
        threaded: false,
    })?;
    let installed = method.install(&pair, BLOCKED_PORT, ours)?;
    let generator = Generator::new(tx_prog, &pair, syn_to_receiver(&pair), settings.batch)?;
    let cpus = [0, 1];
    generator.run(&cpus, settings.warmup)?;
    std::thread::sleep(SETTLE);
    let read = || installed.counter.read(&pair.rx, &pair.rx_if);
    let before = read()?;
    let sent = generator.run(&cpus, settings.duration)?;
    std::thread::sleep(SETTLE);
    let counted = read()?.saturating_sub(before);
    check_traffic(method, &sent, counted)?;
    Ok((sent.per_sec(counted) / 1e6, missed(&sent, counted)))
}

/// (ns per packet, busy share) of the receiver's NAPI kthread in one run.
fn receiver_cost(
    tx_prog: &aya::programs::Xdp,
    ours: &Ours,
    method: Method,
    settings: RateSettings,
) -> Result<(f64, f64)> {
    let pair = Pair::new(RxSetup {
        queues: 1,
        threaded: true,
    })?;
    let _installed = method.install(&pair, BLOCKED_PORT, ours)?;
    let generator = Generator::new(tx_prog, &pair, syn_to_receiver(&pair), settings.batch)?;
    generator.run(&[0], settings.warmup)?;
    // Found after installing: the kernel may recreate NAPI on attach.
    let kthread = cpu::napi_kthread(&pair.rx_if)?;
    cpu::pin_task(kthread, 1)?;
    std::thread::sleep(SETTLE);
    let before = (
        cpu::run_time_ns(kthread)?,
        counters::rx_packets(&pair.rx, &pair.rx_if)?,
    );
    let sent = generator.run(&[0], settings.duration)?;
    std::thread::sleep(SETTLE);
    let ran = cpu::run_time_ns(kthread)?.saturating_sub(before.0);
    let packets = counters::rx_packets(&pair.rx, &pair.rx_if)?.saturating_sub(before.1);
    check_traffic(method, &sent, packets)?;
    Ok((
        ran as f64 / packets as f64,
        ran as f64 / sent.wall.as_nanos() as f64,
    ))
}

fn missed(sent: &Sent, counted: u64) -> f64 {
    1.0 - counted as f64 / sent.frames.max(1) as f64
}

/// A run whose counter saw (almost) nothing measured the setup, not the
/// method: say so instead of reporting zero.
pub(crate) fn check_traffic(method: Method, sent: &Sent, counted: u64) -> Result<()> {
    if sent.frames == 0 || (counted as f64) < 0.01 * sent.frames as f64 {
        bail!(
            "{}: the receiver counted {counted} of {} frames sent; the traffic did not arrive",
            method.name(),
            sent.frames
        );
    }
    Ok(())
}
