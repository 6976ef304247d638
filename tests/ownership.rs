//! Rule ownership on the real pinned maps: the agent's (Docker-derived) rules
//! and the CLI's manual rules share one table without either removing the
//! other's, and concurrent writers lose no update.

#[path = "support/mod.rs"]
mod support;

use std::{collections::BTreeSet, process::Command};

use ingress_xdp::{
    rules::{DockerRule, Mode, RuleSpec, RuleTable},
    spec::{PortSpec, Protocol},
};
use support::TestPins;

fn docker_rule(service: &str) -> DockerRule {
    DockerRule {
        service: service.into(),
        why: "node default deny".into(),
    }
}

fn manual(mode: Mode, allow: &[&str]) -> RuleSpec {
    RuleSpec {
        mode,
        allow_from: allow
            .iter()
            .map(|c| c.parse().unwrap())
            .collect::<BTreeSet<_>>(),
    }
}

fn spec(s: &str) -> PortSpec {
    s.parse().unwrap()
}

#[test]
fn manual_rules_win_and_survive_the_agent() {
    let pins = TestPins::new("o");
    let mut table = RuleTable::open(&pins.pins).unwrap();
    let tcp = Protocol::Tcp;

    table
        .set_docker(tcp, 80, Some(&docker_rule("web")))
        .unwrap();
    assert_eq!(table.get(tcp, 80).unwrap(), Some(Mode::Block));
    let list = table.list().unwrap();
    assert_eq!(list.len(), 1);
    assert!(!list[0].origin.manual);
    assert_eq!(list[0].origin.service.as_deref(), Some("web"));
    assert_eq!(list[0].origin.to_string(), "service web: node default deny");

    // A manual audit rule takes the slot; the agent's wish is remembered.
    table
        .apply(&[spec("80")], &manual(Mode::Audit, &[]))
        .unwrap();
    assert_eq!(table.get(tcp, 80).unwrap(), Some(Mode::Audit));
    let origin = &table.list().unwrap()[0].origin;
    assert!(origin.manual);
    assert_eq!(origin.service.as_deref(), Some("web"));

    // The agent withdrawing its rule leaves the manual one alone.
    table.set_docker(tcp, 80, None).unwrap();
    assert_eq!(table.get(tcp, 80).unwrap(), Some(Mode::Audit));
    assert!(table.docker_rules().unwrap().is_empty());

    // Removing the manual rule hands the slot back to the agent's rule.
    table
        .set_docker(tcp, 80, Some(&docker_rule("web")))
        .unwrap();
    let removal = table.remove(&[spec("80")]).unwrap();
    assert_eq!(removal.manual_rules, 1);
    assert_eq!(removal.kept_by_docker.len(), 1);
    assert_eq!(table.get(tcp, 80).unwrap(), Some(Mode::Block));

    // And once the agent lets go too, the port opens.
    table.set_docker(tcp, 80, None).unwrap();
    assert_eq!(table.get(tcp, 80).unwrap(), None);
    assert!(table.list().unwrap().is_empty());
}

#[test]
fn a_manual_rule_made_before_the_agent_is_never_removed_by_it() {
    let pins = TestPins::new("o");
    let mut table = RuleTable::open(&pins.pins).unwrap();
    table
        .apply(&[spec("443")], &manual(Mode::Block, &["192.0.2.0/24"]))
        .unwrap();
    table
        .set_docker(Protocol::Tcp, 443, Some(&docker_rule("tls")))
        .unwrap();
    table.set_docker(Protocol::Tcp, 443, None).unwrap();
    let list = table.list().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].origin.manual);
    assert_eq!(list[0].allow_from.len(), 1, "the manual allowlist stays");

    // Unblocking the manual rule while the agent blocks the port: the agent's
    // rule (no allowlist) takes over, and the allowlist is cleaned up.
    table
        .set_docker(Protocol::Tcp, 443, Some(&docker_rule("tls")))
        .unwrap();
    table.remove(&[spec("443")]).unwrap();
    let list = table.list().unwrap();
    assert_eq!(list.len(), 1);
    assert!(!list[0].origin.manual);
    assert!(list[0].allow_from.is_empty());
}

/// CLI processes and an agent-like writer change the table at the same time;
/// every update lands.
#[test]
fn concurrent_cli_and_agent_lose_nothing() {
    let pins = TestPins::new("o");
    let dir = pins.dir().to_path_buf();
    let agent_pins = pins.pins.clone();
    let agent = std::thread::spawn(move || {
        for port in 20000..20100u16 {
            let _lock = agent_pins.lock().unwrap();
            let mut table = RuleTable::open(&agent_pins).unwrap();
            table
                .set_docker(Protocol::Udp, port, Some(&docker_rule("svc")))
                .unwrap();
        }
    });
    let clis: Vec<_> = (0..8u16)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for j in 0..5u16 {
                    let port = 10000 + i * 100 + j;
                    let out = Command::new(support::bin())
                        .arg("--pin-dir")
                        .arg(&dir)
                        .args(["block", &port.to_string()])
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{out:?}");
                }
            })
        })
        .collect();
    for t in clis {
        t.join().unwrap();
    }
    agent.join().unwrap();
    let list = RuleTable::open(&pins.pins).unwrap().list().unwrap();
    let manual = list.iter().filter(|e| e.origin.manual).count();
    let docker = list.iter().filter(|e| e.origin.service.is_some()).count();
    assert_eq!((manual, docker), (40, 100));
}

/// The loader binds pinned maps by name; one of another shape (a hand-made
/// or foreign map under our name) must be refused, not handed to a program.
#[test]
fn a_pinned_map_of_another_shape_is_refused() {
    let pins = TestPins::new("oshape");
    let path = pins.pins.map(ingress_xdp::pins::MAP_COUNTERS);
    std::fs::remove_file(&path).unwrap();
    let foreign = aya::maps::PerCpuArray::<aya::maps::MapData, u64>::create(16, 0).unwrap();
    foreign.pin(&path).unwrap();
    let err = format!("{:#}", RuleTable::open(&pins.pins).err().expect("refused"));
    let refusal = format!(
        "is not what layout {} needs",
        ingress_xdp_common::LAYOUT_VERSION
    );
    assert!(err.contains(&format!("COUNTERS {refusal}")), "{err}");
    let out = Command::new(support::bin())
        .args(["--pin-dir", &pins.dir().display().to_string(), "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&refusal));
}

/// Threads (or processes) that all find bpffs missing, as on a new node
/// the first `block` and the agent starting together, mount it once: a
/// second mount on top would hide what is pinned in the first. Sixteen
/// threads released at once onto a directory of this test's own.
#[test]
fn those_who_find_bpffs_missing_together_mount_it_once() {
    use std::sync::Barrier;

    support::require_root();
    let tmp = support::pki::TempDir::new("owbf");
    let root = tmp.path.join("bpf");
    let _unmount = Unmount(root.clone());
    let start = Barrier::new(16);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                start.wait();
                ingress_xdp::sys::ensure_bpffs_mounted_at(&root).unwrap();
            });
        }
    });
    assert_eq!(mounts_at(&root), 1, "bpffs mounts at {}", root.display());
    assert!(ingress_xdp::sys::is_bpffs(&root));
}

/// `ip netns exec` gives the command a mount namespace of its own with a
/// fresh /sys, where bpffs is missing. A bpffs mounted there dies with the
/// command, and the rule and links pinned in it with it: the command
/// "succeeded" and nothing stayed. It must refuse and say what to run.
#[test]
fn a_command_that_would_pin_into_a_vanishing_bpffs_refuses() {
    let ns = support::Netns::new("owmn");
    let pin_dir = std::path::Path::new("/sys/fs/bpf").join(support::unique("owmn"));
    let out = support::sh_out(&format!(
        "ip netns exec {} {} attach --iface lo --no-sbox --pin-dir {}",
        ns.name,
        support::bin(),
        pin_dir.display()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "attach under `ip netns exec` succeeded into a private bpffs: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("would vanish"), "{stderr}");
    assert!(stderr.contains("not the host's bpffs"), "{stderr}");
    assert!(stderr.contains("nsenter --net="), "{stderr}");
    assert!(!pin_dir.exists(), "nothing is created in the host's bpffs");
}

fn mounts_at(dir: &std::path::Path) -> usize {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(dir))
        .count()
}

/// Unmounts everything stacked at its path, even when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        while mounts_at(&self.0) > 0 {
            let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
            // SAFETY: a valid C string; a lazy unmount of our own mount.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
    }
}
