//! What the numbers were measured on: they mean little without it.

use std::fs;

use crate::{cpu, sh::run};

#[derive(Clone, Debug)]
pub struct Machine {
    pub date: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory: String,
    pub os: String,
    pub kernel: String,
    pub bpf_stats: String,
    pub commit: String,
    pub tools: Vec<(String, String)>,
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    pub fn describe() -> Self {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        let first_line = |text: String| text.lines().next().unwrap_or("?").trim().to_string();
        let tool = |cmd: &str| run(cmd).map_or_else(|_| "?".into(), first_line);
        Self {
            date: tool("date -u '+%Y-%m-%d %H:%M UTC'"),
            cpu_model: read("/proc/cpuinfo")
                .lines()
                .find_map(|l| {
                    l.strip_prefix("model name")?
                        .split_once(':')
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_else(|| "?".into()),
            cpus: cpu::count(),
            memory: read("/proc/meminfo")
                .lines()
                .find_map(|l| {
                    let kb: f64 = l
                        .strip_prefix("MemTotal:")?
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .ok()?;
                    Some(format!("{:.0} GiB", kb / (1024.0 * 1024.0)))
                })
                .unwrap_or_else(|| "?".into()),
            os: read("/etc/os-release")
                .lines()
                .find_map(|l| {
                    Some(
                        l.strip_prefix("PRETTY_NAME=")?
                            .trim_matches('"')
                            .to_string(),
                    )
                })
                .unwrap_or_else(|| "?".into()),
            kernel: first_line(read("/proc/sys/kernel/osrelease")),
            bpf_stats: first_line(read("/proc/sys/kernel/bpf_stats_enabled")),
            commit: run(&format!(
                "git -C {} describe --always --dirty 2>/dev/null",
                env!("CARGO_MANIFEST_DIR")
            ))
            .map_or_else(|_| "?".into(), first_line),
            tools: vec![
                (
                    "xdp-tools".into(),
                    tool("dpkg-query -W -f '${Version}' xdp-tools"),
                ),
                ("iptables".into(), tool("iptables -V")),
                ("nftables".into(), tool("nft -v")),
            ],
            load_before: load_average(),
            load_after: String::new(),
        }
    }

    pub fn finish(&mut self) {
        self.load_after = load_average();
    }
}

/// The 1, 5 and 15 minute load averages: how busy the machine was.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
