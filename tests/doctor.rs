//! `ingress-xdp doctor`, run as its own process on real namespaces, pins
//! and programs: every failing (and each warning) check is provoked here.
//!
//! Each test builds its own node namespace (`dr...`) with a veth to a peer
//! namespace, attaches only there, and runs doctor inside that namespace
//! (network namespace only, so bpffs stays visible), with --run-dir, the
//! sandbox path and the Docker host pointed at things the test made (or at
//! paths that do not exist). Nothing of the machine's own is touched.
//!
//! * `a_node_with_the_agent_warns_only_on_the_netns_mount_then_passes`: a
//!   real one-node swarm and agent; docker, sandbox, attach points and agent
//!   are ok, and the exit status is 1 (warnings only); with the netns
//!   directory made shared, as the warning says, every check is ok and the
//!   exit status is 0; pointed at a sandbox path that does not exist on that
//!   swarm node, the sandbox check fails.
//! * `a_newer_layout_fails`, `a_pin_dir_off_bpffs_or_with_a_wrong_map_fails`,
//!   `a_point_of_another_build_warns`,
//!   `a_gone_point_fails`, `generic_where_native_works_warns`,
//!   `programs_from_another_pin_dir_are_foreign` (XDP, TCX and a classic tc
//!   filter),
//!   `a_blocked_port_in_the_ephemeral_range_warns`,
//!   `a_private_netns_dir_fails`, `a_sandbox_that_is_not_a_namespace_fails`,
//!   `no_agent_warns_and_a_dead_or_stuck_one_fails`,
//!   `without_capabilities_bpf_and_privileges_fail`,
//!   `docker_unreachable_fails`, `a_stacked_bpffs_warns`: one problem each.
//!
//! Needs root; the first test also docker.io and busybox-static.

#[path = "support/mod.rs"]
mod support;

use std::{path::Path, process::Output, time::Duration};

use aya::programs::{
    SchedClassifier,
    tc::{self, NlOptions, TcAttachOptions, TcAttachType},
};
use serde_json::Value;
use support::{Netns, TestPins, agent::AgentProc, docker::Dockerd, pki::TempDir};

/// A node namespace with `dr0` (a veth; its peer in another namespace) and
/// the paths doctor is pointed at.
struct Node {
    // Field order is drop order: unpin, then the namespaces.
    pins: TestPins,
    node: Netns,
    _peer: Netns,
    tmp: TempDir,
}

impl Node {
    fn new(tag: &str) -> Self {
        let pins = TestPins::new(&format!("dr{tag}p"));
        let node = Netns::new(&format!("dr{tag}n"));
        let peer = Netns::new(&format!("dr{tag}r"));
        support::sh(&format!(
            "ip link add dr0 netns {} type veth peer name dr1 netns {}",
            node.name, peer.name
        ));
        node.exec("ip addr add 192.0.2.1/24 dev dr0 && ip link set dr0 up");
        peer.exec("ip addr add 192.0.2.2/24 dev dr1 && ip link set dr1 up");
        let tmp = TempDir::new(&format!("dr{tag}"));
        std::fs::create_dir_all(tmp.path.join("run")).unwrap();
        Self {
            pins,
            node,
            _peer: peer,
            tmp,
        }
    }

    /// `ingress-xdp --pin-dir PINS ARGS` in the node namespace.
    fn cli(&self, pins: &Path, args: &str) -> String {
        self.node.exec(&format!(
            "{} --pin-dir {} {args}",
            support::bin(),
            pins.display()
        ))
    }

    /// The doctor's command line: our pins, run dir, no sandbox, no Docker.
    /// (`extra` may name another --sbox-netns.)
    fn doctor_cmd(&self, pins: &Path, extra: &str) -> String {
        let sbox = if extra.contains("--sbox-netns") {
            String::new()
        } else {
            format!(
                "--sbox-netns {}",
                self.tmp.path.join("netns/ingress_sbox").display()
            )
        };
        format!(
            "{} --pin-dir {} doctor --json --run-dir {} {sbox} --local-docker unix://{} {extra}",
            support::bin(),
            pins.display(),
            self.tmp.path.join("run").display(),
            self.tmp.path.join("docker.sock").display(),
        )
    }

    /// Runs doctor in the node namespace, behind `prefix` (e.g. unshare).
    fn doctor_via(&self, prefix: &str, pins: &Path, extra: &str) -> Report {
        let cmd = format!("{prefix} {}", self.doctor_cmd(pins, extra));
        Report::of(self.node.exec_out(&cmd))
    }

    fn doctor(&self) -> Report {
        self.doctor_via("", self.pins.dir(), "")
    }
}

/// What doctor printed and its exit status.
struct Report {
    code: i32,
    json: Value,
}

impl Report {
    #[track_caller]
    fn of(out: Output) -> Self {
        let text = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}): {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        Self {
            code: out.status.code().expect("exit status"),
            json,
        }
    }

    /// The checks called `name`, as (level, found, fix).
    fn named(&self, name: &str) -> Vec<(String, String, String)> {
        self.json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == name)
            .map(|c| {
                (
                    c["level"].as_str().unwrap().to_string(),
                    c["found"].as_str().unwrap().to_string(),
                    c["fix"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Asserts a check `name` at `level` whose text has `needle`.
    #[track_caller]
    fn has(&self, name: &str, level: &str, needle: &str) {
        let hits = self.named(name);
        assert!(
            hits.iter()
                .any(|(l, found, fix)| l == level
                    && (found.contains(needle) || fix.contains(needle))),
            "no {level} {name} check mentioning {needle:?} in {:#}",
            self.json
        );
        if level != "ok" {
            assert!(hits.iter().all(|(l, _, fix)| l == "ok" || !fix.is_empty()));
        }
    }

    #[track_caller]
    fn exits(&self, code: i32, worst: &str) {
        assert_eq!(self.code, code, "{:#}", self.json);
        assert_eq!(self.json["worst"], worst);
    }
}

#[test]
fn a_node_with_the_agent_warns_only_on_the_netns_mount_then_passes() {
    support::require_root();
    let d = Dockerd::start("drk");
    d.swarm_init();
    let pins = TestPins::new("drkp");
    let tmp = TempDir::new("drk");
    let run_dir = tmp.path.join("run");
    let _agent = AgentProc::start(
        &d,
        &pins.pins,
        &["--run-dir", &run_dir.display().to_string()],
    );
    let doctor = || {
        Report::of(support::sh_out(&format!(
            "nsenter --net={} {} --pin-dir {} doctor --json --run-dir {} --local-docker {} --sbox-netns {}",
            d.netns_path().display(),
            support::bin(),
            pins.dir().display(),
            run_dir.display(),
            d.host(),
            d.sbox_netns().display()
        )))
    };
    let start = std::time::Instant::now();
    let report = loop {
        let r = doctor();
        if r.named("attach point").len() == 2 && r.named("agent")[0].0 == "ok" {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{:#}", r.json);
        std::thread::sleep(Duration::from_millis(200));
    };
    report.has("docker", "ok", "swarm manager");
    report.has("sandbox", "ok", "default route on eth1");
    report.has("attach point", "ok", "attached");
    report.has("programs", "ok", "this build");
    report.has("agent", "ok", "looped");
    report.has("pin directory", "ok", "layout");
    let not_ok: Vec<String> = report.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["level"] != "ok")
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(not_ok, ["netns directory"], "{:#}", report.json);
    report.exits(1, "warn");

    // The fix doctor names, applied: Docker's netns directory a shared
    // mount (recursively, as dockerd already runs: the sandbox's bind stays
    // visible). Now every check is ok and doctor exits 0.
    let netns_dir = d.sbox_netns().parent().unwrap().to_path_buf();
    support::sh(&format!(
        "mount --rbind {n} {n} && mount --make-rshared {n}",
        n = netns_dir.display()
    ));
    let healthy = doctor();
    healthy.has("netns directory", "ok", "shared");
    healthy.has("sandbox", "ok", "default route on eth1");
    healthy.exits(0, "ok");

    // A swarm node whose sandbox is not where doctor looks (an agent's
    // container without Docker's netns directory bound).
    let elsewhere = Report::of(support::sh_out(&format!(
        "nsenter --net={} {} --pin-dir {} doctor --json --run-dir {} --local-docker {} --sbox-netns {}",
        d.netns_path().display(),
        support::bin(),
        pins.dir().display(),
        run_dir.display(),
        d.host(),
        tmp.path.join("netns/ingress_sbox").display()
    )));
    elsewhere.has("sandbox", "fail", "in a swarm but there is no ingress_sbox");
    elsewhere.exits(2, "fail");
}

#[test]
fn a_newer_layout_fails() {
    let n = Node::new("l");
    std::fs::create_dir(n.pins.dir().join("v9")).unwrap();
    let r = n.doctor();
    r.has("pin directory", "fail", "layout 9");
    r.exits(2, "fail");
}

#[test]
fn a_pin_dir_off_bpffs_or_with_a_wrong_map_fails() {
    let n = Node::new("w");
    let off = n.tmp.path.join("pins");
    std::fs::create_dir_all(&off).unwrap();
    let r = n.doctor_via("", &off, "");
    r.has("pin directory", "fail", "not on a bpf filesystem");
    r.exits(2, "fail");
    // A map of another shape where STATE belongs (a rename within bpffs).
    let layout = n.pins.pins.layout_dir();
    std::fs::rename(layout.join("STATE"), layout.join("STATE_moved")).unwrap();
    std::fs::rename(layout.join("RULE_ORIGIN"), layout.join("STATE")).unwrap();
    let r = n.doctor();
    r.has("pin directory", "fail", "does not match");
    r.exits(2, "fail");
}

#[test]
fn a_point_of_another_build_warns() {
    use aya::maps::{Array, Map, MapData};
    use ingress_xdp_common::AttachInfo;

    let n = Node::new("b");
    n.cli(n.pins.dir(), "attach --iface dr0 --no-sbox");
    n.doctor().has("programs", "ok", "this build");
    let info_pin = n.pins.pins.map(ingress_xdp::pins::MAP_ATTACH_INFO);
    let mut info: Array<MapData, AttachInfo> =
        Map::from_map_data(MapData::from_pin(&info_pin).unwrap())
            .unwrap()
            .try_into()
            .unwrap();
    let mut record = info.get(&0, 0).unwrap();
    assert_eq!(record.in_use, 1);
    record.build = [0; ingress_xdp_common::BUILD_LEN];
    record.build[..18].copy_from_slice(b"0.1.9+000000000000");
    info.set(0, record, 0).unwrap();
    n.doctor()
        .has("programs", "warn", "dr0 (xdp) runs 0.1.9+000000000000");
}

#[test]
fn a_gone_point_fails() {
    let n = Node::new("g");
    n.cli(n.pins.dir(), "attach --iface dr0 --no-sbox");
    n.doctor().has("attach point", "ok", "dr0 (xdp): attached");
    n.node.exec("ip link del dr0");
    let r = n.doctor();
    r.has(
        "attach point",
        "fail",
        "dr0 (xdp): the interface or its namespace is gone",
    );
    r.exits(2, "fail");
}

#[test]
fn generic_where_native_works_warns() {
    let n = Node::new("m");
    n.cli(
        n.pins.dir(),
        "attach --iface dr0 --no-sbox --xdp-mode generic",
    );
    n.doctor()
        .has("xdp mode", "warn", "its driver veth runs XDP natively");
    n.cli(n.pins.dir(), "detach");
    n.cli(
        n.pins.dir(),
        "attach --iface dr0 --no-sbox --xdp-mode native",
    );
    assert!(n.doctor().named("xdp mode").is_empty());
}

#[test]
fn programs_from_another_pin_dir_are_foreign() {
    let n = Node::new("f");
    let other = TestPins::new("drfo");
    n.cli(n.pins.dir(), "attach --iface dr0 --no-sbox --hook tc");
    assert!(n.doctor().named("other programs").is_empty());
    n.cli(
        other.dir(),
        "attach --iface dr0 --no-sbox --xdp-mode native",
    );
    let status: Value = serde_json::from_str(&n.cli(other.dir(), "status --json")).unwrap();
    let xdp_prog = status["attach_points"][0]["point"]["program_id"]
        .as_u64()
        .unwrap();
    n.doctor()
        .has("other programs", "warn", &format!("xdp program {xdp_prog}"));
    let status: Value = serde_json::from_str(&n.cli(n.pins.dir(), "status --json")).unwrap();
    let tc_prog = status["attach_points"][0]["point"]["program_id"]
        .as_u64()
        .unwrap();
    n.doctor_via("", other.dir(), "").has(
        "other programs",
        "warn",
        &format!("tc program {tc_prog}"),
    );

    // A classic `tc filter ... bpf` (cls_bpf on clsact), as older tools
    // attach classifiers: our own classifier, loaded again beside the other
    // pin directory's maps and attached through netlink. Everything runs in
    // the node's namespace, so the filter is also removed there.
    let report = ingress_xdp::sys::in_netns(Some(&n.node.path()), || {
        let mut ebpf = ingress_xdp::pins::load_object(&other.pins.layout_dir(), 9)?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(ingress_xdp::pins::PROG_TC)
            .unwrap()
            .try_into()?;
        prog.load()?;
        let id = prog.info()?.id();
        tc::qdisc_add_clsact("dr0")?;
        prog.attach_with_options(
            "dr0",
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )?;
        Ok((id, n.doctor()))
    })
    .unwrap();
    let (filter_prog, report) = report;
    report.has(
        "other programs",
        "warn",
        &format!("tc filter program {filter_prog} (cls_bpf)"),
    );
    report.has("other programs", "warn", "tc filter show dev dr0 ingress");
}

#[test]
fn a_blocked_port_in_the_ephemeral_range_warns() {
    let n = Node::new("e");
    n.node
        .exec("sysctl -qw net.ipv4.ip_local_port_range='40000 40100'");
    n.cli(n.pins.dir(), "block 8080 39990-40000/udp");
    n.doctor()
        .has("ports", "warn", "40000-40100: 39990-40000/udp");
    n.cli(n.pins.dir(), "unblock 39990-40000/udp");
    n.doctor().has("ports", "ok", "none inside");
}

#[test]
fn a_private_netns_dir_fails() {
    let n = Node::new("p");
    let sbox = Netns::new("drps");
    // `ip netns add` made /run/netns a shared mount; a new mount namespace
    // with private propagation sees it private (as an agent bound without
    // rslave would).
    let shared = n.doctor_via(
        "",
        n.pins.dir(),
        &format!("--sbox-netns {}", sbox.path().display()),
    );
    shared.has("netns directory", "ok", "shared");
    shared.has("sandbox", "warn", "no default route");
    let private = n.doctor_via(
        "unshare --mount --propagation private",
        n.pins.dir(),
        &format!("--sbox-netns {}", sbox.path().display()),
    );
    private.has("netns directory", "fail", "private mount");
    private.has("netns directory", "fail", "rslave");
    private.exits(2, "fail");
}

#[test]
fn a_sandbox_that_is_not_a_namespace_fails() {
    let n = Node::new("s");
    let fake = n.tmp.path.join("netns/ingress_sbox");
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    n.doctor().has("sandbox", "warn", "no ingress_sbox");
    // What a sandbox made after a private bind looks like: an empty file.
    std::fs::write(&fake, "").unwrap();
    let r = n.doctor();
    r.has("sandbox", "fail", "setns");
    r.exits(2, "fail");
}

#[test]
fn no_agent_warns_and_a_dead_or_stuck_one_fails() {
    use ingress_xdp::health::{self, Heartbeat};

    let n = Node::new("a");
    let run = n.tmp.path.join("run");
    n.doctor().has("agent", "warn", "no heartbeat");
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let now = ingress_xdp::sys::now_secs();
    health::write(
        &run,
        &Heartbeat {
            pid,
            updated_at: now,
            ..Heartbeat::default()
        },
    )
    .unwrap();
    n.doctor()
        .has("agent", "fail", &format!("process {pid} is gone"));
    health::write(
        &run,
        &Heartbeat {
            pid: std::process::id(),
            updated_at: now - 100,
            problems: vec!["a test problem".into()],
            ..Heartbeat::default()
        },
    )
    .unwrap();
    let r = n.doctor();
    r.has("agent", "fail", "is stuck");
    r.has("deployment", "fail", "a test problem");
    r.exits(2, "fail");
}

#[test]
fn without_capabilities_bpf_and_privileges_fail() {
    let n = Node::new("c");
    n.cli(n.pins.dir(), "attach --iface dr0 --no-sbox");
    let r = n.doctor_via(
        "setpriv --inh-caps=-all --bounding-set=-all",
        n.pins.dir(),
        "",
    );
    r.has("bpf(2)", "fail", "BPF_PROG_LOAD");
    r.has("privileges", "fail", "CAP_NET_ADMIN");
    r.has("privileges", "fail", "CAP_BPF");
    r.exits(2, "fail");
}

#[test]
fn docker_unreachable_fails() {
    let n = Node::new("d");
    let r = n.doctor();
    r.has("docker", "fail", "docker.sock");
    r.has("docker", "fail", "--local-docker");
    r.exits(2, "fail");
}

#[test]
fn a_stacked_bpffs_warns() {
    let n = Node::new("k");
    n.doctor().has("bpffs", "ok", "mounted once");
    let r = n.doctor_via(
        "unshare --mount --propagation private sh -c 'mount -t bpf bpf /sys/fs/bpf && exec \"$0\" \"$@\"'",
        n.pins.dir(),
        "",
    );
    r.has("bpffs", "warn", "mounted 2 times");
}
