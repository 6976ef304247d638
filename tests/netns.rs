//! End-to-end tests in network namespaces, rebuilding the routing-mesh path
//! of design.md on one machine:
//!
//! ```text
//!  remote ──r0/n0── node ──gwbr (docker_gwbridge)──gwv/eth1── sbox ──eth0/eth0── task
//!  10.77.0.1,.3     10.77.0.2        172.18.0.1         172.18.0.2  10.0.0.2     10.0.0.5:80
//!  fd77::1,::3      fd77::2
//! ```
//!
//! The node has Docker's DOCKER-INGRESS nat rules (DNAT of published ports to
//! 172.18.0.2, port kept, from PREROUTING and OUTPUT, plus MASQUERADE and
//! route_localnet for localhost); the sbox has a DNAT+SNAT stand-in for IPVS
//! that forwards published ports to the task's port 80. ingress-xdp attaches
//! to the node's NIC (n0) and to the sbox's eth1, run from the node namespace
//! as a separate process per command, exactly as an operator would.

#[path = "support/mod.rs"]
mod support;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Output,
    time::Duration,
};

use support::{
    Netns, TestPins,
    traffic::{self, Reach, Servers},
};

const REMOTE: &str = "10.77.0.1";
const REMOTE_ALT: &str = "10.77.0.3";
const NODE: &str = "10.77.0.2";
const REMOTE6: &str = "fd77::1";
const REMOTE6_ALT: &str = "fd77::3";
const NODE6: &str = "fd77::2";
const BLOCKED: u16 = 8123;
const OPEN: u16 = 8124;

/// A client attempt, run by `served` (patiently) or `dropped` (briefly).
type Probe<'a> = Box<dyn Fn(Duration) -> Reach + 'a>;

fn tcp_probe<'a>(ns: &'a Netns, src: Option<IpAddr>, dst: SocketAddr) -> Probe<'a> {
    Box::new(move |wait| traffic::tcp(&ns.path(), src, dst, wait))
}

fn udp_probe<'a>(ns: &'a Netns, src: Option<IpAddr>, dst: SocketAddr) -> Probe<'a> {
    Box::new(move |wait| traffic::udp(&ns.path(), src, dst, wait))
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

struct Mesh {
    // Field order is drop order: detach and unpin, stop servers, then delete
    // the namespaces (which deletes their interfaces).
    pins: TestPins,
    _servers: Servers,
    remote: Netns,
    node: Netns,
    sbox: Netns,
    _task: Netns,
}

impl Mesh {
    fn new(tag: &str) -> Self {
        let pins = TestPins::new(&format!("{tag}p"));
        let remote = Netns::new(&format!("{tag}r"));
        let node = Netns::new(&format!("{tag}n"));
        let sbox = Netns::new(&format!("{tag}s"));
        let task = Netns::new(&format!("{tag}t"));

        support::sh(&format!(
            "ip link add n0 netns {} type veth peer name r0 netns {}",
            node.name, remote.name
        ));
        support::sh(&format!(
            "ip link add gwv netns {} type veth peer name eth1 netns {}",
            node.name, sbox.name
        ));
        support::sh(&format!(
            "ip link add eth0 netns {} type veth peer name eth0 netns {}",
            sbox.name, task.name
        ));
        remote.exec(&format!(
            "ip addr add {REMOTE}/24 dev r0 && ip addr add {REMOTE_ALT}/24 dev r0 && \
             ip addr add {REMOTE6}/64 dev r0 nodad && ip addr add {REMOTE6_ALT}/64 dev r0 nodad && \
             ip link set r0 up"
        ));
        node.exec(&format!(
            "ip addr add {NODE}/24 dev n0 && ip addr add {NODE6}/64 dev n0 nodad && ip link set n0 up && \
             ip link add gwbr type bridge && ip addr add 172.18.0.1/16 dev gwbr && ip link set gwbr up && \
             ip link set gwv master gwbr && ip link set gwv up && \
             sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.gwbr.route_localnet=1"
        ));
        sbox.exec(
            "ip addr add 172.18.0.2/16 dev eth1 && ip link set eth1 up && \
             ip route add default via 172.18.0.1 && \
             ip addr add 10.0.0.2/24 dev eth0 && ip link set eth0 up && \
             sysctl -qw net.ipv4.ip_forward=1",
        );
        task.exec(
            "ip addr add 10.0.0.5/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.0.2",
        );

        // What Docker installs in the host namespace for ingress ports.
        let mut node_nat = vec![
            "iptables -t nat -N DOCKER-INGRESS".to_string(),
            "iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER-INGRESS".into(),
            "iptables -t nat -A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER-INGRESS".into(),
            "iptables -t nat -A POSTROUTING -m addrtype --src-type LOCAL -o gwbr -j MASQUERADE"
                .into(),
        ];
        // The IPVS stand-in inside the sandbox.
        let mut sbox_nat =
            vec!["iptables -t nat -A POSTROUTING -o eth0 -j SNAT --to-source 10.0.0.2".to_string()];
        for port in [BLOCKED, OPEN] {
            for proto in ["tcp", "udp"] {
                node_nat.push(format!(
                    "iptables -t nat -A DOCKER-INGRESS -p {proto} --dport {port} -j DNAT --to-destination 172.18.0.2:{port}"
                ));
                sbox_nat.push(format!(
                    "iptables -t nat -A PREROUTING -p {proto} --dport {port} -j DNAT --to-destination 10.0.0.5:80"
                ));
            }
        }
        node.exec(&node_nat.join(" && "));
        sbox.exec(&sbox_nat.join(" && "));

        let mut servers = Servers::new();
        servers.tcp(&task.path(), addr("0.0.0.0", 80), "task");
        servers.udp(&task.path(), addr("0.0.0.0", 80), "task");
        for port in [BLOCKED, OPEN] {
            servers.tcp(&node.path(), addr(NODE6, port), "node6");
            servers.udp(&node.path(), addr(NODE6, port), "node6");
        }
        // A service on the remote side that the node itself connects out to.
        servers.tcp(&remote.path(), addr(REMOTE, BLOCKED), "remote");

        Self {
            pins,
            _servers: servers,
            remote,
            node,
            sbox,
            _task: task,
        }
    }

    /// Runs the CLI as its own process, inside the node namespace.
    fn cli(&self, args: &str) -> Output {
        self.node.exec_out(&format!(
            "{} --pin-dir {} {args}",
            support::bin(),
            self.pins.dir().display()
        ))
    }

    #[track_caller]
    fn cli_ok(&self, args: &str) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ingress-xdp {args} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn attach(&self, extra: &str) -> String {
        self.cli_ok(&format!(
            "attach --iface n0 --sbox-netns {} {extra}",
            self.sbox.path().display()
        ))
    }

    fn remote_tcp(&self, port: u16) -> Probe<'_> {
        tcp_probe(&self.remote, ip(REMOTE), addr(NODE, port))
    }

    fn remote_udp(&self, port: u16) -> Probe<'_> {
        udp_probe(&self.remote, ip(REMOTE), addr(NODE, port))
    }

    fn local_tcp(&self, port: u16) -> Probe<'_> {
        tcp_probe(&self.node, None, addr("127.0.0.1", port))
    }

    fn local_udp(&self, port: u16) -> Probe<'_> {
        udp_probe(&self.node, None, addr("127.0.0.1", port))
    }

    fn remote6_tcp(&self, port: u16) -> Probe<'_> {
        tcp_probe(&self.remote, ip(REMOTE6), addr(NODE6, port))
    }

    fn remote6_udp(&self, port: u16) -> Probe<'_> {
        udp_probe(&self.remote, ip(REMOTE6), addr(NODE6, port))
    }

    /// Packets counted by the node's DNAT rule for `port`/tcp.
    fn dnat_packets(&self, port: u16) -> u64 {
        let table = self.node.exec("iptables -t nat -L DOCKER-INGRESS -v -x -n");
        table
            .lines()
            .find(|l| l.contains("tcp") && l.contains(&format!("dpt:{port} ")))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no DNAT rule for {port}/tcp in:\n{table}"))
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok("stats --json")).expect("stats --json")
    }
}

#[track_caller]
fn served(what: &str, probe: Probe<'_>, reply: &str) {
    assert_eq!(
        probe(traffic::PATIENCE),
        Reach::Served(reply.into()),
        "{what} should be served"
    );
}

#[track_caller]
fn dropped(what: &str, probe: Probe<'_>) {
    assert_eq!(
        probe(traffic::SILENCE),
        Reach::Silent,
        "{what} should be dropped (silence)"
    );
}

/// The whole operator story for one hook.
fn mesh_blocks_published_ports(hook: &str, tag: &str) {
    let mesh = Mesh::new(tag);

    // Without us, the mesh serves every published port, from outside and locally.
    served("remote tcp before attach", mesh.remote_tcp(BLOCKED), "task");
    served("local tcp before attach", mesh.local_tcp(BLOCKED), "task");
    served("remote udp before attach", mesh.remote_udp(BLOCKED), "task");

    let out = mesh.attach(&format!("--hook {hook}"));
    assert!(out.contains(&format!("attached n0: {hook}")), "{out}");
    assert!(
        out.contains("attached eth1 in"),
        "sbox default-route iface: {out}"
    );
    served(
        "remote tcp after attach, no rules",
        mesh.remote_tcp(BLOCKED),
        "task",
    );

    // A second process changes the live map.
    let out = mesh.cli_ok(&format!("block {BLOCKED} {BLOCKED}/udp"));
    assert!(out.contains(&format!("blocked {BLOCKED}/tcp")), "{out}");

    let dnat_before = mesh.dnat_packets(BLOCKED);
    for _ in 0..3 {
        dropped("remote tcp to blocked port", mesh.remote_tcp(BLOCKED));
    }
    assert_eq!(
        mesh.dnat_packets(BLOCKED),
        dnat_before,
        "blocked remote SYNs must die before netfilter's DNAT"
    );
    dropped(
        "local tcp (localhost) to blocked port",
        mesh.local_tcp(BLOCKED),
    );
    dropped("remote udp to blocked port", mesh.remote_udp(BLOCKED));
    dropped("local udp to blocked port", mesh.local_udp(BLOCKED));
    dropped("remote IPv6 tcp to blocked port", mesh.remote6_tcp(BLOCKED));
    dropped("remote IPv6 udp to blocked port", mesh.remote6_udp(BLOCKED));

    served("remote tcp to open port", mesh.remote_tcp(OPEN), "task");
    served("local tcp to open port", mesh.local_tcp(OPEN), "task");
    served("remote udp to open port", mesh.remote_udp(OPEN), "task");
    served("local udp to open port", mesh.local_udp(OPEN), "task");
    served(
        "remote IPv6 tcp to open port",
        mesh.remote6_tcp(OPEN),
        "node6",
    );
    served(
        "remote IPv6 udp to open port",
        mesh.remote6_udp(OPEN),
        "node6",
    );
    // The counter does move for traffic that is not blocked.
    let dnat_open_before = mesh.dnat_packets(OPEN);
    served("remote tcp to open port", mesh.remote_tcp(OPEN), "task");
    assert!(mesh.dnat_packets(OPEN) > dnat_open_before);

    // Replies to the node's own outgoing connection to a remote service on the
    // blocked port number carry it as the SOURCE port: not dropped.
    served(
        "node's outgoing tcp to remote:BLOCKED",
        tcp_probe(&mesh.node, None, addr(REMOTE, BLOCKED)),
        "remote",
    );

    // Counters: the NIC dropped the remote SYNs, the sbox veth the local ones.
    let stats = mesh.stats();
    let points = stats["attach_points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{stats}");
    for p in points {
        assert_eq!(p["hook"], hook);
        assert!(p["counters"]["dropped"].as_u64().unwrap() > 0, "{p}");
        assert!(p["counters"]["passed"].as_u64().unwrap() > 0, "{p}");
    }
    let rule = stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["proto"] == "tcp" && r["low"] == BLOCKED)
        .expect("rule in stats");
    assert!(rule["packets"].as_u64().unwrap() >= 4, "{rule}");

    // unblock restores, per protocol.
    mesh.cli_ok(&format!("unblock {BLOCKED}/udp"));
    served("remote udp after unblock", mesh.remote_udp(BLOCKED), "task");
    dropped("remote tcp still blocked", mesh.remote_tcp(BLOCKED));
    mesh.cli_ok(&format!("unblock {BLOCKED}"));
    served("remote tcp after unblock", mesh.remote_tcp(BLOCKED), "task");
    served("local tcp after unblock", mesh.local_tcp(BLOCKED), "task");

    // detach restores even with the rule still in the map, and keeps it.
    mesh.cli_ok(&format!("block {BLOCKED}"));
    dropped("remote tcp blocked again", mesh.remote_tcp(BLOCKED));
    let out = mesh.cli_ok("detach");
    assert!(out.contains("1 rule(s) kept"), "{out}");
    served("remote tcp after detach", mesh.remote_tcp(BLOCKED), "task");
    served("local tcp after detach", mesh.local_tcp(BLOCKED), "task");
    assert!(mesh.cli_ok("status").contains("nothing attached"));
    // Re-attaching applies the kept rule again.
    mesh.attach(&format!("--hook {hook}"));
    dropped("remote tcp after re-attach", mesh.remote_tcp(BLOCKED));
}

#[test]
fn xdp_blocks_published_ports_remote_and_local() {
    mesh_blocks_published_ports("xdp", "x");
}

#[test]
fn tc_blocks_published_ports_remote_and_local() {
    mesh_blocks_published_ports("tc", "c");
}

#[test]
fn allow_from_and_audit() {
    let mesh = Mesh::new("a");
    mesh.attach("");
    mesh.cli_ok(&format!(
        "block {BLOCKED} --allow-from {REMOTE_ALT}/32 --allow-from {REMOTE6_ALT}/128"
    ));
    served(
        "allowlisted IPv4 source",
        tcp_probe(&mesh.remote, ip(REMOTE_ALT), addr(NODE, BLOCKED)),
        "task",
    );
    dropped("other IPv4 source", mesh.remote_tcp(BLOCKED));
    served(
        "allowlisted IPv6 source",
        tcp_probe(&mesh.remote, ip(REMOTE6_ALT), addr(NODE6, BLOCKED)),
        "node6",
    );
    dropped("other IPv6 source", mesh.remote6_tcp(BLOCKED));
    // Local traffic reaches the sbox masqueraded (172.18.0.1): not allowlisted.
    dropped("local tcp", mesh.local_tcp(BLOCKED));

    let list: serde_json::Value = serde_json::from_str(&mesh.cli_ok("list --json")).unwrap();
    let rule = &list["rules"][0];
    assert_eq!(
        rule["allow_from"],
        serde_json::json!([format!("{REMOTE_ALT}/32"), format!("{REMOTE6_ALT}/128")])
    );

    // Re-blocking without --allow-from replaces the rule: now nobody passes.
    mesh.cli_ok(&format!("block {BLOCKED}"));
    dropped(
        "formerly allowlisted source",
        tcp_probe(&mesh.remote, ip(REMOTE_ALT), addr(NODE, BLOCKED)),
    );

    // Audit: counted as would-drop, nothing dropped.
    mesh.cli_ok(&format!("block {OPEN} --audit"));
    for _ in 0..2 {
        served("audited port", mesh.remote_tcp(OPEN), "task");
    }
    let stats = mesh.stats();
    let audited: u64 = stats["attach_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["counters"]["audited"].as_u64().unwrap())
        .sum();
    assert!(audited >= 2, "{stats}");
    let rule = stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["low"] == OPEN)
        .unwrap();
    assert_eq!(rule["mode"], "audit");
    assert!(rule["packets"].as_u64().unwrap() >= 2, "{rule}");
    let list = mesh.cli_ok("list");
    assert!(
        list.contains(&format!("{OPEN}/tcp")) && list.contains("audit"),
        "{list}"
    );
}

#[test]
fn attach_is_idempotent_and_reports_modes() {
    let mesh = Mesh::new("i");
    mesh.attach("--xdp-mode generic");
    let again = mesh.attach("");
    assert_eq!(again.matches("already attached").count(), 2, "{again}");
    let status: serde_json::Value = serde_json::from_str(&mesh.cli_ok("status --json")).unwrap();
    let points = status["attach_points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{status}");
    for p in points {
        assert_eq!(p["point"]["mode"], "generic");
        assert_eq!(p["presence"], "attached");
        assert!(p["point"]["program_id"].as_u64().unwrap() > 0);
    }
    let sbox = points
        .iter()
        .find(|p| p["point"]["iface"] == "eth1")
        .unwrap();
    assert_eq!(
        sbox["point"]["netns"],
        mesh.sbox.path().display().to_string()
    );

    // Switching hooks needs an explicit detach.
    let out = mesh.cli("attach --iface n0 --no-sbox --hook tc");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("detach"));

    // The drops outlive every CLI process: nothing of ours is running now.
    mesh.cli_ok(&format!("block {BLOCKED}"));
    dropped("blocked with no process running", mesh.remote_tcp(BLOCKED));
}

#[test]
fn bad_input_is_refused_and_rules_stay() {
    let mesh = Mesh::new("b");
    mesh.attach("");
    mesh.cli_ok(&format!("block {BLOCKED} 53/udp"));
    let before = mesh.cli_ok("list --json");

    let cases: &[(&str, &str)] = &[
        ("block 0", "port 0 is out of range"),
        ("block 70000", "port 70000 is out of range"),
        ("block 80/icmp", "unknown protocol"),
        ("block 90-80", "inverted"),
        ("block 80 --allow-from 10.0.0.0/33", "too long"),
        (
            "block 80 --allow-from 10.1.0.0/8",
            "did you mean 10.0.0.0/8",
        ),
        ("unblock http", "is not a port number"),
        ("attach --iface nope0", "interface not found"),
        (
            "attach --iface n0 --sbox-netns /nonexistent/ns",
            "no such file",
        ),
        (
            "attach --iface n0 --sbox-netns /etc/hostname",
            "network namespace",
        ),
        ("attach --hook bogus", "invalid value"),
    ];
    for (args, message) in cases {
        let out = mesh.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args} should fail");
        assert!(
            stderr.contains(message),
            "{args}: expected {message:?} in {stderr}"
        );
        assert_eq!(
            mesh.cli_ok("list --json"),
            before,
            "{args} changed the rules"
        );
    }
    // Runtime errors are one line.
    let out = mesh.cli("attach --iface nope0");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    dropped("still blocked after bad input", mesh.remote_tcp(BLOCKED));

    // Not root.
    let out = mesh.node.exec_out(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups {} --pin-dir {} list",
        support::bin(),
        mesh.pins.dir().display()
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must run as root"));

    // No BPF for this process: root without CAP_BPF / CAP_SYS_ADMIN.
    let fresh = PathBuf::from("/sys/fs/bpf").join(support::unique("nobpf"));
    let out = mesh.node.exec_out(&format!(
        "setpriv --bounding-set=-bpf,-sys_admin,-perfmon {} --pin-dir {} attach --iface n0 --no-sbox",
        support::bin(),
        fresh.display()
    ));
    let _ = std::fs::remove_dir_all(&fresh);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refused BPF (EPERM)"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Nothing attached under another pin dir.
    let out = mesh.node.exec_out(&format!(
        "{} --pin-dir /sys/fs/bpf/{} list",
        support::bin(),
        support::unique("none")
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing attached"));

    // A blocked port inside the ephemeral range gets a warning.
    mesh.node
        .exec("sysctl -qw net.ipv4.ip_local_port_range='40000 41000'");
    let out = mesh.cli("block 40500");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ip_local_port_range 40000-41000"));
}

/// From a private mount namespace (as a tool that unshares one would run
/// us) the CLI takes its pin directory from the environment and, without
/// --iface, the interface holding the default route (v1), and pins into
/// the host's bpffs, which that namespace still sees. Once bpffs is gone
/// there, a bpffs mounted in its place would die with the command, and the
/// attach with it: the CLI refuses and mounts nothing.
#[test]
fn pin_dir_from_env_default_route_iface_and_no_private_bpffs() {
    let ns = Netns::new("m");
    ns.exec(
        "ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up && \
         ip addr add 10.99.0.1/24 dev v1 && ip route add default via 10.99.0.2",
    );
    let dir = PathBuf::from("/sys/fs/bpf").join(support::unique("env"));
    let _cleanup = TestPins::removed_on_drop(&dir);
    let in_private_mount_ns = |script: String| {
        support::sh_out(&format!(
            "unshare --mount --propagation private {}",
            ns.wrap(&format!(
                "export INGRESS_XDP_PIN_DIR={}; {script}",
                dir.display()
            ))
        ))
    };
    let bin = support::bin();
    let out = in_private_mount_ns(format!(
        "{bin} attach --no-sbox && {bin} block 80 && {bin} list"
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("attached v1: xdp"), "{stdout}");
    assert!(stdout.contains("80/tcp"), "{stdout}");
    assert!(dir.exists(), "the pins are in the host's bpffs");
    let out = support::sh_out(&format!("{bin} detach --purge --pin-dir {}", dir.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = in_private_mount_ns(format!(
        "umount /sys/fs/bpf 2>/dev/null; \
         if mountpoint -q /sys/fs/bpf; then echo still-mounted; exit 3; fi; \
         {bin} attach --no-sbox; rc=$?; \
         if mountpoint -q /sys/fs/bpf; then echo mounted-one; fi; exit $rc"
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("not the host's bpffs"), "{stderr}");
    assert!(!stdout.contains("mounted-one"), "{stdout}");
    assert!(!dir.exists(), "nothing pinned anywhere");
}

/// (id, program id, link id, build) of every attach point, from `status --json`.
fn points(mesh: &Mesh) -> Vec<(u64, u64, u64, String)> {
    let status: serde_json::Value = serde_json::from_str(&mesh.cli_ok("status --json")).unwrap();
    status["attach_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let p = &p["point"];
            (
                p["id"].as_u64().unwrap(),
                p["program_id"].as_u64().unwrap(),
                p["link_id"].as_u64().unwrap(),
                p["build"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A point attached by another build of the same layout gets this build's
/// program swapped into its pinned link (new program id, same link); this
/// build's own points are left alone. The older build is made by rewriting
/// the build recorded for each point, which is what `attach` compares.
#[test]
fn a_newer_build_swaps_its_program_in_place() {
    use aya::maps::{Array, Map, MapData};
    use ingress_xdp_common::AttachInfo;

    let mesh = Mesh::new("u");
    mesh.attach("");
    mesh.cli_ok(&format!("block {BLOCKED}"));
    let before = points(&mesh);
    assert_eq!(before.len(), 2);
    let status: serde_json::Value = serde_json::from_str(&mesh.cli_ok("status --json")).unwrap();
    assert_eq!(status["layout"], ingress_xdp_common::LAYOUT_VERSION);
    for p in &before {
        assert_eq!(p.3, status["build"].as_str().unwrap(), "{status}");
    }

    let info_pin = mesh.pins.pins.map(ingress_xdp::pins::MAP_ATTACH_INFO);
    let mut info: Array<MapData, AttachInfo> =
        Map::from_map_data(MapData::from_pin(&info_pin).unwrap())
            .unwrap()
            .try_into()
            .unwrap();
    for (id, ..) in &before {
        let mut record = info.get(&(*id as u32), 0).unwrap();
        record.build = [0; ingress_xdp_common::BUILD_LEN];
        record.build[..18].copy_from_slice(b"0.1.9+000000000000");
        info.set(*id as u32, record, 0).unwrap();
    }
    let shown = mesh.cli_ok("status");
    assert!(
        shown.contains("0.1.9+000000000000 (older: run attach)"),
        "{shown}"
    );

    let out = mesh.attach("");
    assert_eq!(out.matches("upgraded").count(), 2, "{out}");
    assert!(out.contains("build 0.1.9+000000000000 -> "), "{out}");
    let after = points(&mesh);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.0, new.0);
        assert_ne!(old.1, new.1, "a new program on point {}", old.0);
        assert_eq!(old.2, new.2, "the same link on point {}", old.0);
        assert_eq!(old.3, new.3, "this build recorded on point {}", old.0);
    }
    dropped("blocked port after the swap", mesh.remote_tcp(BLOCKED));
    served("open port after the swap", mesh.remote_tcp(OPEN), "task");

    let again = mesh.attach("");
    assert_eq!(again.matches("already attached").count(), 2, "{again}");
    assert_eq!(points(&mesh), after, "the same build changes nothing");
}

/// An agent in a container records the sandbox under its own bind of the
/// exec root, a path the host does not have. The host finds that namespace by
/// its identity among its namespace binds: `status` says attached and names
/// both paths, and the host's `attach` leaves the point alone instead of
/// taking it for a stale slot and re-attaching (which would open a window).
#[test]
fn a_sandbox_recorded_under_a_container_path_is_found_on_the_host() {
    let mesh = Mesh::new("c");
    let view = support::pki::TempDir::new("cview");
    let recorded = view.path.join("netns").join("ingress_sbox");
    // The container's view: a private mount namespace in which the sandbox
    // is bound at a path that exists nowhere else.
    mesh.node.exec(&format!(
        "unshare --mount --propagation private sh -c \"mount -t tmpfs view {v} && mkdir {v}/netns && \
         touch {r} && mount --bind {sbox} {r} && {bin} --pin-dir {pins} attach --iface n0 --sbox-netns {r}\"",
        v = view.path.display(),
        r = recorded.display(),
        sbox = mesh.sbox.path().display(),
        bin = support::bin(),
        pins = mesh.pins.dir().display(),
    ));
    assert!(
        !recorded.exists(),
        "the recorded path is the container's alone"
    );
    mesh.cli_ok(&format!("block {BLOCKED}"));

    let status: serde_json::Value = serde_json::from_str(&mesh.cli_ok("status --json")).unwrap();
    let sbox = status["attach_points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["point"]["iface"] == "eth1")
        .cloned()
        .unwrap_or_else(|| panic!("no sandbox point: {status}"));
    assert_eq!(sbox["point"]["netns"], recorded.display().to_string());
    // The mount table names the bind with symlinks resolved (/run/netns).
    let host_path = std::fs::canonicalize(mesh.sbox.path()).unwrap();
    assert_eq!(sbox["netns_here"], host_path.display().to_string());
    assert_eq!(sbox["presence"], "attached", "{status}");
    let shown = mesh.cli_ok("status");
    assert!(
        shown.contains(&format!("(recorded as {})", recorded.display())),
        "{shown}"
    );

    let before = points(&mesh);
    let again = mesh.attach("");
    assert_eq!(again.matches("already attached").count(), 2, "{again}");
    assert_eq!(points(&mesh), before, "nothing re-attached");
    dropped(
        "blocked through the container's attach",
        mesh.remote_tcp(BLOCKED),
    );
}

/// `stats --watch` redraws one table in place on a terminal (cursor home,
/// each line cleared to its end, the rest of the screen cleared), and prints
/// plain dated tables when piped.
#[test]
fn stats_watch_redraws_on_a_terminal_and_prints_plain_when_piped() {
    let mesh = Mesh::new("w");
    mesh.attach("");
    mesh.cli_ok(&format!("block {BLOCKED}"));
    let cmd = format!(
        "{} --pin-dir {} stats --watch 1",
        support::bin(),
        mesh.pins.dir().display()
    );
    let piped = mesh.node.exec_out(&format!("timeout 2.5 {cmd}"));
    let piped = String::from_utf8_lossy(&piped.stdout);
    assert!(
        piped.matches("\n# ").count() + usize::from(piped.starts_with("# ")) >= 2,
        "{piped}"
    );
    assert!(
        !piped.contains('\x1b'),
        "no escape codes when piped: {piped:?}"
    );
    assert!(piped.contains(&format!("{BLOCKED}")), "{piped}");

    let tty = mesh
        .node
        .exec_out(&format!("timeout 2.5 script -qec '{cmd}' /dev/null"));
    let tty = String::from_utf8_lossy(&tty.stdout);
    assert!(
        tty.matches("\x1b[H").count() >= 2,
        "redrawn in place: {tty:?}"
    );
    assert!(
        tty.contains("\x1b[K\r\n") || tty.contains("\x1b[K\n"),
        "{tty:?}"
    );
    assert!(!tty.contains("\n# "), "no piped headers on a terminal");
}

/// `events` and `top` on live traffic: a client's SYNs to a blocked port
/// through the NIC's XDP program show up with its address and ports, as a
/// JSON line and in the table of busiest sources; the stream turned events
/// on only while it ran.
#[test]
fn events_and_top_show_who_sends_to_a_blocked_port() {
    use std::process::{Command, Stdio};

    let mesh = Mesh::new("e");
    mesh.attach("");
    mesh.cli_ok(&format!("block {BLOCKED}"));
    let spawn = |args: &str| {
        Command::new("nsenter")
            .arg(format!("--net={}", mesh.node.path().display()))
            .arg(support::bin())
            .arg("--pin-dir")
            .arg(mesh.pins.dir())
            .args(args.split_whitespace())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingress-xdp")
    };
    let stream = spawn(&format!(
        "events --json --count 1 --seconds 20 --port {BLOCKED}"
    ));
    // The stream is reading once it has said it turned events on.
    std::thread::sleep(Duration::from_millis(500));
    let sender = std::thread::scope(|s| {
        let probes = s.spawn(|| {
            for _ in 0..5 {
                let _ = mesh.remote_tcp(BLOCKED)(Duration::from_millis(300));
            }
        });
        let out = stream.wait_with_output().unwrap();
        probes.join().unwrap();
        out
    });
    let text = String::from_utf8_lossy(&sender.stdout);
    let event: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {text:?} {}", String::from_utf8_lossy(&sender.stderr)));
    assert_eq!(event["src"], REMOTE, "{event}");
    assert_eq!(event["dst_port"], BLOCKED, "{event}");
    assert_eq!(event["protocol"], "tcp", "{event}");
    assert_eq!(event["verdict"], "dropped", "{event}");
    assert!(
        event["attach_point"].as_str().unwrap().contains("n0"),
        "{event}"
    );
    assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
    let status = mesh.cli_ok("events status --json");
    assert!(
        status.contains(r#""enabled":false"#),
        "off again after the stream: {status}"
    );

    let top = spawn("top --interval 2 --windows 1");
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let _ = mesh.remote_tcp(BLOCKED)(Duration::from_millis(200));
    }
    let out = top.wait_with_output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("{BLOCKED}/tcp")) && table.contains(REMOTE),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!table.contains('\x1b'), "plain when piped: {table:?}");
}
