//! CPU placement and accounting: pinning threads (ours and the kernel's
//! NAPI kthread) and reading how long a task ran.

use std::fs;

use anyhow::{Context, Result, bail};

/// CPUs this machine has online.
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn set_affinity(pid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in bounds
    // for cpu < CPU_SETSIZE.
    let ret = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning task {pid} to CPU {cpu}"));
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    set_affinity(0, cpu)
}

/// Pins task `pid` (e.g. a kthread) to `cpu`.
pub fn pin_task(pid: u32, cpu: usize) -> Result<()> {
    set_affinity(pid as libc::pid_t, cpu)
}

/// Nanoseconds task `pid` has run on a CPU (first field of its schedstat).
pub fn run_time_ns(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected {path}: {text:?}"))
}

/// The NAPI kthread of `iface` (threaded NAPI, one receive queue): the
/// kernel names it `napi/<iface>-<id>`, cut to 15 characters.
pub fn napi_kthread(iface: &str) -> Result<u32> {
    let prefix: String = format!("napi/{iface}-").chars().take(15).collect();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if fs::read_to_string(entry.path().join("comm"))
            .is_ok_and(|c| c.trim_end().starts_with(&prefix))
        {
            found.push(pid);
        }
    }
    match found[..] {
        [pid] => Ok(pid),
        [] => bail!("no NAPI kthread for {iface} (is threaded NAPI on and the device up?)"),
        _ => bail!("several NAPI kthreads for {iface} ({found:?}); expected one receive queue"),
    }
}
