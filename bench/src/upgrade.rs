//! Part 5: an in-place upgrade from release 0.1.0 under traffic.
//!
//! Per trial, on fresh namespaces: a veth pair (one rx queue); on the
//! receiving end the 0.1.0 binary's `attach --iface RX --no-sbox --xdp-mode
//! native` and `block 8080`, and an nft netdev ingress rule `tcp dport 8080
//! counter` (no verdict) that sees only what XDP passed: the independent
//! count of blocked packets that got through. The live-frames generator
//! sends 64-byte SYNs to 8080 without a pause from one thread on CPU 0;
//! after a warm-up this build's `attach` (same arguments) is spawned, and the
//! bench polls the pinned link's program id (BPF_OBJ_GET_INFO_BY_FD every
//! 0.2 ms) and the process. Timed from spawn: the new program on the link,
//! and the process's exit. Traffic goes on a while after both; then
//! generator frames sent, frames XDP dropped (veth `xdp_drops`, old and new
//! program alike) and frames the nft counter saw over the whole run are
//! read. Passed must be 0.
//!
//! Before the old binary attaches, a short burst with nothing attached
//! checks that the nft counter does see SYNs that XDP lets through.

use std::{
    fs,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ingress_xdp::bpf;

use crate::{
    counters::Counter,
    frames::{self, BLOCKED_PORT},
    generator::{Generator, Sent},
    old,
    progs::{Reference, XDP_TX},
    reads::{PinDir, cli},
    sh::run_in,
    support,
    topo::{Pair, RX_IP, RxSetup, TX_IP},
};

const FRAME_LEN: usize = 64;
const BATCH: u32 = 64;
/// The generator's CPU; the upgrade runs on the other.
const GENERATOR_CPU: usize = 0;
const POLL: Duration = Duration::from_micros(200);
/// Longest an upgrade may take before the trial fails.
const TIMEOUT: Duration = Duration::from_secs(30);
/// For frames still in the veth ring.
const SETTLE: Duration = Duration::from_millis(50);
const NFT_TABLE: &str = "bwu";

#[derive(Clone, Copy, Debug)]
pub struct UpgradeSettings {
    pub trials: usize,
    /// Traffic before the new `attach` is spawned.
    pub before: Duration,
    /// Traffic after it exited (and the new program is on the link).
    pub after: Duration,
}

#[derive(Clone, Debug)]
pub struct Trial {
    /// Spawn of the new `attach` to the new program on the link.
    pub to_program_ms: f64,
    /// Spawn to the process's exit.
    pub to_exit_ms: f64,
    /// Generator frames over the whole run.
    pub sent: u64,
    /// Frames XDP dropped on the receiving veth.
    pub dropped: u64,
    /// Frames to the blocked port the nft counter saw (XDP passed them).
    pub passed: u64,
    /// The generator's rate over the run, Mpps.
    pub mpps: f64,
    pub old_program: u32,
    pub new_program: u32,
}

#[derive(Clone, Debug)]
pub struct UpgradeResults {
    pub trials: Vec<Trial>,
    /// What the new `attach` printed (first trial).
    pub output: String,
    /// SYNs the nft counter saw in the check burst with nothing attached
    /// (first trial): > 0, or the passed count would prove nothing.
    pub counter_check: u64,
}

pub fn measure(reference: &Reference, settings: UpgradeSettings) -> Result<UpgradeResults> {
    if crate::cpu::count() < 2 {
        bail!("part 5 needs two CPUs (the generator on one, the upgrade on the other)");
    }
    let old = old::binary()?;
    let new = PathBuf::from(support::bin());
    if !new.is_file() {
        bail!(
            "the ingress-xdp binary {} is missing: build it with `cargo build --release -p ingress-xdp` (cargo xtask bench does)",
            new.display()
        );
    }
    let tx_prog = reference.xdp(XDP_TX)?;
    let mut results = UpgradeResults {
        trials: Vec::new(),
        output: String::new(),
        counter_check: 0,
    };
    for i in 0..settings.trials {
        crate::interrupt::check()?;
        let (trial, output, check) = trial(tx_prog, &old, &new, settings)
            .with_context(|| format!("upgrade trial {}", i + 1))?;
        eprintln!(
            "bench: part 5 trial {}: new program after {:.1} ms, attach exited after {:.1} ms; {} sent, {} dropped, {} passed",
            i + 1,
            trial.to_program_ms,
            trial.to_exit_ms,
            trial.sent,
            trial.dropped,
            trial.passed
        );
        if i == 0 {
            results.output = output;
            results.counter_check = check;
        }
        results.trials.push(trial);
    }
    Ok(results)
}

/// The nft rule that counts SYNs to the blocked port XDP let through.
fn install_counter(pair: &Pair) -> Result<Counter> {
    run_in(
        &pair.rx,
        &format!(
            "nft 'add table netdev {NFT_TABLE}; \
             add chain netdev {NFT_TABLE} ingress {{ type filter hook ingress device {} priority 0; }}; \
             add rule netdev {NFT_TABLE} ingress tcp dport {BLOCKED_PORT} counter'",
            pair.rx_if
        ),
    )?;
    Ok(Counter::Nft {
        family: "netdev",
        table: NFT_TABLE.into(),
        chain: "ingress",
    })
}

/// The one link the old `attach` pinned.
fn the_link(dir: &Path) -> Result<PathBuf> {
    let links = dir.join("links");
    let mut found: Vec<PathBuf> = fs::read_dir(&links)
        .with_context(|| format!("reading {}", links.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if found.len() != 1 {
        bail!(
            "expected one pinned link in {}, found {found:?}",
            links.display()
        );
    }
    Ok(found.remove(0))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One trial: (result, what the new attach printed, the counter check).
fn trial(
    tx_prog: &aya::programs::Xdp,
    old: &Path,
    new: &Path,
    settings: UpgradeSettings,
) -> Result<(Trial, String, u64)> {
    let pair = Pair::tagged(
        "bw",
        RxSetup {
            queues: 1,
            threaded: false,
        },
    )?;
    let passed = install_counter(&pair)?;
    let dropped = Counter::XdpDrops;
    let read = |c: &Counter| c.read(&pair.rx, &pair.rx_if);
    let frame = frames::syn_between(
        (pair.tx_mac, TX_IP),
        (pair.rx_mac, RX_IP),
        BLOCKED_PORT,
        FRAME_LEN,
    );
    let generator = Generator::new(tx_prog, &pair, frame, BATCH)?;

    // Nothing attached yet (GRO on): every SYN reaches the nft counter.
    let before_check = read(&passed)?;
    generator.run(&[GENERATOR_CPU], Duration::from_millis(30))?;
    std::thread::sleep(SETTLE);
    let check = read(&passed)?.saturating_sub(before_check);
    if check == 0 {
        bail!(
            "the nft counter saw none of the SYNs sent with nothing attached: it would not see passed ones either"
        );
    }

    let dir = PinDir::new("bwu");
    let args: Vec<String> = [
        "--pin-dir",
        &dir.arg(),
        "attach",
        "--iface",
        &pair.rx_if,
        "--no-sbox",
        "--xdp-mode",
        "native",
    ]
    .map(String::from)
    .into();
    let block: Vec<String> = ["--pin-dir", &dir.arg(), "block", &BLOCKED_PORT.to_string()]
        .map(String::from)
        .into();
    let rx_path = pair.rx.path();
    ingress_xdp::sys::in_netns(Some(&rx_path), || {
        cli(old, &args).context("0.1.0 attach")?;
        cli(old, &block).context("0.1.0 block")
    })?;
    let link_pin = the_link(&dir.path)?;
    let link = bpf::obj_get(&link_pin)?;
    let old_program = bpf::link_info(link.as_fd(), &link_pin)?.prog_id;
    std::thread::sleep(SETTLE);
    let base = (read(&passed)?, read(&dropped)?);

    let stop = AtomicBool::new(false);
    let (sent, timed) = std::thread::scope(|s| {
        let traffic = s.spawn(|| generator.run_until(&[GENERATOR_CPU], TIMEOUT * 2, &stop));
        std::thread::sleep(settings.before);
        let timed = upgrade(new, &args, &rx_path, &link, &link_pin, old_program);
        if timed.is_ok() {
            std::thread::sleep(settings.after);
        }
        stop.store(true, Ordering::Relaxed);
        let sent = traffic
            .join()
            .unwrap_or_else(|_| bail!("the generator thread panicked"));
        (sent, timed)
    });
    let (to_program, to_exit, output) = timed?;
    let sent: Sent = sent?;
    std::thread::sleep(SETTLE);
    let passed_n = read(&passed)?.saturating_sub(base.0);
    let dropped_n = read(&dropped)?.saturating_sub(base.1);
    let new_program = bpf::link_info(link.as_fd(), &link_pin)?.prog_id;
    verify(new, &dir, &rx_path, new_program)?;
    Ok((
        Trial {
            to_program_ms: ms(to_program),
            to_exit_ms: ms(to_exit),
            sent: sent.frames,
            dropped: dropped_n,
            passed: passed_n,
            mpps: sent.per_sec(sent.frames) / 1e6,
            old_program,
            new_program,
        },
        output,
        check,
    ))
}

/// Spawns this build's `attach` from a thread in `netns` and polls until
/// the link holds another program and the process exited: (spawn to new
/// program, spawn to exit, its stdout).
fn upgrade(
    new: &Path,
    args: &[String],
    netns: &Path,
    link: &OwnedFd,
    link_pin: &Path,
    old_program: u32,
) -> Result<(Duration, Duration, String)> {
    let (start, mut child): (Instant, Child) = ingress_xdp::sys::in_netns(Some(netns), || {
        let start = Instant::now();
        let child = Command::new(new)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", new.display()))?;
        Ok((start, child))
    })?;
    let (mut to_program, mut to_exit) = (None, None);
    while to_program.is_none() || to_exit.is_none() {
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the upgrade did not finish within {TIMEOUT:?}");
        }
        if to_program.is_none() && bpf::link_info(link.as_fd(), link_pin)?.prog_id != old_program {
            to_program = Some(start.elapsed());
        }
        if to_exit.is_none() && child.try_wait()?.is_some() {
            to_exit = Some(start.elapsed());
            if to_program.is_none() {
                // Exited: its swap is done or never happens; look once more.
                if bpf::link_info(link.as_fd(), link_pin)?.prog_id != old_program {
                    to_program = to_exit;
                } else {
                    break;
                }
            }
        }
        std::thread::sleep(POLL);
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the new attach failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (Some(to_program), Some(to_exit)) = (to_program, to_exit) else {
        bail!(
            "the new attach exited without replacing program {old_program} on the link: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    };
    Ok((
        to_program,
        to_exit,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// After the upgrade, this build's `status --json` names the program on the
/// link as its own, and `list` still blocks the port.
fn verify(new: &Path, dir: &PinDir, netns: &Path, on_link: u32) -> Result<()> {
    let run = |cmd: &str| -> Result<serde_json::Value> {
        let args: Vec<String> = ["--pin-dir", &dir.arg(), cmd, "--json"]
            .map(String::from)
            .into();
        let out = ingress_xdp::sys::in_netns(Some(netns), || cli(new, &args))?;
        serde_json::from_slice(&out).with_context(|| format!("{cmd} --json is not JSON"))
    };
    let status = run("status")?;
    let build = status["build"].as_str().unwrap_or("?").to_string();
    let points = status["attach_points"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let [point] = &points[..] else {
        bail!(
            "after the upgrade, status shows {} attach points: {status}",
            points.len()
        );
    };
    let (program, point_build) = (
        point["point"]["program_id"].as_u64().unwrap_or(0),
        point["point"]["build"].as_str().unwrap_or("?"),
    );
    if program != u64::from(on_link) || point_build != build {
        bail!(
            "after the upgrade, status says program {program} (build {point_build}) but the link holds {on_link} and this build is {build}"
        );
    }
    let list = run("list")?;
    let blocked = list["rules"].as_array().is_some_and(|rules| {
        rules.iter().any(|r| {
            r["low"].as_u64() == Some(u64::from(BLOCKED_PORT)) && r["proto"].as_str() == Some("tcp")
        })
    });
    if !blocked {
        bail!("after the upgrade, {BLOCKED_PORT}/tcp is not in the rules: {list}");
    }
    Ok(())
}
