//! The agent's heartbeat file and the health verdict read from it and from
//! the pinned attach points (`ingress-xdp health`, the stack's healthcheck).
//!
//! The agent rewrites `<run dir>/agent.json` every few seconds (and after
//! every sync): its pid, when it last looped, when it last synced, and the
//! deployment problems [`crate::preflight`] found. `health` fails when an
//! attach point is missing, the agent is gone or has not looped within
//! `--max-age`, or a deployment problem stands; a Docker outage is only a
//! warning, since the drops stay.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::attach::Presence;

pub const DEFAULT_RUN_DIR: &str = "/run/ingress-xdp";
const FILE: &str = "agent.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub pid: u32,
    /// Unix seconds of the agent's last loop.
    pub updated_at: u64,
    /// Unix seconds of the last sync that succeeded.
    pub last_sync_ok: Option<u64>,
    /// Where the rules come from (manager, policy feed, local fallback).
    pub source: Option<String>,
    /// The last Docker error while it lasts.
    pub docker_error: Option<String>,
    /// Deployment problems, each a sentence with the fix.
    pub problems: Vec<String>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes atomically (a reader never sees half a file).
pub fn write(dir: &Path, beat: &Heartbeat) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
    fs::write(&tmp, serde_json::to_vec(beat)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path(dir)).with_context(|| format!("renaming into {}", path(dir).display()))
}

pub fn read(dir: &Path) -> Result<Option<Heartbeat>> {
    let file = path(dir);
    match fs::read(&file) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", file.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// How a check of `health` or `doctor` came out, in order of gravity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    /// The exit status `doctor` ends with when this is the worst level.
    pub fn exit_code(self) -> i32 {
        match self {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Fail => 2,
        }
    }

    /// The word that starts a check's line (a failure stands out).
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
    }
}

/// What the agent looks like from outside (pure).
pub struct Observed<'a> {
    pub beat: Option<&'a Heartbeat>,
    /// Whether the heartbeat's pid is a live process.
    pub pid_alive: bool,
    /// Each recorded attach point (name) and what can be seen of it.
    pub points: &'a [(String, Presence)],
    pub now: u64,
    pub max_age: u64,
    pub run_dir: &'a Path,
}

pub fn checks(seen: &Observed) -> Vec<Check> {
    let mut out = Vec::new();
    match seen.points {
        [] => out.push(check("attach points", Level::Fail, "nothing is attached")),
        points => {
            let gone: Vec<&str> = points
                .iter()
                .filter(|(_, p)| *p == Presence::Gone)
                .map(|(name, _)| name.as_str())
                .collect();
            if gone.is_empty() {
                out.push(check(
                    "attach points",
                    Level::Ok,
                    format!("{} attached", points.len()),
                ));
            } else {
                out.push(check(
                    "attach points",
                    Level::Fail,
                    format!(
                        "missing: {} (the agent re-attaches the sandbox; for a NIC run attach)",
                        gone.join(", ")
                    ),
                ));
            }
        }
    }
    let Some(beat) = seen.beat else {
        out.push(check(
            "agent",
            Level::Fail,
            format!(
                "no heartbeat in {}: is `ingress-xdp run` running with this --run-dir?",
                seen.run_dir.display()
            ),
        ));
        return out;
    };
    let age = seen.now.saturating_sub(beat.updated_at);
    if !seen.pid_alive {
        out.push(check(
            "agent",
            Level::Fail,
            format!(
                "process {} is not running (last heartbeat {age} s ago)",
                beat.pid
            ),
        ));
    } else if age > seen.max_age {
        out.push(check(
            "agent",
            Level::Fail,
            format!(
                "stuck: process {} last looped {age} s ago (limit {} s)",
                beat.pid, seen.max_age
            ),
        ));
    } else {
        out.push(check(
            "agent",
            Level::Ok,
            format!(
                "process {} looped {age} s ago; rules from {}",
                beat.pid,
                beat.source.as_deref().unwrap_or("(no sync yet)")
            ),
        ));
    }
    match &beat.docker_error {
        Some(e) => out.push(check(
            "docker",
            Level::Warn,
            format!("unreachable, the drops stay: {e}"),
        )),
        None => out.push(check("docker", Level::Ok, "reachable")),
    }
    if beat.problems.is_empty() {
        out.push(check("deployment", Level::Ok, "no problem found"));
    }
    for problem in &beat.problems {
        out.push(check("deployment", Level::Fail, problem.clone()));
    }
    out
}

pub fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(updated_at: u64) -> Heartbeat {
        Heartbeat {
            pid: 7,
            updated_at,
            last_sync_ok: Some(updated_at),
            source: Some("manager".into()),
            ..Heartbeat::default()
        }
    }

    fn levels(seen: &Observed) -> Vec<(&'static str, Level)> {
        checks(seen)
            .into_iter()
            .map(|c| (c.name, c.level))
            .collect()
    }

    #[test]
    fn verdicts() {
        let points = vec![("nic0".to_string(), Presence::Attached)];
        let b = beat(100);
        let base = Observed {
            beat: Some(&b),
            pid_alive: true,
            points: &points,
            now: 105,
            max_age: 30,
            run_dir: Path::new("/run/x"),
        };
        assert!(
            checks(&base).iter().all(|c| c.level == Level::Ok),
            "{:?}",
            checks(&base)
        );
        let stuck = Observed { now: 200, ..base };
        assert!(levels(&stuck).contains(&("agent", Level::Fail)));
        let dead = Observed {
            pid_alive: false,
            ..stuck
        };
        assert!(
            checks(&dead)
                .iter()
                .any(|c| c.detail.contains("not running"))
        );
        let gone = vec![
            ("nic0".to_string(), Presence::Attached),
            ("sbox/eth1".to_string(), Presence::Gone),
        ];
        let missing = Observed {
            points: &gone,
            now: 105,
            pid_alive: true,
            ..dead
        };
        let c = checks(&missing);
        assert_eq!(c[0].level, Level::Fail);
        assert!(c[0].detail.contains("sbox/eth1"), "{c:?}");
        let none = Observed {
            beat: None,
            points: &[],
            ..missing
        };
        assert_eq!(
            levels(&none),
            vec![("attach points", Level::Fail), ("agent", Level::Fail)]
        );
        let mut troubled = beat(100);
        troubled.problems = vec!["not on the host network".into()];
        troubled.docker_error = Some("connection refused".into());
        let t = Observed {
            beat: Some(&troubled),
            points: &points,
            ..none
        };
        let l = levels(&t);
        assert!(l.contains(&("deployment", Level::Fail)) && l.contains(&("docker", Level::Warn)));
    }

    #[test]
    fn the_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("ixh-{}", std::process::id()));
        assert_eq!(read(&dir).unwrap(), None);
        let b = beat(42);
        write(&dir, &b).unwrap();
        assert_eq!(read(&dir).unwrap(), Some(b));
        fs::remove_dir_all(&dir).unwrap();
    }
}
