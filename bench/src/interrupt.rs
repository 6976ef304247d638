//! Ctrl-C (SIGINT) and SIGTERM stop the benchmark at the next check instead
//! of killing it, so that every namespace, pin and xdp-filter it made is
//! removed on the way out.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Fails once a stop was requested.
pub fn check() -> Result<()> {
    if requested() {
        bail!("interrupted");
    }
    Ok(())
}
