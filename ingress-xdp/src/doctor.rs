//! `doctor`: whether this node can run ingress-xdp and whether what runs is
//! sound, as one verdict per check with what to do about it.
//!
//! This module owns the judgement: [`gather`] reads the facts at the edges
//! (bpf(2) probes, /proc, the mount table, the pin directory, netlink, the
//! Docker API, the agent's heartbeat) into an [`Observed`], and the pure
//! [`checks`] turns that into [`Check`]s (unit-tested here; every failing
//! check is also provoked for real by tests/doctor.rs). Nothing here changes
//! the node: it only reads.
//!
//! [`crate::health`] is the narrower healthcheck of a running agent; the
//! doctor is for an operator setting a node up or asking why it misbehaves.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ingress_xdp_common::LAYOUT_VERSION;
use serde::Serialize;

use crate::{
    attach::{AttachedMode, Hook, Presence, Registry},
    bpf, docker,
    health::{self, Heartbeat},
    mountinfo::{self, Mount},
    netlink,
    pins::{self, Found, Pins},
    preflight::{self, Propagation},
    rules::{Mode, RuleTable},
    sys,
};

pub use crate::health::Level;

/// One verdict: what was found and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub found: String,
    /// Empty when nothing needs doing.
    pub fix: String,
}

fn ok(name: &'static str, found: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Ok,
        found: found.into(),
        fix: String::new(),
    }
}

fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Warn,
        found: found.into(),
        fix: fix.into(),
    }
}

fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        level: Level::Fail,
        ..warn(name, found, fix)
    }
}

/// The worst level among `checks` (ok when there are none).
pub fn worst(checks: &[Check]) -> Level {
    checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok)
}

/// Capability bits (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

/// Drivers with native (driver-mode) XDP in the kernels we run on. A
/// generic attach on one of these costs an skb per packet for nothing.
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "veth",
    "virtio_net",
    "tun",
    "ixgbe",
    "ixgbevf",
    "i40e",
    "ice",
    "igb",
    "igc",
    "mlx4_en",
    "mlx5_core",
    "bnxt_en",
    "nfp",
    "qede",
    "ena",
    "gve",
    "hv_netvsc",
    "sfc",
    "mvneta",
    "mvpp2",
    "stmmac",
    "fec",
    "bonding",
];

/// The kernel, as probed.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// Loading a trivial XDP program: whether it was JIT-compiled, or the
    /// kernel's refusal.
    pub bpf_load: Result<bool, String>,
    /// /proc/sys/net/core/bpf_jit_enable, trimmed; None when unreadable.
    pub jit_enable: Option<String>,
    /// /sys/kernel/btf/vmlinux exists.
    pub btf: bool,
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            kernel: Kernel {
                release: String::new(),
                bpf_load: Ok(true),
                jit_enable: None,
                btf: true,
            },
            bpffs_mounts: vec![PathBuf::from(sys::BPFFS_ROOT)],
            cap_eff: Some(u64::MAX),
            pin_dir: PathBuf::from(pins::DEFAULT_PIN_DIR),
            pin_state: PinState::Found(Found::Current),
            this_build: String::new(),
            docker_host: docker::DEFAULT_LOCAL_DOCKER.into(),
            docker: Ok(SwarmSeen::default()),
            sbox: PathBuf::from("/var/run/docker/netns/ingress_sbox"),
            sbox_state: SboxState::Missing,
            netns_dir_propagation: None,
            points: Vec::new(),
            ephemeral: None,
            blocked: Vec::new(),
            beat: None,
            agent_alive: false,
            now: 0,
            max_age: 30,
            run_dir: PathBuf::from(health::DEFAULT_RUN_DIR),
        }
    }
}

/// What the pin directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinState {
    /// The directory does not exist.
    Missing,
    /// It exists but not on bpffs.
    NotBpffs,
    /// It cannot be read (the error).
    Unreadable(String),
    Found(Found),
    /// The current layout, but a map does not match it (the error).
    Broken(String),
}

/// The local engine's swarm membership.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmSeen {
    pub engine_version: String,
    /// Swarm.LocalNodeState: active, inactive, pending, locked, error.
    pub state: String,
    /// Swarm.ControlAvailable: a manager.
    pub manager: bool,
}

/// The sandbox namespace file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SboxState {
    Missing,
    /// The file exists but setns into it fails (the error).
    NotEnterable(String),
    /// Entered; the interface holding its default route, if any.
    Entered(Option<String>),
}

/// One recorded attach point and what can be seen of its interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PointSeen {
    /// e.g. "eth1 in /var/run/docker/netns/ingress_sbox (xdp)".
    pub name: String,
    pub iface: String,
    pub hook: Option<Hook>,
    pub mode: Option<AttachedMode>,
    pub presence: Option<Presence>,
    pub build: String,
    /// The interface's driver (ethtool -i), when it could be read.
    pub driver: Option<String>,
    /// Programs on the same interface that no attach point of this pin
    /// directory holds.
    pub foreign: Vec<OtherProgram>,
}

/// A program on an attach point's interface that is not ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtherProgram {
    /// On the XDP hook (any mode, bpf_link or netlink).
    Xdp(u32),
    /// On TCX ingress.
    Tcx(u32),
    /// A classic `tc filter ... bpf` (cls_bpf) at ingress; 0 for classic
    /// BPF bytecode, which has no program id.
    TcFilter(u32),
}

impl std::fmt::Display for OtherProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OtherProgram::Xdp(id) => write!(f, "xdp program {id}"),
            OtherProgram::Tcx(id) => write!(f, "tc program {id}"),
            OtherProgram::TcFilter(0) => write!(f, "a tc filter of classic BPF bytecode"),
            OtherProgram::TcFilter(id) => write!(f, "tc filter program {id} (cls_bpf)"),
        }
    }
}

impl OtherProgram {
    fn id(self) -> u32 {
        match self {
            OtherProgram::Xdp(id) | OtherProgram::Tcx(id) | OtherProgram::TcFilter(id) => id,
        }
    }
}

/// Everything [`checks`] judges, read by [`gather`].
#[derive(Clone, Debug)]
pub struct Observed {
    pub kernel: Kernel,
    /// Mount points of every bpffs mount in the mount table.
    pub bpffs_mounts: Vec<PathBuf>,
    /// CapEff of this process; None when /proc/self/status is unreadable.
    pub cap_eff: Option<u64>,
    pub pin_dir: PathBuf,
    pub pin_state: PinState,
    /// [`pins::build`] of this binary.
    pub this_build: String,
    pub docker_host: String,
    /// The local engine's answer, or why there was none.
    pub docker: Result<SwarmSeen, String>,
    pub sbox: PathBuf,
    pub sbox_state: SboxState,
    /// Propagation of the mount at the sandbox's directory; None when that
    /// directory is not a mount point.
    pub netns_dir_propagation: Option<Propagation>,
    pub points: Vec<PointSeen>,
    /// net.ipv4.ip_local_port_range.
    pub ephemeral: Option<(u16, u16)>,
    /// Blocking rules: (spec as shown, low, high).
    pub blocked: Vec<(String, u16, u16)>,
    pub beat: Option<Heartbeat>,
    pub agent_alive: bool,
    pub now: u64,
    pub max_age: u64,
    pub run_dir: PathBuf,
}

/// `(major, minor)` of a kernel release such as `6.18.0-1-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// CapEff (hex) from the text of /proc/<pid>/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

pub fn checks(seen: &Observed) -> Vec<Check> {
    let mut out = kernel_checks(&seen.kernel);
    out.push(bpffs_check(&seen.bpffs_mounts));
    out.push(privileges_check(seen.cap_eff));
    out.push(pin_dir_check(seen));
    out.extend(build_checks(seen));
    out.push(docker_check(seen));
    out.push(sandbox_check(seen));
    out.push(netns_dir_check(seen));
    out.extend(point_checks(&seen.points));
    out.push(ports_check(seen));
    out.extend(agent_checks(seen));
    out
}

fn kernel_checks(k: &Kernel) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match &k.bpf_load {
        Ok(_) => ok("bpf(2)", "this process can load an XDP program"),
        Err(e) => fail(
            "bpf(2)",
            format!("loading a trivial XDP program failed: {e}"),
            "run as root with CAP_BPF (or CAP_SYS_ADMIN), outside a seccomp profile that blocks \
             bpf(2), on a kernel with CONFIG_BPF_SYSCALL",
        ),
    });
    out.push(match (&k.bpf_load, k.jit_enable.as_deref()) {
        (Ok(true), _) => ok("bpf jit", "the kernel JIT-compiles programs"),
        (_, Some("1") | Some("2")) => ok("bpf jit", "net.core.bpf_jit_enable is on"),
        (Ok(false), v) => warn(
            "bpf jit",
            format!(
                "programs are interpreted (net.core.bpf_jit_enable {}), several times slower",
                v.unwrap_or("unreadable here")
            ),
            "sysctl -w net.core.bpf_jit_enable=1",
        ),
        (_, Some(v)) => warn(
            "bpf jit",
            format!(
                "net.core.bpf_jit_enable is {v}: programs are interpreted, several times slower"
            ),
            "sysctl -w net.core.bpf_jit_enable=1",
        ),
        (Err(_), None) => warn(
            "bpf jit",
            "/proc/sys/net/core/bpf_jit_enable cannot be read (it exists only in the initial \
             network namespace)",
            "run doctor in the host's network namespace, and check that the kernel has \
             CONFIG_BPF_JIT",
        ),
    });
    out.push(if k.btf {
        ok("btf", "/sys/kernel/btf/vmlinux is there")
    } else {
        warn(
            "btf",
            "/sys/kernel/btf/vmlinux is missing: the verifier's messages and bpftool say less",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF",
        )
    });
    let hooks = "xdp, tcx, bpf_link";
    out.push(match kernel_version(&k.release) {
        Some(v) if v >= (6, 6) => ok(
            hooks,
            format!(
                "kernel {}: XDP and TCX attach through pinnable links",
                k.release
            ),
        ),
        Some(v) if v >= (5, 9) => warn(
            hooks,
            format!(
                "kernel {}: XDP links, but no TCX (needs 6.6): --hook tc cannot be pinned",
                k.release
            ),
            "use the xdp hook (the default), or a kernel >= 6.6 for --hook tc",
        ),
        Some(_) => fail(
            hooks,
            format!(
                "kernel {}: no XDP bpf_link (needs 5.9), so nothing stays attached",
                k.release
            ),
            "upgrade the kernel to 5.9 or newer (6.6 or newer for --hook tc)",
        ),
        None => warn(
            hooks,
            format!("cannot tell the kernel version from {:?}", k.release),
            "XDP links need 5.9, TCX needs 6.6",
        ),
    });
    out
}

fn bpffs_check(mounts: &[PathBuf]) -> Check {
    let root = Path::new(sys::BPFFS_ROOT);
    let at_root = mounts.iter().filter(|m| *m == root).count();
    match at_root {
        1 => ok("bpffs", format!("mounted once at {}", root.display())),
        0 => warn(
            "bpffs",
            format!(
                "not mounted at {}: nothing can be pinned there yet",
                root.display()
            ),
            format!(
                "`attach` and `run` mount it; or: mount -t bpf bpf {}",
                root.display()
            ),
        ),
        n => warn(
            "bpffs",
            format!(
                "mounted {n} times at {}: the top mount hides the pins made under the others, \
                 so the agent and the CLI may see different state",
                root.display()
            ),
            format!(
                "umount {} until it is mounted once (check with: findmnt {0})",
                root.display()
            ),
        ),
    }
}

fn privileges_check(cap_eff: Option<u64>) -> Check {
    let name = "privileges";
    let Some(caps) = cap_eff else {
        return warn(
            name,
            "CapEff cannot be read from /proc/self/status",
            "run as root with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN",
        );
    };
    let bpf = has(caps, CAP_BPF) || has(caps, CAP_SYS_ADMIN);
    let missing: Vec<&str> = [
        (!bpf).then_some("CAP_BPF (or CAP_SYS_ADMIN): load programs and maps"),
        (!has(caps, CAP_NET_ADMIN)).then_some("CAP_NET_ADMIN: attach to interfaces"),
        (!has(caps, CAP_SYS_ADMIN)).then_some("CAP_SYS_ADMIN: setns into ingress_sbox"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let held = format!("CapEff {caps:016x}");
    if missing.is_empty() {
        ok(name, format!("{held}: BPF, NET_ADMIN and SYS_ADMIN held"))
    } else {
        fail(
            name,
            format!("{held}; missing {}", missing.join("; ")),
            "run as root; in a service: cap_add NET_ADMIN and SYS_ADMIN (engines >= 26 also \
             take BPF and PERFMON)",
        )
    }
}

fn pin_dir_check(seen: &Observed) -> Check {
    let name = "pin directory";
    let dir = seen.pin_dir.display();
    match &seen.pin_state {
        PinState::Missing => warn(
            name,
            format!("{dir} does not exist: nothing is filtered"),
            "run `ingress-xdp attach` (or start the agent), or pass the --pin-dir it used",
        ),
        PinState::NotBpffs => fail(
            name,
            format!("{dir} is not on a bpf filesystem: pins cannot live there"),
            format!("pick a directory under {}", sys::BPFFS_ROOT),
        ),
        PinState::Unreadable(e) => fail(
            name,
            format!("{dir} cannot be read: {e}"),
            "run as root with CAP_BPF (or CAP_SYS_ADMIN)",
        ),
        PinState::Broken(e) => fail(
            name,
            format!("{dir} holds layout {LAYOUT_VERSION} but a map does not match it: {e}"),
            "`ingress-xdp detach --purge` and attach again (the rules are lost), or use the \
             build that made it",
        ),
        PinState::Found(Found::Nothing) => warn(
            name,
            format!("{dir} holds no state: nothing is filtered"),
            "run `ingress-xdp attach` or start the agent",
        ),
        PinState::Found(Found::Current) => ok(
            name,
            format!("{dir} holds layout {LAYOUT_VERSION}, the one this build uses"),
        ),
        PinState::Found(Found::Older(v)) => warn(
            name,
            format!("{dir} holds layout {v}, older than this build's {LAYOUT_VERSION}"),
            "run `ingress-xdp attach` (or restart the agent) to migrate it in place; the drops \
             stay on meanwhile",
        ),
        PinState::Found(Found::Newer(v)) => fail(
            name,
            format!(
                "{dir} holds layout {v}, newer than this build understands ({LAYOUT_VERSION}): \
                 this binary will not touch it"
            ),
            "use the newer ingress-xdp binary on this node (or its `detach --purge`)",
        ),
    }
}

fn build_checks(seen: &Observed) -> Vec<Check> {
    let others: Vec<String> = seen
        .points
        .iter()
        .filter(|p| !p.build.is_empty() && p.build != seen.this_build)
        .map(|p| format!("{} runs {}", p.name, p.build))
        .collect();
    if seen.points.is_empty() {
        return Vec::new();
    }
    vec![if others.is_empty() {
        ok(
            "programs",
            format!("every point runs this build {}", seen.this_build),
        )
    } else {
        warn(
            "programs",
            format!("{}; this is {}", others.join(", "), seen.this_build),
            "run `ingress-xdp attach` (or restart the agent) with this build: it swaps its \
             program into each link in place",
        )
    }]
}

fn docker_check(seen: &Observed) -> Check {
    let name = "docker";
    match &seen.docker {
        Err(e) => fail(
            name,
            format!("no answer from {}: {e}", seen.docker_host),
            "start dockerd, or pass --local-docker (or INGRESS_XDP_LOCAL_DOCKER) naming this node's engine; \
             without it the agent cannot follow the services (the drops stay)",
        ),
        Ok(s) if s.state != "active" => warn(
            name,
            format!(
                "engine {} reachable at {}, but not in a swarm (state {:?})",
                s.engine_version, seen.docker_host, s.state
            ),
            "the routing mesh exists only on swarm nodes: docker swarm init, or join",
        ),
        Ok(s) => ok(
            name,
            format!(
                "engine {} at {}: swarm {}",
                s.engine_version,
                seen.docker_host,
                if s.manager { "manager" } else { "worker" }
            ),
        ),
    }
}

fn sandbox_check(seen: &Observed) -> Check {
    let name = "sandbox";
    let path = seen.sbox.display();
    let in_swarm = matches!(&seen.docker, Ok(s) if s.state == "active");
    match &seen.sbox_state {
        SboxState::Missing if in_swarm => fail(
            name,
            format!("the node is in a swarm but there is no ingress_sbox at {path}"),
            preflight::sbox_missing_problem(&seen.sbox),
        ),
        SboxState::Missing => warn(
            name,
            format!("no ingress_sbox at {path}: the routing mesh's sandbox is not filtered"),
            "on a swarm node in a container, bind-mount Docker's netns directory with \
             propagation rslave; elsewhere pass --sbox-netns <exec root>/netns/ingress_sbox",
        ),
        SboxState::NotEnterable(e) => fail(
            name,
            format!("{path} exists but is not a namespace this process can enter: {e}"),
            "an empty file here means the netns directory was bound privately before Docker \
             made the sandbox: make it a shared mount on the host and rebind it rslave",
        ),
        SboxState::Entered(Some(iface)) => ok(
            name,
            format!("ingress_sbox at {path}, default route on {iface}"),
        ),
        SboxState::Entered(None) => warn(
            name,
            format!("ingress_sbox at {path} has no default route, so no interface to attach to"),
            "pass --sbox-iface (usually eth1, on docker_gwbridge)",
        ),
    }
}

fn netns_dir_check(seen: &Observed) -> Check {
    let name = "netns directory";
    let Some(dir) = seen.sbox.parent() else {
        return ok(name, "no directory to check");
    };
    match seen.netns_dir_propagation {
        Some(Propagation::Private) => fail(
            name,
            format!("{} is a private mount", dir.display()),
            preflight::netns_mount_problem(
                &[Mount {
                    root: "/".into(),
                    mount_point: dir.to_path_buf(),
                    propagation: Propagation::Private,
                    fstype: String::new(),
                }],
                dir,
            )
            .unwrap_or_default(),
        ),
        Some(p) => ok(
            name,
            format!(
                "{} is a {} mount: sandboxes Docker makes later show up here",
                dir.display(),
                if p == Propagation::Shared {
                    "shared"
                } else {
                    "slave"
                }
            ),
        ),
        None if seen.sbox_state == SboxState::Missing => ok(
            name,
            format!(
                "{} is not a mount point (and holds no sandbox)",
                dir.display()
            ),
        ),
        None => warn(
            name,
            format!(
                "{} is not a mount point: an agent in a global service (bind with rslave) \
                 would miss sandboxes Docker makes after it started",
                dir.display()
            ),
            format!(
                "before dockerd starts: mount --bind {0} {0} && mount --make-shared {0} (not \
                 needed for the systemd unit)",
                dir.display()
            ),
        ),
    }
}

fn point_checks(points: &[PointSeen]) -> Vec<Check> {
    let mut out = Vec::new();
    if points.is_empty() {
        out.push(warn(
            "attach points",
            "nothing is attached",
            "run `ingress-xdp attach` or start the agent",
        ));
        return out;
    }
    for p in points {
        out.push(match p.presence {
            Some(Presence::Attached) => ok("attach point", format!("{}: attached", p.name)),
            Some(Presence::Gone) | None => fail(
                "attach point",
                format!("{}: the interface or its namespace is gone", p.name),
                "run `ingress-xdp attach` (the agent re-attaches the sandbox by itself)",
            ),
            Some(Presence::Unknown) => warn(
                "attach point",
                format!("{}: its namespace is not visible from here", p.name),
                "run doctor where the agent runs (the same mount namespace)",
            ),
        });
        let native_driver = p
            .driver
            .as_deref()
            .filter(|d| NATIVE_XDP_DRIVERS.contains(d));
        if let (Some(Hook::Xdp), Some(AttachedMode::Generic), Some(driver)) =
            (p.hook, p.mode, native_driver)
        {
            out.push(warn(
                "xdp mode",
                format!(
                    "{}: generic XDP, but its driver {driver} runs XDP natively (faster, \
                     before an skb exists)",
                    p.name
                ),
                format!(
                    "ingress-xdp detach, then attach with --xdp-mode native (or auto) on {}",
                    p.iface
                ),
            ));
        }
        if !p.foreign.is_empty() {
            let list: Vec<String> = p.foreign.iter().map(ToString::to_string).collect();
            out.push(warn(
                "other programs",
                format!(
                    "{}: {} on the same interface, not attached from this pin directory",
                    p.name,
                    list.join(", ")
                ),
                format!(
                    "find its owner (bpftool prog show id N; bpftool link; tc filter show dev {} \
                     ingress): an XDP program runs before ours and may pass or redirect what we \
                     should drop",
                    p.iface
                ),
            ));
        }
    }
    out
}

fn ports_check(seen: &Observed) -> Check {
    let name = "ports";
    let Some((low, high)) = seen.ephemeral else {
        return warn(
            name,
            "net.ipv4.ip_local_port_range cannot be read",
            "check /proc/sys/net/ipv4/ip_local_port_range",
        );
    };
    let inside: Vec<&str> = seen
        .blocked
        .iter()
        .filter(|(_, l, h)| *l <= high && *h >= low)
        .map(|(spec, ..)| spec.as_str())
        .collect();
    if inside.is_empty() {
        ok(
            name,
            format!(
                "{} blocking rules, none inside the ephemeral range {low}-{high}",
                seen.blocked.len()
            ),
        )
    } else {
        warn(
            name,
            format!(
                "blocked inside the ephemeral range {low}-{high}: {}; replies to this node's \
                 own outgoing connections from those ports are dropped too",
                inside.join(", ")
            ),
            format!(
                "move the ephemeral range (sysctl -w net.ipv4.ip_local_port_range=\"A B\") or \
                 reserve the ports (sysctl -w net.ipv4.ip_local_reserved_ports={})",
                inside
                    .join(",")
                    .replace("/tcp", "")
                    .replace("/udp", "")
                    .replace("/sctp", "")
            ),
        )
    }
}

fn agent_checks(seen: &Observed) -> Vec<Check> {
    let Some(beat) = &seen.beat else {
        return vec![warn(
            "agent",
            format!(
                "no heartbeat in {}: no agent runs, so the rules change only by hand",
                seen.run_dir.display()
            ),
            "start `ingress-xdp run` (systemd unit or global service), or pass the --run-dir \
             it uses",
        )];
    };
    let age = seen.now.saturating_sub(beat.updated_at);
    let mut out = vec![if !seen.agent_alive {
        fail(
            "agent",
            format!("process {} is gone (last heartbeat {age} s ago)", beat.pid),
            "restart the agent (systemctl restart ingress-xdp, or check the service's tasks)",
        )
    } else if age > seen.max_age {
        fail(
            "agent",
            format!(
                "process {} is stuck: last heartbeat {age} s ago (limit {} s)",
                beat.pid, seen.max_age
            ),
            "look at its log; restart it",
        )
    } else {
        ok(
            "agent",
            format!(
                "process {} looped {age} s ago; rules from {}",
                beat.pid,
                beat.source.as_deref().unwrap_or("(no sync yet)")
            ),
        )
    }];
    for problem in &beat.problems {
        out.push(fail(
            "deployment",
            problem.clone(),
            "see the sentence's fix",
        ));
    }
    if let Some(e) = &beat.docker_error {
        out.push(warn(
            "agent docker",
            format!("the agent cannot reach Docker: {e}"),
            "the drops stay; fix the engine or the agent's --local-docker/--docker-host",
        ));
    }
    let worker = matches!(&seen.docker, Ok(s) if s.state == "active" && !s.manager);
    let source = beat.source.as_deref().unwrap_or_default();
    if worker && source.contains("fallback") {
        out.push(warn(
            "feed",
            "this worker follows its local ingress view: the managers' policy feed does not \
             answer (or is off), so labels and node constraints are not applied",
            "check that agents run on the managers and that the feed port (--feed-port, 7949) \
             is open between nodes",
        ));
    } else if worker && source.contains("feed") {
        out.push(ok("feed", format!("rules from {source}")));
    }
    out
}

/// Where to look, from the command line.
pub struct Where<'a> {
    pub pins: &'a Pins,
    pub docker_host: &'a str,
    pub sbox: &'a Path,
    pub run_dir: &'a Path,
    pub max_age: u64,
}

/// Reads every fact [`checks`] judges. Failures to read become findings.
pub fn gather(at: &Where) -> Observed {
    let mounts = mountinfo::read();
    let pin_state = pin_state(at.pins);
    let points = if pin_state == PinState::Found(Found::Current) {
        points_seen(at.pins)
    } else {
        Vec::new()
    };
    let blocked = RuleTable::open(at.pins)
        .and_then(|t| t.ranges())
        .map(|ranges| {
            ranges
                .iter()
                .filter(|r| r.mode == Mode::Block)
                .map(|r| (r.spec().to_string(), r.low, r.high))
                .collect()
        })
        .unwrap_or_default();
    let beat = health::read(at.run_dir).ok().flatten();
    Observed {
        kernel: Kernel {
            release: sys::kernel_release().unwrap_or_default(),
            bpf_load: bpf::probe_xdp_load().map_err(|e| format!("{e:#}")),
            jit_enable: jit_enable(),
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        },
        bpffs_mounts: mounts
            .iter()
            .filter(|m| m.fstype == "bpf")
            .map(|m| m.mount_point.clone())
            .collect(),
        cap_eff: fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_cap_eff(&s)),
        pin_dir: at.pins.dir().to_path_buf(),
        pin_state,
        this_build: pins::build().to_string(),
        docker_host: at.docker_host.to_string(),
        docker: swarm_seen(at.docker_host).map_err(|e| format!("{e:#}")),
        sbox: at.sbox.to_path_buf(),
        sbox_state: sbox_state(at.sbox),
        netns_dir_propagation: preflight::netns_dir_of(at.sbox)
            .and_then(|dir| preflight::mount_propagation(&mounts, &dir)),
        points,
        ephemeral: sys::ephemeral_port_range(),
        blocked,
        agent_alive: beat.as_ref().is_some_and(|b| health::pid_alive(b.pid)),
        beat,
        now: sys::now_secs(),
        max_age: at.max_age,
        run_dir: at.run_dir.to_path_buf(),
    }
}

/// net.core.bpf_jit_enable (the kernel shows it only in the initial network
/// namespace; the probe's JIT answer counts first).
fn jit_enable() -> Option<String> {
    fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
        .ok()
        .map(|s| s.trim().to_string())
}

fn pin_state(pins: &Pins) -> PinState {
    let dir = pins.dir();
    if let Err(e) = fs::read_dir(dir) {
        return match e.kind() {
            std::io::ErrorKind::NotFound => PinState::Missing,
            _ => PinState::Unreadable(format!("listing {}: {e}", dir.display())),
        };
    }
    if !sys::is_bpffs(dir) {
        return PinState::NotBpffs;
    }
    match pins.found() {
        Found::Current => match pins.check_maps(&pins.layout_dir()) {
            Ok(()) => PinState::Found(Found::Current),
            Err(e) if is_eperm(&e) => PinState::Unreadable(format!("{e:#}")),
            Err(e) => PinState::Broken(format!("{e:#}")),
        },
        found => PinState::Found(found),
    }
}

fn is_eperm(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|e| e.raw_os_error())
            .is_some_and(|n| n == libc::EPERM || n == libc::EACCES)
            || e.to_string().contains("Operation not permitted")
    })
}

fn points_seen(pins: &Pins) -> Vec<PointSeen> {
    let Ok(points) = Registry::open(pins).and_then(|r| r.points()) else {
        return Vec::new();
    };
    // The programs this pin directory's links hold now (a swap changes the
    // id the registry recorded only after it is done).
    let ours: Vec<u32> = points
        .iter()
        .flat_map(|p| {
            let live = bpf::pinned_link_info(&pins.link(p.id)).map(|l| l.prog_id);
            [Some(p.program_id), live.ok()]
        })
        .flatten()
        .collect();
    points
        .iter()
        .map(|p| {
            let presence = p.presence();
            let netns = match p.netns_here() {
                crate::attach::NetnsHere::At(path) => Some(path),
                _ => None,
            };
            let (driver, foreign) = if presence == Presence::Attached {
                sys::in_netns(netns.as_deref(), || {
                    Ok(interface_programs(&p.iface, p.ifindex, &ours))
                })
                .unwrap_or_default()
            } else {
                (None, Vec::new())
            };
            PointSeen {
                name: format!("{} ({})", p.target(), p.hook),
                iface: p.iface.clone(),
                hook: Some(p.hook),
                mode: p.mode,
                presence: Some(presence),
                build: p.build.clone(),
                driver,
                foreign,
            }
        })
        .collect()
}

/// The driver of an interface and the programs on it that are not `ours`,
/// in the calling thread's namespace.
fn interface_programs(
    iface: &str,
    ifindex: u32,
    ours: &[u32],
) -> (Option<String>, Vec<OtherProgram>) {
    let driver = sys::driver_name(iface).ok();
    let xdp = netlink::xdp_prog_ids(ifindex).unwrap_or_default();
    let tcx = bpf::tcx_ingress_prog_ids(ifindex).unwrap_or_default();
    let filters = netlink::tc_filter_prog_ids(ifindex).unwrap_or_default();
    let foreign = xdp
        .into_iter()
        .map(OtherProgram::Xdp)
        .chain(tcx.into_iter().map(OtherProgram::Tcx))
        .chain(filters.into_iter().map(OtherProgram::TcFilter))
        .filter(|p| p.id() == 0 || !ours.contains(&p.id()))
        .collect();
    (driver, foreign)
}

fn sbox_state(path: &Path) -> SboxState {
    if !path.exists() {
        return SboxState::Missing;
    }
    match sys::in_netns(Some(path), || Ok(sys::default_route_iface().ok())) {
        Ok(iface) => SboxState::Entered(iface),
        Err(e) => SboxState::NotEnterable(format!("{e:#}")),
    }
}

/// The local engine's version and swarm state (GET /version, GET /info).
fn swarm_seen(host: &str) -> Result<SwarmSeen> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let engine = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let docker = docker::connect(host).await?;
            let info = docker.info().await.context("GET /info")?;
            anyhow::Ok(info)
        })
        .await
        .with_context(|| format!("no answer from {host} within 5 s"))??;
        let swarm = engine.swarm.unwrap_or_default();
        Ok(SwarmSeen {
            engine_version: engine.server_version.unwrap_or_default(),
            state: swarm
                .local_node_state
                .map(|s| s.to_string())
                .unwrap_or_default(),
            manager: swarm.control_available.unwrap_or(false),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node where every check passes.
    fn healthy() -> Observed {
        Observed {
            kernel: Kernel {
                release: "6.18.0-1-amd64".into(),
                bpf_load: Ok(true),
                jit_enable: None,
                btf: true,
            },
            this_build: "0.2.0+abc".into(),
            docker: Ok(SwarmSeen {
                engine_version: "26.1.5".into(),
                state: "active".into(),
                manager: true,
            }),
            sbox_state: SboxState::Entered(Some("eth1".into())),
            netns_dir_propagation: Some(Propagation::Shared),
            points: vec![PointSeen {
                name: "eth1 in /x (xdp)".into(),
                iface: "eth1".into(),
                hook: Some(Hook::Xdp),
                mode: Some(AttachedMode::Native),
                presence: Some(Presence::Attached),
                build: "0.2.0+abc".into(),
                driver: Some("veth".into()),
                foreign: Vec::new(),
            }],
            ephemeral: Some((32768, 60999)),
            blocked: vec![("8080/tcp".into(), 8080, 8080)],
            beat: Some(Heartbeat {
                pid: 7,
                updated_at: 100,
                source: Some("a manager's API".into()),
                ..Heartbeat::default()
            }),
            agent_alive: true,
            now: 105,
            ..Observed::default()
        }
    }

    fn level_of(seen: &Observed, name: &str) -> Vec<Level> {
        checks(seen)
            .into_iter()
            .filter(|c| c.name == name)
            .map(|c| c.level)
            .collect()
    }

    #[test]
    fn a_healthy_node_is_all_ok() {
        let c = checks(&healthy());
        assert_eq!(worst(&c), Level::Ok, "{c:#?}");
        assert!(c.iter().all(|c| c.fix.is_empty()), "{c:#?}");
    }

    #[test]
    fn every_problem_has_its_level_and_a_fix() {
        type Provoke = Box<dyn Fn(&mut Observed)>;
        let cases: Vec<(&str, Level, Provoke)> = vec![
            (
                "bpf(2)",
                Level::Fail,
                Box::new(|o| o.kernel.bpf_load = Err("EPERM".into())),
            ),
            (
                "bpf jit",
                Level::Warn,
                Box::new(|o| o.kernel.bpf_load = Ok(false)),
            ),
            ("btf", Level::Warn, Box::new(|o| o.kernel.btf = false)),
            (
                "xdp, tcx, bpf_link",
                Level::Warn,
                Box::new(|o| o.kernel.release = "6.1.0".into()),
            ),
            (
                "xdp, tcx, bpf_link",
                Level::Fail,
                Box::new(|o| o.kernel.release = "5.4.0".into()),
            ),
            ("bpffs", Level::Warn, Box::new(|o| o.bpffs_mounts.clear())),
            (
                "bpffs",
                Level::Warn,
                Box::new(|o| o.bpffs_mounts = vec![sys::BPFFS_ROOT.into(), sys::BPFFS_ROOT.into()]),
            ),
            (
                "privileges",
                Level::Fail,
                Box::new(|o| o.cap_eff = Some(1 << CAP_SYS_ADMIN)),
            ),
            ("privileges", Level::Fail, Box::new(|o| o.cap_eff = Some(0))),
            (
                "pin directory",
                Level::Warn,
                Box::new(|o| o.pin_state = PinState::Missing),
            ),
            (
                "pin directory",
                Level::Fail,
                Box::new(|o| o.pin_state = PinState::NotBpffs),
            ),
            (
                "pin directory",
                Level::Fail,
                Box::new(|o| o.pin_state = PinState::Found(Found::Newer(9))),
            ),
            (
                "pin directory",
                Level::Warn,
                Box::new(|o| o.pin_state = PinState::Found(Found::Older(1))),
            ),
            (
                "programs",
                Level::Warn,
                Box::new(|o| o.points[0].build = "0.1.9+0".into()),
            ),
            (
                "docker",
                Level::Fail,
                Box::new(|o| o.docker = Err("ENOENT".into())),
            ),
            (
                "docker",
                Level::Warn,
                Box::new(|o| o.docker.as_mut().unwrap().state = "inactive".into()),
            ),
            (
                "sandbox",
                Level::Warn,
                Box::new(|o| {
                    o.sbox_state = SboxState::Missing;
                    o.docker.as_mut().unwrap().state = "inactive".into();
                }),
            ),
            (
                "sandbox",
                Level::Fail,
                Box::new(|o| o.sbox_state = SboxState::Missing),
            ),
            (
                "sandbox",
                Level::Fail,
                Box::new(|o| o.sbox_state = SboxState::NotEnterable("EINVAL".into())),
            ),
            (
                "netns directory",
                Level::Fail,
                Box::new(|o| o.netns_dir_propagation = Some(Propagation::Private)),
            ),
            (
                "netns directory",
                Level::Warn,
                Box::new(|o| o.netns_dir_propagation = None),
            ),
            (
                "attach point",
                Level::Fail,
                Box::new(|o| o.points[0].presence = Some(Presence::Gone)),
            ),
            ("attach points", Level::Warn, Box::new(|o| o.points.clear())),
            (
                "xdp mode",
                Level::Warn,
                Box::new(|o| o.points[0].mode = Some(AttachedMode::Generic)),
            ),
            (
                "other programs",
                Level::Warn,
                Box::new(|o| o.points[0].foreign = vec![OtherProgram::Tcx(9)]),
            ),
            (
                "ports",
                Level::Warn,
                Box::new(|o| o.blocked.push(("40000-40010/udp".into(), 40000, 40010))),
            ),
            ("agent", Level::Warn, Box::new(|o| o.beat = None)),
            ("agent", Level::Fail, Box::new(|o| o.agent_alive = false)),
            ("agent", Level::Fail, Box::new(|o| o.now = 1000)),
            (
                "deployment",
                Level::Fail,
                Box::new(|o| {
                    o.beat.as_mut().unwrap().problems = vec!["not on the host network".into()]
                }),
            ),
            (
                "feed",
                Level::Warn,
                Box::new(|o| {
                    o.docker.as_mut().unwrap().manager = false;
                    o.beat.as_mut().unwrap().source =
                        Some("the local ingress view (fallback)".into());
                }),
            ),
        ];
        for (name, level, provoke) in cases {
            let mut seen = healthy();
            provoke(&mut seen);
            let all = checks(&seen);
            let hit: Vec<&Check> = all
                .iter()
                .filter(|c| c.name == name && c.level == level)
                .collect();
            assert!(!hit.is_empty(), "{name} {level:?} not found in {all:#?}");
            assert!(
                hit.iter().all(|c| !c.fix.is_empty()),
                "{hit:#?} says what to do"
            );
            assert_eq!(worst(&all), level, "only {name} changed: {all:#?}");
        }
    }

    #[test]
    fn generic_mode_is_fine_where_the_driver_has_no_native_xdp() {
        let mut seen = healthy();
        seen.points[0].mode = Some(AttachedMode::Generic);
        seen.points[0].driver = Some("dummy".into());
        assert!(level_of(&seen, "xdp mode").is_empty());
    }

    #[test]
    fn a_worker_on_the_feed_is_ok() {
        let mut seen = healthy();
        seen.docker.as_mut().unwrap().manager = false;
        seen.beat.as_mut().unwrap().source = Some("the policy feed of 10.0.0.1:7949".into());
        assert_eq!(level_of(&seen, "feed"), vec![Level::Ok]);
    }

    #[test]
    fn the_ephemeral_range_edges_count() {
        let mut seen = healthy();
        seen.ephemeral = Some((32768, 60999));
        seen.blocked = vec![("30000-32768/tcp".into(), 30000, 32768)];
        let c = checks(&seen);
        let ports = c.iter().find(|c| c.name == "ports").unwrap();
        assert_eq!(ports.level, Level::Warn);
        assert!(
            ports.fix.contains("ip_local_reserved_ports=30000-32768"),
            "{}",
            ports.fix
        );
        seen.blocked = vec![("61000/tcp".into(), 61000, 61000)];
        assert_eq!(level_of(&seen, "ports"), vec![Level::Ok]);
    }

    #[test]
    fn parsers() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0+"), Some((5, 10)));
        assert_eq!(kernel_version("6.6"), Some((6, 6)));
        assert_eq!(kernel_version("x"), None);
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert_eq!(Level::Fail.exit_code(), 2);
        assert_eq!(worst(&[]), Level::Ok);
    }
}
