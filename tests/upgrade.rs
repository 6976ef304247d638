//! Upgrading in place a node that an older release attached: 0.1.0
//! (layout 1) and 0.2.0 (layout 2), each by the new `attach`, by the new
//! `run`, and with a failure injected after each migration step.
//!
//! Every scenario starts from pinned state made by the real old binary
//! (built from git history by [`support::old_release`]) on a private dockerd
//! with a one-node swarm (tests/support/docker.rs):
//!
//! * attach points: 0.1.0 `attach` on the node's NIC (`nic0`) and on the
//!   ingress_sbox's `eth1`;
//! * manual rules from 0.1.0 `block`: a tcp port, a udp port, a range, a
//!   port with an IPv4 + IPv6 allowlist that excludes the client, one whose
//!   allowlist includes it, an audit-mode port;
//! * agent rules from 0.1.0 `run`: the ports of a service labelled
//!   `ingress-xdp.block=true`, one of which is also a manual rule;
//! * non-zero rule counters (blocked traffic before the upgrade).
//!
//! The old agent is then killed (SIGKILL) and a hammer keeps trying every
//! blocked port (through the mesh to a counting server inside the task, to
//! the sandbox hook alone from the node itself, to the NIC hook alone at
//! servers in the node's namespace) while the NEW binary upgrades the node.
//! Controls (open ports) must keep being served, so that "nothing got
//! through" means something.
//!
//! The contract of the new binary these tests hold it to:
//! * `status --json` has `"layout": LAYOUT_VERSION` and `"build"`, each point
//!   a `"build"`;
//!   program ids change, link ids do not (BPF_LINK_UPDATE on the pinned
//!   links);
//! * `list --json` rules gain `"counted"`; a range is one entry;
//! * `attach` on a layout-N state prints "migrated" ... "layout N" ...
//!   "layout LAYOUT_VERSION" and one line starting with "upgraded" per point,
//!   and leaves no old maps behind; on an up-to-date
//!   state "already attached" per point;
//! * `INGRESS_XDP_FAIL_AFTER=create|copy|swap|commit` fails the migration
//!   right after that step, naming it;
//! * a `v<N>` directory with N > LAYOUT_VERSION in the pin dir makes every
//!   command refuse
//!   ("newer") and change nothing.
//!
//! The scenarios run one at a time (each has its own dockerd; the machine has
//! two cores, and the hammer's controls need some of them).

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Barrier, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use ingress_xdp::pins::Pins;
use ingress_xdp_common::LAYOUT_VERSION;

/// This build's layout, as `status --json` reports it.
const LAYOUT: u64 = LAYOUT_VERSION as u64;
use serde_json::Value;
use support::{
    agent::AgentProc,
    docker::{Client, Dockerd, Lan, NIC, Proto, Publish, ServiceSpec},
    old_release,
    traffic::{
        self, CountingServer, Hammer, HammerLimits, HammerReport, L4, PATIENCE, Probe, Reach,
        SILENCE,
    },
};

// Ports of the fixture. Agent rules (service labelled ingress-xdp.block=true,
// published through the mesh to counting servers inside its task):
const SVC_TCP: u16 = 8601;
const SVC_UDP: u16 = 8602;
/// Published by the blocked service AND blocked by hand: origin manual + service.
const BOTH: u16 = 8605;
/// Published by an unlabelled service: open (a control through the mesh).
const OPEN_SVC: u16 = 8604;
// Manual rules, served by counting servers in the node's namespace (only the
// NIC hook sees this traffic):
const MANUAL_TCP: u16 = 8610;
const MANUAL_UDP: u16 = 8612;
/// Allowlist of documentation prefixes: the client is not in it.
const ALLOW_OTHERS: u16 = 8614;
/// Allowlist with the lan: the client may pass (a control).
const ALLOW_CLIENT: u16 = 8616;
/// `--audit`: counted, not dropped (a control).
const AUDIT: u16 = 9000;
const RANGE_LOW: u16 = 30000;
const RANGE_HIGH: u16 = 30099;
const IN_RANGE: u16 = 30050;
/// No rule (a control; blocked by the new binary at the end of a scenario).
const UNRULED: u16 = 8620;
/// Blocked by nobody; the commands refused under a newer layout try it.
const REFUSED: u16 = 8699;

/// How long an agent may take to sync or upgrade.
const AGENT_WAIT: Duration = Duration::from_secs(30);
/// The hammer runs this long before and after the upgrade.
const AROUND: Duration = Duration::from_secs(1);

fn log(msg: impl AsRef<str>) {
    eprintln!("[ixt-upgrade] {}", msg.as_ref());
}

/// One scenario at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_bin() -> &'static Path {
    Path::new(support::bin())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// The pinned state's directory and the CLIs that work on it.

/// A pin directory on bpffs that the binaries under test create; removed on
/// drop (unpinning the links detaches the programs).
struct PinDir {
    dir: PathBuf,
}

impl PinDir {
    fn new(tag: &str) -> Self {
        support::require_root();
        ingress_xdp::sys::ensure_bpffs_mounted().expect("bpffs");
        let dir = PathBuf::from("/sys/fs/bpf").join(support::unique(tag));
        assert!(!dir.exists(), "{} exists already", dir.display());
        Self { dir }
    }

    fn pins(&self) -> Pins {
        Pins::new(&self.dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One ingress-xdp binary working on one pin dir, run from the node's
/// network namespace as an operator would.
struct Cli {
    who: &'static str,
    bin: PathBuf,
    node: PathBuf,
    pins: PathBuf,
}

impl Cli {
    fn command(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node.display()))
            .arg(&self.bin)
            .arg("--pin-dir")
            .arg(&self.pins)
            .args(args)
            .env_remove("INGRESS_XDP_FAIL_AFTER")
            .env_remove("INGRESS_XDP_PIN_DIR")
            .env_remove("INGRESS_XDP_LOG")
            .envs(envs.iter().copied());
        cmd
    }

    fn out_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        self.command(args, envs)
            .output()
            .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", self.who))
    }

    fn out(&self, args: &[&str]) -> Output {
        self.out_env(args, &[])
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "{} `{}` failed:\n{}",
            self.who,
            args.join(" "),
            text(&out)
        );
        stdout(&out)
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "{} `{}` printed no JSON ({e}):\n{out}",
                self.who,
                args.join(" ")
            )
        })
    }

    #[track_caller]
    fn rules(&self) -> Vec<Rule> {
        parse_rules(self.who, &self.json(&["list", "--json"]))
    }

    #[track_caller]
    fn status(&self) -> Status {
        parse_status(self.who, &self.json(&["status", "--json"]))
    }

    /// `status --json`, or None when the command fails (e.g. while another
    /// process migrates).
    fn try_status(&self) -> Option<Status> {
        let out = self.out(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(parse_status(self.who, &v))
    }
}

// ---------------------------------------------------------------------------
// What `list --json` and `status --json` say, in the parts both releases share.

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RuleKey {
    proto: String,
    low: u16,
    high: u16,
}

impl std::fmt::Display for RuleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{}/{}", self.low, self.proto)
        } else {
            write!(f, "{}-{}/{}", self.low, self.high, self.proto)
        }
    }
}

fn key(proto: &str, low: u16, high: u16) -> RuleKey {
    RuleKey {
        proto: proto.into(),
        low,
        high,
    }
}

fn tcp(port: u16) -> RuleKey {
    key("tcp", port, port)
}

fn udp(port: u16) -> RuleKey {
    key("udp", port, port)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    key: RuleKey,
    mode: String,
    allow_from: BTreeSet<String>,
    manual: bool,
    service: Option<String>,
    why: Option<String>,
    packets: u64,
    /// Layout 2 only.
    counted: Option<bool>,
}

impl Rule {
    /// What a migration must carry over (not the counters).
    fn policy(&self) -> (String, BTreeSet<String>, bool, Option<String>) {
        (
            self.mode.clone(),
            self.allow_from.clone(),
            self.manual,
            self.service.clone(),
        )
    }
}

#[track_caller]
fn parse_rules(who: &str, v: &Value) -> Vec<Rule> {
    let bad = |what: &str| -> ! { panic!("{who} list --json: {what} in {v}") };
    let Some(rules) = v["rules"].as_array() else {
        bad("no \"rules\" array")
    };
    rules
        .iter()
        .map(|r| {
            let port = |k: &str| -> u16 {
                r[k].as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or_else(|| bad(&format!("no {k:?}")))
            };
            Rule {
                key: RuleKey {
                    proto: r["proto"]
                        .as_str()
                        .unwrap_or_else(|| bad("no \"proto\""))
                        .into(),
                    low: port("low"),
                    high: port("high"),
                },
                mode: r["mode"]
                    .as_str()
                    .unwrap_or_else(|| bad("no \"mode\""))
                    .into(),
                allow_from: r["allow_from"]
                    .as_array()
                    .unwrap_or_else(|| bad("no \"allow_from\""))
                    .iter()
                    .map(|c| c.as_str().unwrap_or_else(|| bad("a non-string CIDR")))
                    .map(str::to_ascii_lowercase)
                    .collect(),
                manual: r["origin"]["manual"]
                    .as_bool()
                    .unwrap_or_else(|| bad("no \"origin.manual\"")),
                service: r["origin"]["service"].as_str().map(str::to_string),
                why: r["origin"]["why"].as_str().map(str::to_string),
                packets: r["packets"]
                    .as_u64()
                    .unwrap_or_else(|| bad("no \"packets\"")),
                counted: r["counted"].as_bool(),
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Point {
    netns: Option<String>,
    iface: String,
    hook: String,
    program_id: u64,
    link_id: u64,
    build: Option<String>,
    presence: String,
}

impl Point {
    fn target(&self) -> (Option<String>, String) {
        (self.netns.clone(), self.iface.clone())
    }

    fn describe(&self) -> String {
        format!(
            "{} in {}",
            self.iface,
            self.netns.as_deref().unwrap_or("the node")
        )
    }
}

#[derive(Clone, Debug)]
struct Status {
    layout: Option<u64>,
    build: Option<String>,
    points: Vec<Point>,
    raw: Value,
}

impl Status {
    /// Program ids per target.
    fn programs(&self) -> BTreeMap<(Option<String>, String), u64> {
        self.points
            .iter()
            .map(|p| (p.target(), p.program_id))
            .collect()
    }
}

#[track_caller]
fn parse_status(who: &str, v: &Value) -> Status {
    let bad = |what: &str| -> ! { panic!("{who} status --json: {what} in {v}") };
    let Some(points) = v["attach_points"].as_array() else {
        bad("no \"attach_points\" array")
    };
    let points = points
        .iter()
        .map(|p| {
            let pt = &p["point"];
            Point {
                netns: pt["netns"].as_str().map(str::to_string),
                iface: pt["iface"]
                    .as_str()
                    .unwrap_or_else(|| bad("no \"iface\""))
                    .into(),
                hook: pt["hook"]
                    .as_str()
                    .unwrap_or_else(|| bad("no \"hook\""))
                    .into(),
                program_id: pt["program_id"]
                    .as_u64()
                    .unwrap_or_else(|| bad("no \"program_id\"")),
                link_id: pt["link_id"]
                    .as_u64()
                    .unwrap_or_else(|| bad("no \"link_id\"")),
                build: pt["build"].as_str().map(str::to_string),
                presence: p["presence"]
                    .as_str()
                    .unwrap_or_else(|| bad("no \"presence\""))
                    .into(),
            }
        })
        .collect();
    Status {
        layout: v["layout"].as_u64(),
        build: v["build"].as_str().map(str::to_string),
        points,
        raw: v.clone(),
    }
}

/// The XDP program the kernel runs on `iface` in `netns` (what `ip link`
/// shows), to check that status does not just repeat what it recorded.
fn kernel_xdp_prog(netns: &Path, iface: &str) -> Option<u64> {
    let out = support::sh_out(&format!(
        "nsenter --net={} ip -j -d link show dev {iface}",
        netns.display()
    ));
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = &v[0]["xdp"];
    xdp["prog"]["id"].as_u64().or_else(|| {
        xdp["attached"]
            .as_array()?
            .iter()
            .find_map(|a| a["prog"]["id"].as_u64())
    })
}

// ---------------------------------------------------------------------------
// The node: a dockerd with services, stand-ins, counting servers, a client.

struct World {
    tag: String,
    // Drop order: servers, client, then the daemon (its namespaces).
    task_servers: Vec<CountingServer>,
    node_servers: Vec<(CountingServer, bool)>,
    client: Client,
    blocked_svc: String,
    d: Dockerd,
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

impl World {
    fn new(tag: &str) -> Self {
        let t0 = Instant::now();
        let d = Dockerd::start(tag);
        d.swarm_init();
        d.load_test_image();
        let blocked = ServiceSpec::new(&format!("{tag}b"))
            .publish(Publish::ingress(SVC_TCP, Proto::Tcp).target(SVC_TCP))
            .publish(Publish::ingress(SVC_UDP, Proto::Udp).target(SVC_UDP))
            .publish(Publish::ingress(BOTH, Proto::Tcp).target(BOTH))
            .label("ingress-xdp.block", "true");
        let open =
            ServiceSpec::new(&format!("{tag}o")).publish(Publish::ingress(OPEN_SVC, Proto::Tcp));
        d.create_service(&blocked);
        d.create_service(&open);
        d.wait_running(&blocked.name);
        d.wait_running(&open.name);
        d.install_service_standins(&blocked.name);
        d.install_service_standins(&open.name);

        // The blocked service's task: our counting servers in its namespace
        // on the target ports (its image listens on 80 only).
        let container = d
            .local_containers(&blocked.name)
            .first()
            .and_then(|c| c["Id"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no local container of {}", blocked.name));
        let pid = d.docker(["inspect", "-f", "{{.State.Pid}}", &container]);
        let task_ns = PathBuf::from(format!("/proc/{}/ns/net", pid.trim()));
        let task_servers = vec![
            CountingServer::start(&task_ns, L4::Tcp, any(SVC_TCP), "task 8601/tcp"),
            CountingServer::start(&task_ns, L4::Udp, any(SVC_UDP), "task 8602/udp"),
            CountingServer::start(&task_ns, L4::Tcp, any(BOTH), "task 8605/tcp"),
        ];
        let node = d.netns_path();
        // (server, behind a blocked port)
        let node_servers = vec![
            (
                CountingServer::start(&node, L4::Tcp, any(MANUAL_TCP), "node 8610/tcp"),
                true,
            ),
            (
                CountingServer::start(&node, L4::Udp, any(MANUAL_UDP), "node 8612/udp"),
                true,
            ),
            (
                CountingServer::start(&node, L4::Tcp, any(ALLOW_OTHERS), "node 8614/tcp"),
                true,
            ),
            (
                CountingServer::start(&node, L4::Tcp, any(IN_RANGE), "node 30050/tcp"),
                true,
            ),
            (
                CountingServer::start(&node, L4::Tcp, any(ALLOW_CLIENT), "node 8616/tcp"),
                false,
            ),
            (
                CountingServer::start(&node, L4::Tcp, any(AUDIT), "node 9000/tcp"),
                false,
            ),
            (
                CountingServer::start(&node, L4::Tcp, any(UNRULED), "node 8620/tcp"),
                false,
            ),
        ];
        let client = d.client(&format!("{tag}c"));
        let w = Self {
            tag: tag.into(),
            task_servers,
            node_servers,
            client,
            blocked_svc: blocked.name.clone(),
            d,
        };

        // Before anything is attached every path must deliver, or a silent
        // port later would prove nothing.
        let from = w.client.path();
        for port in [
            SVC_TCP,
            BOTH,
            MANUAL_TCP,
            ALLOW_OTHERS,
            IN_RANGE,
            ALLOW_CLIENT,
            AUDIT,
            UNRULED,
        ] {
            let got = traffic::tcp(&from, None, w.d.at(port), PATIENCE);
            assert_eq!(
                got,
                Reach::Served("x".into()),
                "fixture: {port}/tcp from the client before any attach\n{}",
                w.d.mesh_diagnostics()
            );
        }
        for port in [SVC_UDP, MANUAL_UDP] {
            let got = traffic::udp(&from, None, w.d.at(port), PATIENCE);
            assert_eq!(
                got,
                Reach::Served("x".into()),
                "fixture: {port}/udp from the client before any attach\n{}",
                w.d.mesh_diagnostics()
            );
        }
        for port in [SVC_TCP, BOTH] {
            let got = traffic::tcp(&node, None, localhost(port), PATIENCE);
            assert_eq!(
                got,
                Reach::Served("x".into()),
                "fixture: 127.0.0.1:{port} on the node before any attach\n{}",
                w.d.mesh_diagnostics()
            );
        }
        assert!(
            w.client.http(w.d.at(OPEN_SVC)).served(),
            "fixture: {OPEN_SVC}/tcp (open service) from the client\n{}",
            w.d.mesh_diagnostics()
        );
        log(format!(
            "{tag}: node ready (dockerd, swarm, 2 services, stand-ins, servers) in {}",
            secs(t0.elapsed())
        ));
        w
    }

    fn cli(&self, who: &'static str, bin: &Path, pins: &PinDir) -> Cli {
        Cli {
            who,
            bin: bin.to_path_buf(),
            node: self.d.netns_path(),
            pins: pins.dir.clone(),
        }
    }

    fn sbox(&self) -> String {
        self.d.sbox_netns().display().to_string()
    }

    fn attach_args(&self) -> Vec<String> {
        vec![
            "attach".into(),
            "--iface".into(),
            NIC.into(),
            "--sbox-netns".into(),
            self.sbox(),
        ]
    }

    /// The agent, as 0.1.0's or the new binary.
    fn agent(&self, bin: &Path, pins: &PinDir) -> AgentProc {
        AgentProc::start_bin(bin, &self.d, &pins.pins(), &[], &[])
    }

    fn manual_blocks(&self) -> Vec<Vec<String>> {
        let lan = format!("{}/24", Lan::addr(0));
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        vec![
            s(&["block", &MANUAL_TCP.to_string()]),
            s(&["block", &format!("{MANUAL_UDP}/udp")]),
            s(&["block", &format!("{RANGE_LOW}-{RANGE_HIGH}/tcp")]),
            s(&[
                "block",
                &ALLOW_OTHERS.to_string(),
                "--allow-from",
                "192.0.2.0/24",
                "--allow-from",
                "2001:db8::/32",
            ]),
            s(&[
                "block",
                &ALLOW_CLIENT.to_string(),
                "--allow-from",
                &lan,
                "--allow-from",
                "fd00:231::/64",
            ]),
            s(&["block", &AUDIT.to_string(), "--audit"]),
            s(&["block", &BOTH.to_string()]),
        ]
    }

    /// The rules a 0.1.0 state of this fixture has: key -> (mode, allowlist,
    /// manual, service).
    fn expected_rules(
        &self,
    ) -> BTreeMap<RuleKey, (String, BTreeSet<String>, bool, Option<String>)> {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let svc = Some(self.blocked_svc.clone());
        let lan = format!("{}/24", Lan::addr(0));
        BTreeMap::from([
            (tcp(SVC_TCP), ("block".into(), set(&[]), false, svc.clone())),
            (udp(SVC_UDP), ("block".into(), set(&[]), false, svc.clone())),
            (tcp(BOTH), ("block".into(), set(&[]), true, svc)),
            (tcp(MANUAL_TCP), ("block".into(), set(&[]), true, None)),
            (udp(MANUAL_UDP), ("block".into(), set(&[]), true, None)),
            (
                key("tcp", RANGE_LOW, RANGE_HIGH),
                ("block".into(), set(&[]), true, None),
            ),
            (
                tcp(ALLOW_OTHERS),
                (
                    "block".into(),
                    set(&["192.0.2.0/24", "2001:db8::/32"]),
                    true,
                    None,
                ),
            ),
            (
                tcp(ALLOW_CLIENT),
                ("block".into(), set(&[&lan, "fd00:231::/64"]), true, None),
            ),
            (tcp(AUDIT), ("audit".into(), set(&[]), true, None)),
        ])
    }

    /// Rules that get traffic before the upgrade but not during it: their
    /// counters can only match if the migration carried them over.
    fn quiet_rules() -> Vec<RuleKey> {
        vec![tcp(ALLOW_OTHERS), key("tcp", RANGE_LOW, RANGE_HIGH)]
    }

    /// A hammer at every blocked port (and the quiet ones too when `warm_up`)
    /// plus the controls.
    fn hammer(&self, warm_up: bool) -> Hammer {
        let c = self.client.path();
        let node = self.d.netns_path();
        let at = |p| self.d.at(p);
        let mut probes = vec![
            Probe::blocked(
                "remote 8601/tcp (agent rule, mesh: NIC + sbox)",
                &c,
                L4::Tcp,
                at(SVC_TCP),
            ),
            Probe::blocked(
                "remote 8602/udp (agent rule, mesh)",
                &c,
                L4::Udp,
                at(SVC_UDP),
            ),
            Probe::blocked(
                "remote 8605/tcp (manual + agent, mesh)",
                &c,
                L4::Tcp,
                at(BOTH),
            ),
            Probe::blocked(
                "local 8601/tcp (agent rule, sbox hook only)",
                &node,
                L4::Tcp,
                localhost(SVC_TCP),
            ),
            Probe::blocked(
                "local 8605/tcp (manual + agent, sbox hook only)",
                &node,
                L4::Tcp,
                localhost(BOTH),
            ),
            Probe::blocked(
                "remote 8610/tcp (manual, NIC hook only)",
                &c,
                L4::Tcp,
                at(MANUAL_TCP),
            ),
            Probe::blocked(
                "remote 8612/udp (manual, NIC hook only)",
                &c,
                L4::Udp,
                at(MANUAL_UDP),
            ),
            Probe::control(
                "remote 8604/tcp (open service, mesh)",
                &c,
                L4::Tcp,
                at(OPEN_SVC),
            ),
            Probe::control(
                "remote 8616/tcp (allowlist has the client)",
                &c,
                L4::Tcp,
                at(ALLOW_CLIENT),
            ),
            Probe::control("remote 9000/tcp (audit)", &c, L4::Tcp, at(AUDIT)),
            Probe::control("remote 8620/tcp (no rule)", &c, L4::Tcp, at(UNRULED)),
        ];
        if warm_up {
            probes.push(Probe::blocked(
                "remote 8614/tcp (allowlist without the client)",
                &c,
                L4::Tcp,
                at(ALLOW_OTHERS),
            ));
            probes.push(Probe::blocked(
                "remote 30050/tcp (range 30000-30099)",
                &c,
                L4::Tcp,
                at(IN_RANGE),
            ));
        }
        let sinks = self
            .task_servers
            .iter()
            .map(|s| s.sink(true))
            .chain(
                self.node_servers
                    .iter()
                    .map(|(s, blocked)| s.sink(*blocked)),
            )
            .collect();
        Hammer::start(probes, sinks, HammerLimits::default())
    }
}

// ---------------------------------------------------------------------------
// A 0.1.0 state.

struct OldState {
    // Drop order: nothing holds the pins any more when they go.
    pins: PinDir,
    rules: Vec<Rule>,
    status: Status,
}

/// Waits until `cli`'s `list --json` has the agent's rules for the blocked
/// service (8601/tcp, 8602/udp, 8605/tcp with the manual origin kept).
#[track_caller]
fn wait_agent_rules(w: &World, cli: &Cli, agent: &mut AgentProc, what: &str) -> Vec<Rule> {
    let t0 = Instant::now();
    loop {
        let out = cli.out(&["list", "--json"]);
        if out.status.success()
            && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
        {
            let rules = parse_rules(cli.who, &v);
            let has = |k: &RuleKey, manual: bool| {
                rules.iter().any(|r| {
                    r.key == *k
                        && r.manual == manual
                        && r.service.as_deref() == Some(w.blocked_svc.as_str())
                })
            };
            if has(&tcp(SVC_TCP), false) && has(&udp(SVC_UDP), false) && has(&tcp(BOTH), true) {
                return rules;
            }
        }
        assert!(
            agent.is_running(),
            "{what}: the agent exited:\n{}",
            agent.log()
        );
        assert!(
            t0.elapsed() < AGENT_WAIT,
            "{what}: the agent's rules for {} did not appear within {AGENT_WAIT:?}; last list:\n{}\nagent log:\n{}",
            w.blocked_svc,
            text(&out),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes a fresh state on `w` with the binary `old` of release `release`
/// (see the module docs). The old agent is killed before this returns.
fn make_old_state(w: &World, release: &'static str, old: &Path, tag: &str) -> OldState {
    let t0 = Instant::now();
    let pins = PinDir::new(tag);
    let cli = w.cli(release, old, &pins);
    let attach = w.attach_args();
    let attach: Vec<&str> = attach.iter().map(String::as_str).collect();
    cli.ok(&attach);
    for b in w.manual_blocks() {
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        cli.ok(&b);
    }
    let mut agent = w.agent(old, &pins);
    wait_agent_rules(w, &cli, &mut agent, &format!("{release} agent"));

    // Blocked traffic at every rule (the counters), and proof that the
    // fixture's hammer sees the old state sealed.
    let warm = w.hammer(true);
    std::thread::sleep(Duration::from_millis(1500));
    warm.stop().assert_sealed(&format!(
        "{release} state (warm-up, before any new binary ran)"
    ));

    let rules = cli.rules();
    let status = cli.status();
    agent.kill();

    // The fixture is what the scenarios think it is.
    let want = w.expected_rules();
    let have: BTreeMap<RuleKey, _> = rules.iter().map(|r| (r.key.clone(), r.policy())).collect();
    assert_eq!(
        have, want,
        "the {release} state's rules are not the fixture's"
    );
    for q in World::quiet_rules() {
        let r = rules.iter().find(|r| r.key == q).unwrap();
        assert!(
            r.packets > 0,
            "{release} counted no packets for {q} after blocked traffic: {rules:#?}"
        );
    }
    assert_eq!(status.points.len(), 2, "{release} status: {}", status.raw);
    for p in &status.points {
        assert_eq!(p.presence, "attached", "{release} status: {}", status.raw);
        let ns = p
            .netns
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| w.d.netns_path());
        assert_eq!(
            kernel_xdp_prog(&ns, &p.iface),
            Some(p.program_id),
            "{release}: the kernel's program on {} is not the one status shows: {}",
            p.describe(),
            status.raw
        );
    }
    log(format!(
        "{}: {release} state made in {}",
        w.tag,
        secs(t0.elapsed())
    ));
    OldState {
        pins,
        rules,
        status,
    }
}

/// Waits until nothing is attached to the fixture's interfaces any more
/// (after a pin dir was removed), so the next 0.1.0 attach starts clean.
fn wait_detached(w: &World) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let sbox = w.d.sbox_netns();
    let node = w.d.netns_path();
    while kernel_xdp_prog(&node, NIC).is_some() || kernel_xdp_prog(&sbox, "eth1").is_some() {
        assert!(
            Instant::now() < deadline,
            "programs still attached 10 s after their pin dir was removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// What an upgraded state must look like.

/// The new `list` has exactly the old rules (same ports and ranges, modes,
/// allowlists, origins; `why` too when `same_why`), and counters carried over.
#[track_caller]
fn assert_rules_migrated(what: &str, old: &[Rule], new: &[Rule], same_why: bool) {
    let old_map: BTreeMap<&RuleKey, &Rule> = old.iter().map(|r| (&r.key, r)).collect();
    let new_map: BTreeMap<&RuleKey, &Rule> = new.iter().map(|r| (&r.key, r)).collect();
    let mut problems = Vec::new();
    for (k, o) in &old_map {
        match new_map.get(k) {
            None => problems.push(format!("{k} is missing")),
            Some(n) => {
                if o.policy() != n.policy() {
                    problems.push(format!(
                        "{k} changed: was {:?}, is {:?}",
                        o.policy(),
                        n.policy()
                    ));
                }
                if same_why && o.why != n.why {
                    problems.push(format!("{k}: why was {:?}, is {:?}", o.why, n.why));
                }
            }
        }
    }
    for k in new_map.keys().filter(|k| !old_map.contains_key(*k)) {
        problems.push(format!("{k} is new (ranges must stay one entry)"));
    }
    assert!(
        problems.is_empty(),
        "{what}: rules not carried over: {problems:#?}\nold: {old:#?}\nnew: {new:#?}"
    );
    assert!(
        new.iter().all(|r| r.counted.is_some()),
        "{what}: the new `list --json` rules have no \"counted\": {new:#?}"
    );
    // Counters continue: never below what 0.1.0 had, for counted rules. The
    // quiet rules had traffic only before the upgrade, so they prove it.
    let mut proved = Vec::new();
    for (k, o) in &old_map {
        let n = new_map[k];
        if n.counted == Some(false) {
            continue;
        }
        assert!(
            n.packets >= o.packets,
            "{what}: {k} counted {} packets under 0.1.0 and {} now: the counter was not carried over",
            o.packets,
            n.packets
        );
        if World::quiet_rules().contains(k) && o.packets > 0 {
            proved.push(k.to_string());
        }
    }
    assert!(
        !proved.is_empty(),
        "{what}: none of the quiet rules {:?} is counted in the new list, so nothing shows the counters were carried over: {new:#?}",
        World::quiet_rules()
    );
}

/// The new `status` is this build's layout, with the same points and links
/// as the old release's and new programs on every one (checked in the
/// kernel too); no older layout's maps are left.
#[track_caller]
fn assert_upgraded(what: &str, w: &World, pins: &PinDir, old: &Status, new: &Status) {
    assert_eq!(
        new.layout,
        Some(LAYOUT),
        "{what}: status layout: {}",
        new.raw
    );
    let build = new.build.clone().unwrap_or_default();
    assert!(
        !build.is_empty(),
        "{what}: status has no top-level build: {}",
        new.raw
    );
    let current = format!("v{LAYOUT_VERSION}");
    assert!(
        pins.dir.join(&current).is_dir(),
        "{what}: no {}/{current} after the upgrade",
        pins.dir.display()
    );
    let mut left: Vec<String> = std::fs::read_dir(&pins.dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", pins.dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| *n != current && n != "links" && !n.starts_with('.'))
        .collect();
    left.sort();
    assert!(
        left.is_empty(),
        "{what}: the old layout's maps are still in {}: {left:?}",
        pins.dir.display()
    );
    let mut targets: Vec<_> = new.points.iter().map(Point::target).collect();
    targets.sort();
    let mut old_targets: Vec<_> = old.points.iter().map(Point::target).collect();
    old_targets.sort();
    assert_eq!(
        targets, old_targets,
        "{what}: attach points are not the old release's, each once:\nold: {}\nnew: {}",
        old.raw, new.raw
    );
    for o in &old.points {
        let n = new
            .points
            .iter()
            .find(|n| n.target() == o.target())
            .unwrap();
        let p = o.describe();
        assert_eq!(n.presence, "attached", "{what}: {p}: {}", new.raw);
        assert_eq!(n.hook, o.hook, "{what}: {p}: hook changed: {}", new.raw);
        assert_ne!(
            n.program_id, o.program_id,
            "{what}: {p} still runs the old release's program {}: {}",
            o.program_id, new.raw
        );
        assert_eq!(
            n.link_id, o.link_id,
            "{what}: {p}: link {} replaced by {} (not updated in place): {}",
            o.link_id, n.link_id, new.raw
        );
        assert_eq!(
            n.build.as_deref(),
            Some(build.as_str()),
            "{what}: {p}: point build is not the binary's build: {}",
            new.raw
        );
        let ns = n
            .netns
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| w.d.netns_path());
        assert_eq!(
            kernel_xdp_prog(&ns, &n.iface),
            Some(n.program_id),
            "{what}: the kernel runs another program on {p} than status says: {}",
            new.raw
        );
    }
}

/// `attach` on an upgraded state is a no-op.
#[track_caller]
fn assert_attach_is_noop(what: &str, w: &World, cli: &Cli, before: &Status) {
    let args = w.attach_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli.ok(&args);
    let already = out
        .lines()
        .filter(|l| l.contains("already attached"))
        .count();
    assert_eq!(
        already,
        before.points.len(),
        "{what}: attach on the upgraded state did not say \"already attached\" per point:\n{out}"
    );
    let after = cli.status();
    assert_eq!(
        after.programs(),
        before.programs(),
        "{what}: attach on the upgraded state changed programs:\nbefore: {}\nafter: {}",
        before.raw,
        after.raw
    );
}

/// The new binary's `unblock` opens a port, its `block` closes one.
#[track_caller]
fn assert_block_and_unblock_work(what: &str, w: &World, cli: &Cli) {
    let from = w.client.path();
    cli.ok(&["unblock", &MANUAL_TCP.to_string()]);
    assert_eq!(
        traffic::tcp(&from, None, w.d.at(MANUAL_TCP), PATIENCE),
        Reach::Served("x".into()),
        "{what}: {MANUAL_TCP}/tcp is not served after the new unblock"
    );
    cli.ok(&["block", &UNRULED.to_string()]);
    assert_eq!(
        traffic::tcp(&from, None, w.d.at(UNRULED), SILENCE),
        Reach::Silent,
        "{what}: {UNRULED}/tcp is not dropped after the new block"
    );
    let rules = cli.rules();
    assert!(
        !rules.iter().any(|r| r.key == tcp(MANUAL_TCP)),
        "{what}: {MANUAL_TCP}/tcp still listed after unblock: {rules:#?}"
    );
    assert!(
        rules.iter().any(|r| r.key == tcp(UNRULED) && r.manual),
        "{what}: {UNRULED}/tcp not listed after block: {rules:#?}"
    );
}

/// The contract's `attach` output on a layout-`from` state.
#[track_caller]
fn assert_migrated_output(what: &str, out: &str, points: usize, from: u64) {
    let (old, new) = (format!("layout {from}"), format!("layout {LAYOUT_VERSION}"));
    assert!(
        out.lines()
            .any(|l| l.contains("migrated") && l.contains(&old) && l.contains(&new)),
        "{what}: no line saying it migrated from {old} to {new}:\n{out}"
    );
    let upgraded = out.lines().filter(|l| l.starts_with("upgraded")).count();
    assert_eq!(
        upgraded, points,
        "{what}: expected one line starting with \"upgraded\" per point ({points}):\n{out}"
    );
}

/// Polls the new `status` until every point of `old` runs a new program on
/// this build's layout (an agent upgrading in the background).
#[track_caller]
fn wait_upgraded(what: &str, cli: &Cli, old: &Status, agent: &mut AgentProc) -> Status {
    let t0 = Instant::now();
    let old_programs = old.programs();
    loop {
        if let Some(s) = cli.try_status() {
            let progs = s.programs();
            if s.layout == Some(LAYOUT)
                && old_programs
                    .iter()
                    .all(|(t, id)| progs.get(t).is_some_and(|n| n != id))
            {
                log(format!(
                    "{what}: upgraded {} after the start",
                    secs(t0.elapsed())
                ));
                return s;
            }
        }
        assert!(
            agent.is_running(),
            "{what}: the new agent exited:\n{}",
            agent.log()
        );
        if t0.elapsed() > AGENT_WAIT {
            let last = cli.out(&["status", "--json"]);
            panic!(
                "{what}: the new agent did not upgrade the old state within {AGENT_WAIT:?} \
                 (want layout {LAYOUT_VERSION} and new program ids on every point; the old release's: {})\nlast status:\n{}\nagent log:\n{}",
                old.raw,
                text(&last),
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hammer_around(w: &World, upgrade: impl FnOnce()) -> HammerReport {
    let hammer = w.hammer(false);
    std::thread::sleep(AROUND);
    upgrade();
    std::thread::sleep(AROUND);
    hammer.stop()
}

// ---------------------------------------------------------------------------
// The scenarios.

#[test]
fn old_releases_build_and_run() {
    for (release, bin) in [
        ("0.1.0", old_release::release_0_1_0()),
        ("0.2.0", old_release::release_0_2_0()),
    ] {
        let out = support::sh(&format!("{} --version", bin.display()));
        assert!(out.contains(release), "{out}");
    }
}

/// An old release to upgrade from: its binary, and the layout it writes.
#[derive(Clone, Copy)]
struct Release {
    version: &'static str,
    bin: fn() -> &'static Path,
    layout: u64,
}

const R0_1_0: Release = Release {
    version: "0.1.0",
    bin: old_release::release_0_1_0,
    layout: 1,
};

/// Layout 2: maps in `v2/`, a per-CPU array of rule counters, the layout
/// this build's counter chunks replace.
const R0_2_0: Release = Release {
    version: "0.2.0",
    bin: old_release::release_0_2_0,
    layout: 2,
};

/// A fresh state of `release` on `w`, checked to be its layout.
fn old_state(w: &World, release: Release, tag: &str) -> OldState {
    let old = make_old_state(w, release.version, (release.bin)(), tag);
    let layout = old.status.layout.unwrap_or(1);
    assert_eq!(
        layout, release.layout,
        "{} status: {}",
        release.version, old.status.raw
    );
    old
}

/// The new `attach` upgrades a node `release` attached.
fn attach_upgrades_in_place(release: Release, world: &str, pins: &str) {
    let _serial = serial();
    let what = format!("new attach on a {} node", release.version);
    let what = what.as_str();
    let w = World::new(world);
    let old = old_state(&w, release, pins);
    let new = w.cli("new", new_bin(), &old.pins);
    let args = w.attach_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let mut out = None;
    let report = hammer_around(&w, || out = Some(new.out(&args)));
    let out = out.unwrap();
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    report.assert_sealed(what);
    assert_migrated_output(what, &stdout(&out), old.status.points.len(), release.layout);

    assert_rules_migrated(what, &old.rules, &new.rules(), true);
    let status = new.status();
    assert_upgraded(what, &w, &old.pins, &old.status, &status);
    if release.layout >= 2 {
        // 0.1.0 predates the check; later releases must refuse.
        assert_old_binary_refuses(what, &w, release, &old.pins, &new);
    }
    assert_attach_is_noop(what, &w, &new, &status);
    assert_block_and_unblock_work(what, &w, &new);
}

/// The old release, run again on the upgraded node, refuses the newer
/// layout and changes nothing: no rule, no program.
#[track_caller]
fn assert_old_binary_refuses(what: &str, w: &World, release: Release, pins: &PinDir, new: &Cli) {
    let old_cli = w.cli(release.version, (release.bin)(), pins);
    let policies = |rules: Vec<Rule>| {
        rules
            .into_iter()
            .map(|r| (r.key.clone(), r.policy()))
            .collect::<Vec<_>>()
    };
    let rules = policies(new.rules());
    let status = new.status();
    let refused = REFUSED.to_string();
    let attach = w.attach_args();
    let attach: Vec<&str> = attach.iter().map(String::as_str).collect();
    for cmd in [
        vec!["list", "--json"],
        vec!["block", &refused],
        vec!["unblock", &refused],
        attach,
        vec!["detach"],
    ] {
        let out = old_cli.out(&cmd);
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            !out.status.success() && all.contains("newer"),
            "{what}: {} `{}` on the upgraded node did not refuse with \"newer\":\n{}",
            release.version,
            cmd.join(" "),
            text(&out)
        );
    }
    assert_eq!(
        policies(new.rules()),
        rules,
        "{what}: the refused {} commands changed the rules",
        release.version
    );
    assert_eq!(
        new.status().programs(),
        status.programs(),
        "{what}: the refused {} commands changed the programs",
        release.version
    );
}

/// The new agent (`run`) upgrades a node `release` attached.
fn run_upgrades_in_place(release: Release, world: &str, pins: &str) {
    let _serial = serial();
    let what = format!("new agent (run) on a {} node", release.version);
    let what = what.as_str();
    let w = World::new(world);
    let old = old_state(&w, release, pins);
    let new = w.cli("new", new_bin(), &old.pins);

    let mut agent = None;
    let mut status = None;
    let report = hammer_around(&w, || {
        let mut a = w.agent(new_bin(), &old.pins);
        status = Some(wait_upgraded(what, &new, &old.status, &mut a));
        agent = Some(a);
    });
    let mut agent = agent.unwrap();
    report.assert_sealed(what);
    assert!(
        agent.is_running(),
        "{what}: the new agent exited:\n{}",
        agent.log()
    );
    wait_agent_rules(&w, &new, &mut agent, what);

    // The agent re-derives its own rules' reasons, so `why` may be new text.
    assert_rules_migrated(what, &old.rules, &new.rules(), false);
    assert_upgraded(what, &w, &old.pins, &old.status, &status.unwrap());
    let status = new.status();
    assert_attach_is_noop(what, &w, &new, &status);
    assert_block_and_unblock_work(what, &w, &new);
    assert!(
        agent.is_running(),
        "{what}: the new agent exited:\n{}",
        agent.log()
    );
}

#[test]
fn attach_upgrades_0_1_0_in_place() {
    attach_upgrades_in_place(R0_1_0, "upa", "upap");
}

#[test]
fn attach_upgrades_0_2_0_in_place() {
    attach_upgrades_in_place(R0_2_0, "upf", "upfp");
}

#[test]
fn run_upgrades_0_1_0_in_place() {
    run_upgrades_in_place(R0_1_0, "upb", "upbp");
}

#[test]
fn run_upgrades_0_2_0_in_place() {
    run_upgrades_in_place(R0_2_0, "upg", "upgp");
}

#[test]
fn failed_migration_from_0_1_0_keeps_dropping() {
    failed_migration_keeps_dropping(R0_1_0, "upc");
}

#[test]
fn failed_migration_from_0_2_0_keeps_dropping() {
    failed_migration_keeps_dropping(R0_2_0, "uph");
}

/// A failure injected after each step of a migration from `release`.
fn failed_migration_keeps_dropping(release: Release, tag: &str) {
    let _serial = serial();
    let old_bin = (release.bin)();
    let w = World::new(tag);
    let args = w.attach_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for step in ["create", "copy", "swap", "commit"] {
        let what = format!(
            "new attach on a {} node with INGRESS_XDP_FAIL_AFTER={step}",
            release.version
        );
        let old = old_state(&w, release, &format!("{tag}{}", &step[..2]));
        let new = w.cli("new", new_bin(), &old.pins);
        let old_cli = w.cli(release.version, old_bin, &old.pins);

        let mut failed = None;
        let mut retried = None;
        let report = hammer_around(&w, || {
            failed = Some(new.out_env(&args, &[("INGRESS_XDP_FAIL_AFTER", step)]));
            // Between the failure and the retry the node must keep dropping
            // too: the hammer covers it.
            std::thread::sleep(Duration::from_millis(500));
            // The state in between, as each binary reads it, before the retry.
            let between = if step == "commit" {
                (Some(new.rules()), new.try_status(), None)
            } else {
                let status = old_cli.status();
                // What the kernel runs, read now: the retry swaps it.
                let kernel: Vec<(String, Option<u64>, u64)> = status
                    .points
                    .iter()
                    .map(|p| {
                        let ns = p
                            .netns
                            .as_ref()
                            .map(PathBuf::from)
                            .unwrap_or_else(|| w.d.netns_path());
                        (p.describe(), kernel_xdp_prog(&ns, &p.iface), p.program_id)
                    })
                    .collect();
                (None, None, Some((old_cli.rules(), status, kernel)))
            };
            retried = Some((new.out(&args), between));
        });
        let failed = failed.unwrap();
        let (retried, (new_rules_between, new_status_between, old_between)) = retried.unwrap();
        assert!(
            !failed.status.success(),
            "{what}: exited 0; the migration was not made to fail:\n{}",
            text(&failed)
        );
        assert!(
            stderr(&failed).contains(step),
            "{what}: the error does not name the step {step:?}:\n{}",
            text(&failed)
        );
        report.assert_sealed(&what);

        if let Some((rules, status, kernel)) = old_between {
            // Not committed: the old maps and programs are still what runs.
            let strip = |r: &[Rule]| {
                r.iter()
                    .map(|r| (r.key.clone(), r.policy(), r.why.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                strip(&rules),
                strip(&old.rules),
                "{what}: the old rules changed after the failed migration"
            );
            assert_eq!(
                status.programs(),
                old.status.programs(),
                "{what}: program ids changed although the migration failed before commit:\nbefore: {}\nafter: {}",
                old.status.raw,
                status.raw
            );
            for (point, running, recorded) in kernel {
                assert_eq!(
                    running,
                    Some(recorded),
                    "{what}: the kernel does not run the old program on {point} any more"
                );
            }
        } else {
            // Committed: the new layout is the truth although the command failed.
            let status = new_status_between.unwrap_or_else(|| {
                panic!("{what}: the new status fails after a committed migration")
            });
            assert_eq!(
                status.layout,
                Some(LAYOUT),
                "{what}: the committed state is not layout {LAYOUT_VERSION}: {}",
                status.raw
            );
            assert_rules_migrated(&what, &old.rules, &new_rules_between.unwrap(), true);
        }

        let what = format!("new attach after a failure at {step}");
        assert!(
            retried.status.success(),
            "{what} failed:\n{}",
            text(&retried)
        );
        if step != "commit" {
            assert_migrated_output(
                &what,
                &stdout(&retried),
                old.status.points.len(),
                release.layout,
            );
        }
        assert_rules_migrated(&what, &old.rules, &new.rules(), true);
        let status = new.status();
        assert_upgraded(&what, &w, &old.pins, &old.status, &status);
        assert_attach_is_noop(&what, &w, &new, &status);

        drop(old);
        wait_detached(&w);
    }
}

#[test]
fn older_binary_refuses_newer_layout() {
    let _serial = serial();
    let what = "new binary on a pin dir with v99";
    let w = World::new("upd");
    let pins = PinDir::new("updp");
    let new = w.cli("new", new_bin(), &pins);
    let args = w.attach_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    new.ok(&args);
    for b in w.manual_blocks() {
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        new.ok(&b);
    }
    let rules = new.rules();
    let status = new.status();
    let v99 = pins.dir.join("v99");
    std::fs::create_dir(&v99).unwrap_or_else(|e| panic!("mkdir {}: {e}", v99.display()));

    let refused = REFUSED.to_string();
    let mut run = vec!["run"];
    run.extend_from_slice(&args[1..]);
    let local = w.d.host();
    run.extend(["--local-docker", &local]);
    let commands: Vec<Vec<&str>> = vec![
        vec!["list", "--json"],
        vec!["status", "--json"],
        vec!["stats", "--json"],
        vec!["block", &refused],
        vec!["unblock", "8610"],
        args.clone(),
        run,
        vec!["detach"],
        vec!["detach", "--purge"],
    ];
    let mut problems = Vec::new();
    for cmd in &commands {
        // `run` would keep running if it did not refuse.
        let mut c = new.command(cmd, &[]);
        let mut child = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        let all = format!("{}{}", stdout(&out), stderr(&out));
        if out.status.success() || !all.contains("newer") {
            problems.push(format!(
                "`{}` did not refuse with \"newer\":\n{}",
                cmd.join(" "),
                text(&out)
            ));
        }
    }
    std::fs::remove_dir(&v99).unwrap_or_else(|e| panic!("rmdir {}: {e}", v99.display()));
    // Read without panicking: a command that did not refuse may have
    // removed the state.
    let list_after = new.out(&["list", "--json"]);
    let strip = |r: &[Rule]| {
        r.iter()
            .map(|r| (r.key.clone(), r.policy()))
            .collect::<Vec<_>>()
    };
    match serde_json::from_slice::<Value>(&list_after.stdout) {
        Ok(v) if list_after.status.success() => {
            let rules_after = parse_rules("new", &v);
            if strip(&rules_after) != strip(&rules) {
                problems.push(format!(
                    "rules changed:\nbefore: {rules:#?}\nafter: {rules_after:#?}"
                ));
            }
        }
        _ => problems.push(format!(
            "`list --json` fails after v99 was removed:\n{}",
            text(&list_after)
        )),
    }
    let links = |s: &Status| {
        s.points
            .iter()
            .map(|p| (p.target(), p.program_id, p.link_id))
            .collect::<Vec<_>>()
    };
    match new.try_status() {
        Some(status_after) if links(&status_after) == links(&status) => {}
        Some(status_after) => problems.push(format!(
            "attach points changed:\nbefore: {}\nafter: {}",
            status.raw, status_after.raw
        )),
        None => problems.push("`status --json` fails after v99 was removed".into()),
    }
    assert!(problems.is_empty(), "{what}: {problems:#?}");
}

#[test]
fn concurrent_upgrades_are_serialised() {
    let _serial = serial();
    let what = "new attach and new run at once on a 0.1.0 node";
    let w = World::new("upe");
    let old = old_state(&w, R0_1_0, "upep");
    let new = w.cli("new", new_bin(), &old.pins);
    let args = w.attach_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let mut attach_out = None;
    let mut agent = None;
    let mut status = None;
    let report = hammer_around(&w, || {
        let start = Barrier::new(2);
        std::thread::scope(|s| {
            let attach = s.spawn(|| {
                start.wait();
                new.out(&args)
            });
            start.wait();
            let mut a = w.agent(new_bin(), &old.pins);
            attach_out = Some(attach.join().expect("attach thread"));
            status = Some(wait_upgraded(what, &new, &old.status, &mut a));
            agent = Some(a);
        });
    });
    let out = attach_out.unwrap();
    let mut agent = agent.unwrap();
    assert!(
        out.status.success(),
        "{what}: attach failed:\n{}\nagent log:\n{}",
        text(&out),
        agent.log()
    );
    let so = stdout(&out);
    let winner = if so.contains("migrated") {
        "attach"
    } else {
        "run"
    };
    assert!(
        so.contains("migrated")
            || so
                .lines()
                .filter(|l| l.contains("already attached"))
                .count()
                == old.status.points.len(),
        "{what}: attach neither migrated nor found the state upgraded:\n{so}"
    );
    log(format!("{what}: {winner} migrated"));
    report.assert_sealed(what);
    assert!(
        agent.is_running(),
        "{what}: the new agent exited:\n{}",
        agent.log()
    );
    wait_agent_rules(&w, &new, &mut agent, what);

    let status = status.unwrap();
    assert_upgraded(what, &w, &old.pins, &old.status, &status);
    assert_rules_migrated(what, &old.rules, &new.rules(), false);
    // Exactly once: nothing swaps the programs again afterwards.
    std::thread::sleep(Duration::from_secs(2));
    let later = new.status();
    assert_eq!(
        later.programs(),
        status.programs(),
        "{what}: programs changed again after the upgrade:\nthen: {}\nlater: {}",
        status.raw,
        later.raw
    );
    assert_upgraded(what, &w, &old.pins, &old.status, &later);
}
