//! `health`: the verdict of [`crate::health`] on this node, as a healthcheck.

use std::path::Path;

use super::*;
use crate::health::{self as verdict, Level, Observed};

pub(super) fn cmd_health(pins: &Pins, run_dir: &Path, max_age: u64, json: bool) -> Result<()> {
    sys::require_root()?;
    let points: Vec<(String, Presence)> = Registry::open(pins)
        .and_then(|r| r.points())
        .unwrap_or_default()
        .iter()
        .map(|p| (format!("{} ({})", p.target(), p.hook), p.presence()))
        .collect();
    let beat = verdict::read(run_dir)?;
    let checks = verdict::checks(&Observed {
        pid_alive: beat.as_ref().is_some_and(|b| verdict::pid_alive(b.pid)),
        beat: beat.as_ref(),
        points: &points,
        now: sys::now_secs(),
        max_age,
        run_dir,
    });
    let healthy = checks.iter().all(|c| c.level != Level::Fail);
    if json {
        write_json(&serde_json::json!({ "healthy": healthy, "checks": checks }))?;
    } else {
        for c in &checks {
            let level = c.level.label();
            outln!("{level:<4} {}: {}", c.name, c.detail);
        }
    }
    if !healthy {
        std::process::exit(1);
    }
    Ok(())
}
