//! Commands the benchmark runs, with their output in the error when they
//! fail. Namespaced commands enter only the network namespace (`nsenter
//! --net`, so bpffs stays visible); `sysfs` writes need `ip netns exec`,
//! which also switches /sys/class/net.

use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::support::Netns;

fn checked(what: &str, out: std::io::Result<Output>) -> Result<String> {
    let out = out.with_context(|| format!("spawning `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a shell command line here.
pub fn run(cmd: &str) -> Result<String> {
    checked(cmd, Command::new("sh").arg("-c").arg(cmd).output())
}

/// Runs a shell command line in `ns` (network namespace only).
pub fn run_in(ns: &Netns, cmd: &str) -> Result<String> {
    checked(&format!("{cmd} (in {})", ns.name), Ok(ns.exec_out(cmd)))
}

/// Writes `value` to `path` under /sys/class/net of `ns`.
pub fn write_sysfs(ns: &Netns, path: &str, value: &str) -> Result<()> {
    run(&format!(
        "ip netns exec {} sh -c 'echo {value} > /sys/class/net/{path}'",
        ns.name
    ))
    .map(drop)
}

/// Fails with a clear message when a tool the benchmark drives is missing.
pub fn require_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| run(&format!("command -v {tool}")).is_err())
        .map(|(tool, package)| format!("{tool} (Debian package {package})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing: {}; `cargo xtask bench` installs them",
            missing.join(", ")
        );
    }
    Ok(())
}
