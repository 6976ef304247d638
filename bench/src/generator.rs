//! The traffic generator: BPF_PROG_TEST_RUN in live-frames mode on a program
//! that returns XDP_TX. The kernel sends each frame out of the generator-side
//! veth (`ingress_ifindex` in the context), so it arrives on the receiver's
//! end, with no socket, qdisc or skb on the sending side. See the platform
//! notes ("Traffic tools") for the pitfalls this avoids.

use std::{
    path::PathBuf,
    sync::{
        Barrier,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};

use crate::{cpu, topo::Pair};

/// Frames per test-run call: small enough that a trial ends close to its
/// deadline even at 0.5 Mpps, large enough that the syscall is amortized.
const CHUNK: u32 = 1 << 16;
/// Frames per batch inside the kernel (at most 256): the frames of a batch
/// reach the receiver together (one NAPI wake-up each).
pub const MAX_BATCH: u32 = 256;

pub struct Generator<'a> {
    prog: &'a Xdp,
    netns: PathBuf,
    frame: Vec<u8>,
    ctx: [u8; 24],
    batch: u32,
}

/// What one run sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub frames: u64,
    pub wall: Duration,
}

impl Sent {
    pub fn per_sec(&self, packets: u64) -> f64 {
        packets as f64 / self.wall.as_secs_f64()
    }
}

impl<'a> Generator<'a> {
    /// Sends `frame` out of the generator side of `pair` with `prog` (an
    /// XDP_TX program), `batch` frames at a time.
    pub fn new(prog: &'a Xdp, pair: &Pair, frame: Vec<u8>, batch: u32) -> Result<Self> {
        if !(1..=MAX_BATCH).contains(&batch) {
            bail!("generator batch {batch} out of 1..={MAX_BATCH}");
        }
        Ok(Self {
            prog,
            netns: pair.tx.path(),
            ctx: xdp_md(frame.len(), pair.tx_ifindex()?),
            frame,
            batch,
        })
    }

    /// Sends from one thread per CPU of `cpus`, each pinned to its CPU and
    /// in the generator namespace (where `ingress_ifindex` is resolved),
    /// until `duration` has passed.
    pub fn run(&self, cpus: &[usize], duration: Duration) -> Result<Sent> {
        self.run_until(cpus, duration, &AtomicBool::new(false))
    }

    /// Like [`Generator::run`], until `duration` has passed or `stop` is set
    /// (checked between test-run calls of [`CHUNK`] frames).
    pub fn run_until(&self, cpus: &[usize], duration: Duration, stop: &AtomicBool) -> Result<Sent> {
        let barrier = Barrier::new(cpus.len());
        let results: Vec<Result<(u64, Instant, Instant)>> = std::thread::scope(|scope| {
            let threads: Vec<_> = cpus
                .iter()
                .map(|&cpu| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        ingress_xdp::sys::in_netns(Some(&self.netns), || {
                            cpu::pin_current_thread(cpu)?;
                            barrier.wait();
                            self.send_until(duration, stop)
                        })
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| bail!("a generator thread panicked"))
                })
                .collect()
        });
        let mut frames = 0;
        let (mut first, mut last) = (None::<Instant>, None::<Instant>);
        for r in results {
            let (n, start, end) = r?;
            frames += n;
            first = Some(first.map_or(start, |f| f.min(start)));
            last = Some(last.map_or(end, |l| l.max(end)));
        }
        // A stopped run sent too little to mean anything.
        crate::interrupt::check()?;
        let (Some(first), Some(last)) = (first, last) else {
            bail!("the generator ran on no CPU");
        };
        Ok(Sent {
            frames,
            wall: last - first,
        })
    }

    fn send_until(&self, duration: Duration, stop: &AtomicBool) -> Result<(u64, Instant, Instant)> {
        let start = Instant::now();
        let mut frames = 0u64;
        while start.elapsed() < duration
            && !stop.load(Ordering::Relaxed)
            && !crate::interrupt::requested()
        {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&self.frame);
            opts.ctx_in = Some(&self.ctx);
            opts.repeat = CHUNK;
            opts.attrs = TestRunAttrs::new().xdp_live_frames(self.batch);
            self.prog
                .test_run(opts)
                .context("BPF_PROG_TEST_RUN in live-frames mode (the generator)")?;
            frames += u64::from(CHUNK);
        }
        Ok((frames, start, Instant::now()))
    }
}

/// A `struct xdp_md` for test_run's `ctx_in`: the frame spans the whole
/// data buffer and "arrived" on `ifindex`, which XDP_TX sends it out of.
/// Without it, frames go to `lo` and vanish.
fn xdp_md(frame_len: usize, ifindex: u32) -> [u8; 24] {
    let fields = [
        0,                // data
        frame_len as u32, // data_end
        0,                // data_meta
        ifindex,          // ingress_ifindex
        0,                // rx_queue_index
        0,                // egress_ifindex
    ];
    let mut ctx = [0u8; 24];
    for (chunk, field) in ctx.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&field.to_ne_bytes());
    }
    ctx
}
