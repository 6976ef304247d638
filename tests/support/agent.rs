//! The agent under test: `ingress-xdp run` as a real process inside a
//! daemon's network namespace, plus helpers to watch the rules it writes.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ingress_xdp::{
    pins::Pins,
    rules::{RuleEntry, RuleTable},
    spec::Protocol,
};

use super::docker::Dockerd;

/// A running `ingress-xdp run`, killed (SIGKILL) on drop: the pinned state
/// stays for the test to inspect; the pin-dir guard removes it.
pub struct AgentProc {
    bin: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    netns: PathBuf,
    envs: Vec<(String, String)>,
}

impl AgentProc {
    /// Starts the agent in `d`'s namespace, attached to its NIC and sandbox,
    /// reading its engine (unless `extra` names another), with `extra` arguments.
    pub fn start(d: &Dockerd, pins: &Pins, extra: &[&str]) -> Self {
        Self::start_with_env(d, pins, extra, &[])
    }

    /// Like [`AgentProc::start`], with `envs` set in the agent's environment
    /// (e.g. DOCKER_TLS_VERIFY and DOCKER_CERT_PATH). Whatever the test
    /// process has, the agent never inherits DOCKER_HOST, DOCKER_TLS_VERIFY,
    /// DOCKER_CERT_PATH or DOCKER_CONFIG: only `envs` sets them.
    pub fn start_with_env(d: &Dockerd, pins: &Pins, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_bin(Path::new(super::bin()), d, pins, extra, envs)
    }

    /// Like [`AgentProc::start_with_env`], running the `ingress-xdp` binary
    /// at `bin` (e.g. an earlier release from [`super::old_release`]).
    pub fn start_bin(
        bin: &Path,
        d: &Dockerd,
        pins: &Pins,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let mut args = vec![
            "--pin-dir".to_string(),
            pins.dir().display().to_string(),
            "run".into(),
            "--iface".into(),
            super::docker::NIC.into(),
        ];
        if !extra.contains(&"--sbox-netns") {
            args.extend([
                "--sbox-netns".to_string(),
                d.sbox_netns().display().to_string(),
            ]);
        }
        if !extra.contains(&"--local-docker") {
            args.extend(["--local-docker".to_string(), d.host()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = d.root().join(format!("{}.agent.log", super::unique("a")));
        let mut agent = Self {
            bin: bin.to_path_buf(),
            child: None,
            log,
            args,
            netns: d.netns_path(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(&self.bin)
            .args(&self.args)
            .env("INGRESS_XDP_LOG", "info")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_CONFIG")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ingress-xdp run");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log otherwise.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().contains(needle) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "agent log has no {needle:?} after {timeout:?}:\n{}",
            self.log()
        );
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same agent again (same arguments, same pins).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The rules in the pinned table (read in-process, like `list`).
pub fn rules(pins: &Pins) -> Vec<RuleEntry> {
    RuleTable::open(pins)
        .and_then(|t| t.list())
        .unwrap_or_default()
}

/// The (protocol, port) keys the agent owns.
pub fn docker_ports(pins: &Pins) -> Vec<(Protocol, u16)> {
    rules(pins)
        .into_iter()
        .filter(|r| r.origin.service.is_some())
        .map(|r| (r.proto, r.port))
        .collect()
}

/// Runs `change` while polling the rules from the moment it starts; returns
/// how long after the start `ready(rules)` first held (the convergence
/// latency, including the change command's own time).
#[track_caller]
pub fn measure(
    pins: &Pins,
    agent: &AgentProc,
    timeout: Duration,
    change: impl FnOnce(),
    ready: impl Fn(&[RuleEntry]) -> bool + Send + Sync,
) -> Duration {
    let start = Instant::now();
    let seen = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            while start.elapsed() < timeout {
                if ready(&rules(pins)) {
                    return Some(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        });
        change();
        watcher.join().unwrap()
    });
    seen.unwrap_or_else(|| {
        panic!(
            "rules did not converge within {timeout:?}: {:#?}\nagent log:\n{}",
            rules(pins),
            agent.log()
        )
    })
}

/// Waits until `ready(rules)` holds; returns how long that took. Panics
/// with the rules and the agent log on timeout.
#[track_caller]
pub fn wait_rules(
    pins: &Pins,
    agent: &AgentProc,
    timeout: Duration,
    ready: impl Fn(&[RuleEntry]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let now = rules(pins);
        if ready(&now) {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!(
                "rules did not converge within {timeout:?}: {now:#?}\nagent log:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True when exactly `ports` are blocked by the agent.
pub fn docker_blocks(ports: &[(Protocol, u16)]) -> impl Fn(&[RuleEntry]) -> bool + '_ {
    move |rules: &[RuleEntry]| {
        let mut have: Vec<(Protocol, u16)> = rules
            .iter()
            .filter(|r| r.origin.service.is_some())
            .map(|r| (r.proto, r.port))
            .collect();
        let mut want = ports.to_vec();
        have.sort();
        want.sort();
        have == want
    }
}

/// GET /metrics of an agent's `--metrics-addr` from inside `netns`.
#[track_caller]
pub fn scrape(netns: &Path, addr: &str) -> String {
    let addr = addr.parse().expect("a socket address");
    match super::docker::http_get_path(netns, addr, "/metrics", super::traffic::PATIENCE) {
        super::traffic::Reach::Served(body) => body,
        other => panic!("GET http://{addr}/metrics: {other:?}"),
    }
}

/// The value of the sample `series` (name and labels exactly as exposed,
/// e.g. `ingress_xdp_docker_up` or `ingress_xdp_rules{mode="block"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
