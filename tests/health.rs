//! `ingress-xdp health` (the stack's healthcheck) and the deployment
//! problems the agent detects, against a real one-node swarm.
//!
//! * `health_follows_the_agent_and_the_attach_points`: healthy while the
//!   agent runs; unhealthy when it is stopped with SIGSTOP (stuck: no
//!   heartbeat within --max-age) and healthy again after SIGCONT; unhealthy
//!   when an attach point's interface is deleted; unhealthy when the agent is
//!   killed.
//! * `misdeployments_are_loud`: the agent run (through a wrapper, as a
//!   container would be) in a mount namespace where Docker's netns directory
//!   is a private bind, and in a network namespace that is not the node's:
//!   each time it logs the problem as an error, and `health` fails naming it.
//!   The same for an agent whose --sbox-netns does not exist on a swarm node
//!   (Docker's netns directory not bound into the container).
//!
//! Needs root, docker.io and busybox-static (`cargo xtask setup
//! --test-packages`).

#[path = "support/mod.rs"]
mod support;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use ingress_xdp::health;
use support::{
    Netns, TestPins,
    agent::AgentProc,
    docker::{Dockerd, NIC},
    pki::TempDir,
};

const CONVERGE: Duration = Duration::from_secs(20);

/// `ingress-xdp health` in `netns`, as a healthcheck inside the agent's
/// container would run.
fn health_in(netns: &Path, pins: &TestPins, run_dir: &Path, max_age: u64) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(support::bin())
        .args(["--pin-dir", &pins.dir().display().to_string(), "health"])
        .args(["--run-dir", &run_dir.display().to_string()])
        .args(["--max-age", &max_age.to_string()])
        .output()
        .expect("run ingress-xdp health")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `health` until its exit status is `healthy` and its output has
/// `needle`; returns the output.
#[track_caller]
fn wait_health(
    netns: &Path,
    pins: &TestPins,
    run_dir: &Path,
    max_age: u64,
    healthy: bool,
    needle: &str,
) -> String {
    let start = Instant::now();
    loop {
        let out = health_in(netns, pins, run_dir, max_age);
        let t = text(&out);
        if out.status.success() == healthy && t.contains(needle) {
            return t;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "health never became {} with {needle:?}; last:\n{t}",
            if healthy { "healthy" } else { "unhealthy" }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent_with(d: &Dockerd, pins: &TestPins, run_dir: &Path, bin: Option<&Path>) -> AgentProc {
    let extra = ["--run-dir", &run_dir.display().to_string()];
    match bin {
        Some(bin) => AgentProc::start_bin(bin, d, &pins.pins, &extra, &[]),
        None => AgentProc::start(d, &pins.pins, &extra),
    }
}

/// A shell script that runs the real binary the way `how` says.
fn wrapper(dir: &Path, name: &str, how: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        format!("#!/bin/sh\n{how} {} \"$@\"\n", support::bin()),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn health_follows_the_agent_and_the_attach_points() {
    support::require_root();
    let d = Dockerd::start("hh");
    d.swarm_init();
    let pins = TestPins::new("hh");
    let tmp = TempDir::new("hhrun");
    let run_dir = tmp.path.join("run");
    let mut agent = agent_with(&d, &pins, &run_dir, None);
    let ok = wait_health(&d.netns_path(), &pins, &run_dir, 5, true, "2 attached");
    for line in [
        "ok   attach points",
        "ok   agent",
        "ok   docker",
        "ok   deployment",
    ] {
        assert!(ok.contains(line), "{line:?} in\n{ok}");
    }
    eprintln!("REPORT health, all well:\n{ok}");

    // Stuck: the agent stops looping.
    let pid = health::read(&run_dir).unwrap().expect("heartbeat").pid;
    support::sh(&format!("kill -STOP {pid}"));
    let stuck = wait_health(
        &d.netns_path(),
        &pins,
        &run_dir,
        2,
        false,
        "FAIL agent: stuck",
    );
    support::sh(&format!("kill -CONT {pid}"));
    wait_health(&d.netns_path(), &pins, &run_dir, 2, true, "ok   agent");
    eprintln!("REPORT health, agent stopped:\n{stuck}");

    // An attach point whose interface goes away.
    let netns = d.netns_path();
    support::docker::exec_in(
        &netns,
        "ip link add hhx0 type veth peer name hhx1 && ip link set hhx0 up && ip link set hhx1 up",
    );
    let attach = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(support::bin())
        .args(["--pin-dir", &pins.dir().display().to_string()])
        .args(["attach", "--iface", "hhx0", "--no-sbox"])
        .output()
        .unwrap();
    assert!(attach.status.success(), "{}", text(&attach));
    wait_health(&netns, &pins, &run_dir, 5, true, "3 attached");
    support::docker::exec_in(&netns, "ip link del hhx0");
    let missing = wait_health(
        &netns,
        &pins,
        &run_dir,
        5,
        false,
        "FAIL attach points: missing",
    );
    assert!(missing.contains("hhx0"), "{missing}");

    agent.kill();
    let dead = wait_health(&netns, &pins, &run_dir, 5, false, "is not running");
    eprintln!("REPORT health, agent killed:\n{dead}");
}

#[test]
fn misdeployments_are_loud() {
    support::require_root();
    let d = Dockerd::start("hm");
    d.swarm_init();
    let tmp = TempDir::new("hmrun");

    // Docker's netns directory bound privately (no rslave, no shared mount).
    let netns_dir = d.sbox_netns().parent().unwrap().to_path_buf();
    let private = wrapper(
        &tmp.path,
        "private-netns",
        &format!(
            "exec unshare --mount --propagation private sh -c 'mount --bind {dir} {dir} && mount --make-private {dir} && exec \"$@\"' sh",
            dir = netns_dir.display()
        ),
    );
    let pins = TestPins::new("hm1");
    let run_dir = tmp.path.join("run1");
    let agent = agent_with(&d, &pins, &run_dir, Some(&private));
    agent.wait_log("private mount", CONVERGE);
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("private mount")).unwrap();
    assert!(line.contains("ERROR") && line.contains("rslave"), "{line}");
    let out = wait_health(
        &d.netns_path(),
        &pins,
        &run_dir,
        10,
        false,
        "FAIL deployment",
    );
    assert!(out.contains("private mount"), "{out}");
    eprintln!("REPORT private netns bind: {line}");
    // Detach before the next agent attaches to the same NIC.
    drop(agent);
    drop(pins);

    // Not the node's network namespace (as without the host network).
    let other = Netns::new("hmo");
    other.exec(&format!(
        "ip link add {NIC} type veth peer name hmo1 && ip link set {NIC} up && ip link set hmo1 up"
    ));
    let elsewhere = wrapper(
        &tmp.path,
        "other-netns",
        &format!("exec nsenter --net={}", other.path().display()),
    );
    let pins = TestPins::new("hm2");
    let run_dir = tmp.path.join("run2");
    let agent = agent_with(&d, &pins, &run_dir, Some(&elsewhere));
    agent.wait_log("not on the host network", CONVERGE);
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("not on the host network"))
        .unwrap();
    assert!(
        line.contains("ERROR") && line.contains(&d.addr().to_string()),
        "{line}"
    );
    let out = wait_health(&other.path(), &pins, &run_dir, 10, false, "FAIL deployment");
    assert!(out.contains("not on the host network"), "{out}");
    eprintln!("REPORT not on the host network: {line}");
    drop(agent);
    drop(pins);

    // No netns bind: the sandbox file is not there.
    let pins = TestPins::new("hm3");
    let run_dir = tmp.path.join("run3");
    let unbound = tmp.path.join("unbound/netns/ingress_sbox");
    let agent = AgentProc::start(
        &d,
        &pins.pins,
        &[
            "--run-dir",
            &run_dir.display().to_string(),
            "--sbox-netns",
            &unbound.display().to_string(),
        ],
    );
    agent.wait_log("does not exist here", CONVERGE);
    let out = wait_health(
        &d.netns_path(),
        &pins,
        &run_dir,
        10,
        false,
        "FAIL deployment",
    );
    assert!(out.contains("Bind-mount Docker's netns directory"), "{out}");
    eprintln!("REPORT no netns bind:\n{out}");
}
