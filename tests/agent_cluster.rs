//! The agent (`ingress-xdp run`) against real Swarm clusters: private
//! dockerd processes in their own namespaces (support/docker.rs), the agent
//! as a real process in a node's namespace (support/agent.rs), real traffic
//! from client namespaces on the lan.
//!
//! * `sigkill_never_opens_a_blocked_port`: a port served through the mesh
//!   stand-ins is blocked by the agent; a client hammers it while the agent is
//!   SIGKILLed and restarted twice: not one connection succeeds, and the rule
//!   and both attach points stay while no agent runs.
//! * `worker_follows_policy_through_manager_api`: the agent on a worker reads
//!   services and node labels from the manager's TCP API: `ingress-xdp.nodes`
//!   constraints on the node role and on a node label added and removed
//!   later, with the right protocol per port, and traffic to the worker.
//! * `worker_local_fallback_with_name_rules`: the agent on a worker without a
//!   manager follows the worker's own ingress network view: names and ports
//!   only, so ports are blocked for tcp and udp and labels are not seen; the
//!   node's `--default deny --allow-service` decide, and new services appear
//!   within the fallback's polling delay.
//!
//! Needs root, docker.io, busybox-static and socat (`cargo xtask setup
//! --test-packages`). Measured numbers are printed as `REPORT` lines (run
//! with `--nocapture` to see them).

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ingress_xdp::{
    pins::Pins,
    policy::{LABEL_BLOCK, LABEL_NODES},
    rules::RuleEntry,
    spec::Protocol,
};
use serde_json::Value;
use support::{
    TestPins,
    agent::{self, AgentProc, docker_blocks, docker_ports, measure, wait_rules},
    docker::{self, Cluster, Dockerd, Proto, Publish, ServiceSpec},
    traffic::{self, Reach, SILENCE},
};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

/// How long the agent may take to reach a state the cluster already shows.
const CONVERGE: Duration = Duration::from_secs(20);

fn report(msg: impl AsRef<str>) {
    eprintln!("REPORT {}", msg.as_ref());
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------
// The CLI on the pinned state.

/// `ingress-xdp --pin-dir <pins> ARGS`, in the network namespace `netns`
/// (the test's own when None); panics unless it succeeds. Returns stdout.
#[track_caller]
fn cli(pins: &Pins, netns: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(support::bin());
            c
        }
        None => Command::new(support::bin()),
    };
    let out = cmd
        .arg("--pin-dir")
        .arg(pins.dir())
        .args(args)
        .env_remove("INGRESS_XDP_PIN_DIR")
        .output()
        .expect("spawn ingress-xdp");
    assert!(
        out.status.success(),
        "ingress-xdp {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `list --json`: (proto, port, service, why) of every rule.
fn cli_list(pins: &Pins) -> Vec<(String, u64, String, String)> {
    let doc: Value = serde_json::from_str(&cli(pins, None, &["list", "--json"])).expect("json");
    let mut out: Vec<_> = doc["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            assert_eq!(r["low"], r["high"], "one rule per port: {r}");
            (
                r["proto"].as_str().unwrap_or_default().to_string(),
                r["low"].as_u64().unwrap_or_default(),
                r["origin"]["service"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["origin"]["why"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// One attach point as `status --json` shows it from the node's namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    netns: Option<String>,
    iface: String,
    program_id: u64,
    link_id: u64,
    presence: String,
}

/// `status --json`, run in `d`'s namespace (where the agent attached its
/// host NIC, so presence can be checked).
fn cli_status(d: &Dockerd, pins: &Pins) -> Vec<Point> {
    let text = cli(pins, Some(&d.netns_path()), &["status", "--json"]);
    let doc: Value = serde_json::from_str(&text).expect("status json");
    let mut out: Vec<Point> = doc["attach_points"]
        .as_array()
        .expect("attach_points")
        .iter()
        .map(|p| Point {
            netns: p["point"]["netns"].as_str().map(str::to_string),
            iface: p["point"]["iface"].as_str().unwrap_or_default().into(),
            program_id: p["point"]["program_id"].as_u64().unwrap_or_default(),
            link_id: p["point"]["link_id"].as_u64().unwrap_or_default(),
            presence: p["presence"].as_str().unwrap_or_default().into(),
        })
        .collect();
    out.sort();
    out
}

/// Asserts the two attach points of an agent on `d`: its NIC and its
/// ingress_sbox, both attached.
#[track_caller]
fn assert_attached(d: &Dockerd, points: &[Point]) {
    let sbox = d.sbox_netns().display().to_string();
    let nic = points
        .iter()
        .find(|p| p.netns.is_none() && p.iface == docker::NIC);
    let in_sbox = points.iter().find(|p| p.netns.as_deref() == Some(&sbox));
    assert!(
        points.len() == 2
            && nic.is_some_and(|p| p.presence == "attached")
            && in_sbox.is_some_and(|p| p.presence == "attached"),
        "expected {} and an interface in {sbox}, both attached: {points:#?}",
        docker::NIC
    );
}

/// Waits until both attach points of the agent on `d` are there.
fn wait_attached(d: &Dockerd, pins: &Pins, agent: &AgentProc) -> Vec<Point> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let points = cli_status(d, pins);
        if points.len() == 2 && points.iter().all(|p| p.presence == "attached") {
            assert_attached(d, &points);
            return points;
        }
        assert!(
            Instant::now() < deadline,
            "attach points after {CONVERGE:?}: {points:#?}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line names `dir` (the agent names its pin dir).
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| String::from_utf8_lossy(arg) == needle)
            })
        })
        .collect()
}

/// Waits until `needle` occurs `n` times in the agent's log (the log is
/// appended to by every run of the same agent).
#[track_caller]
fn wait_log_count(agent: &AgentProc, needle: &str, n: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if agent.log().matches(needle).count() >= n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "agent log has {needle:?} fewer than {n} times after {timeout:?}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exactly these (protocol, port) keys, by the agent.
fn keys(rules: &[RuleEntry]) -> BTreeSet<(Protocol, u16)> {
    rules
        .iter()
        .filter(|r| r.origin.service.is_some())
        .map(|r| (r.proto, r.port))
        .collect()
}

// ---------------------------------------------------------------------------
// A client that hammers a TCP port.

/// Outcomes of the connection attempts started in one phase.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    attempts: u64,
    /// Connected (three-way handshake completed).
    served: u64,
    /// RST: the SYN got through to a host that had nothing listening.
    refused: u64,
    /// No answer within [`GIVE_UP`] (SYN retransmits included).
    silent: u64,
    errors: u64,
}

/// How long an attempt may stay unanswered: past the first SYN retransmit
/// (1 s), so a SYN let through late is still seen.
const GIVE_UP: Duration = Duration::from_millis(1500);

/// A thread in a client namespace that starts a non-blocking TCP connection
/// to `dst` every `every`, keeps each open for [`GIVE_UP`], and tallies the
/// outcomes per phase (the phase current when the attempt started).
struct Hammer {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    names: Vec<&'static str>,
    thread: Option<JoinHandle<Vec<Tally>>>,
}

impl Hammer {
    fn start(netns: &Path, dst: SocketAddr, every: Duration, names: &[&'static str]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let phases = names.len();
        let netns = netns.to_path_buf();
        let thread = {
            let (stop, phase) = (stop.clone(), phase.clone());
            std::thread::spawn(move || hammer(&netns, dst, every, phases, &stop, &phase))
        };
        Self {
            stop,
            phase,
            names: names.to_vec(),
            thread: Some(thread),
        }
    }

    fn phase(&self, n: usize) {
        assert!(n < self.names.len());
        self.phase.store(n, Ordering::SeqCst);
    }

    /// Stops starting attempts, waits for the open ones to end, returns the
    /// tallies by phase name.
    fn finish(mut self) -> Vec<(&'static str, Tally)> {
        self.stop.store(true, Ordering::SeqCst);
        let tallies = self
            .thread
            .take()
            .expect("running")
            .join()
            .expect("hammer thread");
        self.names.iter().copied().zip(tallies).collect()
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hammer(
    netns: &Path,
    dst: SocketAddr,
    every: Duration,
    phases: usize,
    stop: &AtomicBool,
    phase: &AtomicUsize,
) -> Vec<Tally> {
    use socket2::{Domain, Socket, Type};
    let connect = |tally: &mut Tally| -> Option<Socket> {
        tally.attempts += 1;
        let sock = match Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP)) {
            Ok(s) => s,
            Err(_) => {
                tally.errors += 1;
                return None;
            }
        };
        if sock.set_nonblocking(true).is_err() {
            tally.errors += 1;
            return None;
        }
        match sock.connect(&dst.into()) {
            Ok(()) => tally.served += 1,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => return Some(sock),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => tally.refused += 1,
            Err(_) => tally.errors += 1,
        }
        None
    };
    ingress_xdp::sys::in_netns(Some(netns), || {
        let mut tallies = vec![Tally::default(); phases];
        let mut pending: Vec<(Socket, Instant, usize)> = Vec::new();
        let mut next = Instant::now();
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if !stopping && Instant::now() >= next {
                let p = phase.load(Ordering::SeqCst);
                if let Some(sock) = connect(&mut tallies[p]) {
                    pending.push((sock, Instant::now(), p));
                }
                next += every;
            }
            pending.retain(|(sock, started, p)| {
                let tally = &mut tallies[*p];
                match sock.take_error() {
                    Ok(Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tally.refused += 1;
                        return false;
                    }
                    Ok(Some(_)) | Err(_) => {
                        tally.errors += 1;
                        return false;
                    }
                    Ok(None) => {}
                }
                if sock.peer_addr().is_ok() {
                    tally.served += 1;
                    return false;
                }
                if started.elapsed() > GIVE_UP {
                    tally.silent += 1;
                    return false;
                }
                true
            });
            if stopping && pending.is_empty() {
                return Ok(tallies);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .expect("hammer in the client namespace")
}

// ---------------------------------------------------------------------------

/// Blocked by label; the agent is killed and restarted under a connection
/// storm; nothing gets through at any moment.
#[test]
fn sigkill_never_opens_a_blocked_port() {
    const PORT: u16 = 8080;
    const EVERY: Duration = Duration::from_millis(20);
    let t_test = Instant::now();
    let d = Dockerd::start("k1");
    d.swarm_init();
    d.load_test_image();
    let spec = ServiceSpec::new("kblk")
        .label(LABEL_BLOCK, "true")
        .publish(Publish::ingress(PORT, Proto::Tcp));
    d.create_service_running(&spec);
    d.install_service_standins(&spec.name);
    let client = d.client("kc");
    let dst = d.at(PORT);

    // Without an agent the label does nothing: the port is served, and the
    // hammer sees it.
    assert_eq!(
        client.http(dst),
        Reach::Served(docker::reply_of(&spec.name, d.hostname())),
        "no agent yet: the mesh serves the port\n{}",
        d.mesh_diagnostics()
    );
    let control = Hammer::start(&client.path(), dst, EVERY, &["control"]);
    std::thread::sleep(Duration::from_millis(500));
    let (_, control) = control.finish()[0];
    report(format!("kill test: control without agent: {control:?}"));
    assert!(
        control.served > 0 && control.served + 2 >= control.attempts,
        "the hammer must see an open port as open: {control:?}"
    );

    let pins = TestPins::new("k1");
    let mut agent = AgentProc::start(&d, &pins.pins, &[]);
    let t_rule = wait_rules(&pins.pins, &agent, CONVERGE, docker_blocks(&[(TCP, PORT)]));
    let points = wait_attached(&d, &pins.pins, &agent);
    assert_eq!(
        traffic::tcp(&client.path(), None, dst, SILENCE),
        Reach::Silent,
        "blocked by the agent\nagent log:\n{}",
        agent.log()
    );
    let synced = "reading services and node labels from the local engine";
    agent.wait_log(synced, CONVERGE);
    report(format!(
        "kill test: rule in the map {} after the agent started",
        ms(t_rule)
    ));

    let phases = [
        "agent running",
        "killed #1",
        "restarted #1",
        "killed #2",
        "restarted #2",
    ];
    let hammer = Hammer::start(&client.path(), dst, EVERY, &phases);
    std::thread::sleep(Duration::from_millis(1000));

    let dead_checks = |agent: &mut AgentProc, round: usize| {
        assert!(!agent.is_running());
        let left = processes_naming(pins.dir());
        assert!(left.is_empty(), "agent processes still alive: {left:?}");
        // Library view: the rule, with its origin.
        let rules = agent::rules(&pins.pins);
        assert_eq!(keys(&rules), BTreeSet::from([(TCP, PORT)]), "{rules:#?}");
        // CLI view: list names the service; status shows both attach points,
        // the very same links as before the kill.
        let list = cli_list(&pins.pins);
        assert_eq!(
            list,
            vec![(
                "tcp".to_string(),
                u64::from(PORT),
                spec.name.clone(),
                format!("{LABEL_BLOCK}=true")
            )],
            "list while the agent is dead"
        );
        let now = cli_status(&d, &pins.pins);
        assert_attached(&d, &now);
        assert_eq!(now, points, "attach points while the agent is dead");
        report(format!(
            "kill test: agent dead (round {round}): list shows {list:?}; status shows {} attach points: {:?}",
            now.len(),
            now.iter()
                .map(|p| format!(
                    "{} in {} link {} {}",
                    p.iface,
                    p.netns.as_deref().unwrap_or("(host)"),
                    p.link_id,
                    p.presence
                ))
                .collect::<Vec<_>>()
        ));
    };

    for round in 1..=2 {
        hammer.phase(2 * round - 1);
        let t_dead = Instant::now();
        agent.kill();
        dead_checks(&mut agent, round);
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(t_dead.elapsed()));

        hammer.phase(2 * round);
        let t_up = Instant::now();
        agent.restart();
        wait_log_count(&agent, synced, round + 1, CONVERGE);
        report(format!(
            "kill test: restart #{round}: synced again {} after the start",
            ms(t_up.elapsed())
        ));
        assert!(agent.is_running(), "agent log:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(1000));
        // The new agent found everything in place: same links, same rule.
        assert_eq!(
            cli_status(&d, &pins.pins),
            points,
            "attach points after restart #{round}"
        );
        assert_eq!(
            keys(&agent::rules(&pins.pins)),
            BTreeSet::from([(TCP, PORT)])
        );
    }

    let tallies = hammer.finish();
    let total = tallies.iter().fold(Tally::default(), |a, (_, t)| Tally {
        attempts: a.attempts + t.attempts,
        served: a.served + t.served,
        refused: a.refused + t.refused,
        silent: a.silent + t.silent,
        errors: a.errors + t.errors,
    });
    for (name, t) in &tallies {
        report(format!("kill test: {name}: {t:?}"));
    }
    report(format!(
        "kill test: total: {total:?} (one attempt every {} ms)",
        EVERY.as_millis()
    ));
    assert_eq!(
        (total.served, total.refused, total.errors),
        (0, 0, 0),
        "every attempt must meet silence: {tallies:#?}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(total.silent, total.attempts);
    assert!(
        total.attempts >= 150 && tallies.iter().all(|(_, t)| t.attempts >= 25),
        "too few attempts to mean anything: {tallies:#?}"
    );
    let log = agent.log();
    assert!(!log.contains("unblocked"), "agent log:\n{log}");
    assert_eq!(
        log.matches("agent starting").count(),
        3,
        "three agent runs:\n{log}"
    );
    report(format!("kill test: whole test {}", ms(t_test.elapsed())));
}

/// Polls the worker's `GET /networks/ingress?verbose=true` until it lists
/// every service in `names`.
fn wait_worker_view(w: &Dockerd, names: &[&str]) -> Duration {
    let start = Instant::now();
    loop {
        let net = w.api("/networks/ingress?verbose=true");
        if names.iter().all(|n| net["Services"].get(*n).is_some()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < docker::WAIT_TIMEOUT,
            "worker's ingress view lacks some of {names:?}: {net:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A worker agent reading the manager's API: constraints on the role and
/// on a node label, per protocol, with traffic to the worker.
#[test]
fn worker_follows_policy_through_manager_api() {
    const MGR: u16 = 8081;
    const EDGE: u16 = 8053;
    const OPEN: u16 = 8080;
    let t_test = Instant::now();
    let cluster = Cluster::start("k2");
    let (m, w) = (&cluster.manager, &cluster.worker);
    let manager_url = format!("tcp://{}", m.tcp_api().expect("manager TCP API"));

    let pins = TestPins::new("k2");
    let agent = AgentProc::start(w, &pins.pins, &["--docker-host", &manager_url]);
    agent.wait_log(
        &format!("reading services and node labels from the manager at {manager_url}"),
        CONVERGE,
    );
    wait_attached(w, &pins.pins, &agent);
    assert!(docker_ports(&pins.pins).is_empty(), "no services yet");

    // Global services: a task on the worker too, for traffic to it.
    let mgr_only = ServiceSpec::new("kmgr")
        .global()
        .label(LABEL_NODES, "node.role==manager")
        .publish(Publish::ingress(MGR, Proto::Tcp));
    let edge = ServiceSpec::new("kedge")
        .global()
        .label(LABEL_NODES, "node.labels.edge==true")
        .publish(Publish::ingress(EDGE, Proto::Udp));
    let open = ServiceSpec::new("kopen")
        .global()
        .publish(Publish::ingress(OPEN, Proto::Tcp));

    let t_mgr = measure(
        &pins.pins,
        &agent,
        CONVERGE,
        || {
            m.create_service(&mgr_only);
        },
        docker_blocks(&[(TCP, MGR)]),
    );
    report(format!(
        "worker/manager API: service with {LABEL_NODES}=node.role==manager blocked on the worker {} after `docker service create` started",
        ms(t_mgr)
    ));
    let t_edge = measure(
        &pins.pins,
        &agent,
        CONVERGE,
        || {
            m.create_service(&edge);
        },
        docker_blocks(&[(TCP, MGR), (UDP, EDGE)]),
    );
    report(format!(
        "worker/manager API: service with {LABEL_NODES}=node.labels.edge==true (no label yet) blocked (udp) {}",
        ms(t_edge)
    ));
    m.create_service(&open);
    for s in [&mgr_only, &edge, &open] {
        m.wait_running(&s.name);
        let task = w.task_ingress_addr(&s.name);
        for p in &s.publish {
            docker::install_mesh_standins(w, p.published, p.proto, task, p.target);
        }
    }
    // The open service was seen (the edge label below converges to an
    // exact set), and never blocked.
    assert_eq!(
        keys(&agent::rules(&pins.pins)),
        BTreeSet::from([(TCP, MGR), (UDP, EDGE)])
    );

    let list = cli_list(&pins.pins);
    let why = |c: &str| format!("{LABEL_NODES}={c} does not match this node");
    assert_eq!(
        list,
        vec![
            (
                "tcp".to_string(),
                u64::from(MGR),
                mgr_only.name.clone(),
                why("node.role==manager")
            ),
            (
                "udp".to_string(),
                u64::from(EDGE),
                edge.name.clone(),
                why("node.labels.edge==true")
            ),
        ]
    );
    report(format!(
        "worker/manager API: list on the worker:\n{}",
        cli(&pins.pins, None, &["list"])
    ));

    let client = cluster.lan.client("kc");
    let reply = |s: &ServiceSpec| Reach::Served(docker::reply_of(&s.name, w.hostname()));
    assert_eq!(
        client.http(w.at(OPEN)),
        reply(&open),
        "plain service: open on the worker\n{}",
        w.mesh_diagnostics()
    );
    assert_eq!(
        traffic::tcp(&client.path(), None, w.at(MGR), SILENCE),
        Reach::Silent,
        "manager-only service on the worker"
    );
    assert_eq!(
        traffic::udp(&client.path(), None, w.at(EDGE), SILENCE),
        Reach::Silent,
        "edge service before the worker has the label"
    );

    // The worker gets the label: the edge service opens there (udp).
    let worker_id = w.node_id();
    let t_label = measure(
        &pins.pins,
        &agent,
        CONVERGE,
        || {
            m.docker(["node", "update", "--label-add", "edge=true", &worker_id]);
        },
        docker_blocks(&[(TCP, MGR)]),
    );
    report(format!(
        "worker/manager API: `docker node update --label-add edge=true` -> edge service unblocked on the worker in {}",
        ms(t_label)
    ));
    assert_eq!(
        client.udp(w.at(EDGE)),
        reply(&edge),
        "edge service on the labelled worker\n{}",
        w.mesh_diagnostics()
    );

    // The manager-only service was dropped by the agent's rule, nothing
    // else: allowing workers opens it.
    let t_flip = measure(
        &pins.pins,
        &agent,
        CONVERGE,
        || {
            m.docker([
                "service",
                "update",
                "--detach",
                "--label-add",
                &format!("{LABEL_NODES}=node.role==worker"),
                &mgr_only.name,
            ]);
        },
        docker_blocks(&[]),
    );
    report(format!(
        "worker/manager API: service label changed to node.role==worker -> unblocked in {}",
        ms(t_flip)
    ));
    assert_eq!(client.http(w.at(MGR)), reply(&mgr_only));

    // The label goes: blocked again.
    let t_rm = measure(
        &pins.pins,
        &agent,
        CONVERGE,
        || {
            m.docker(["node", "update", "--label-rm", "edge", &worker_id]);
        },
        docker_blocks(&[(UDP, EDGE)]),
    );
    report(format!(
        "worker/manager API: `docker node update --label-rm edge` -> blocked again in {}",
        ms(t_rm)
    ));
    assert_eq!(
        traffic::udp(&client.path(), None, w.at(EDGE), SILENCE),
        Reach::Silent
    );
    assert_eq!(client.http(w.at(OPEN)), reply(&open));
    let log = agent.log();
    assert!(
        !log.contains(&open.name),
        "the open service is never blocked:\n{log}"
    );
    assert!(!log.contains("this node is a worker"), "{log}");
    report(format!(
        "worker/manager API: whole test {}",
        ms(t_test.elapsed())
    ));
}

/// A worker agent without a manager: the local ingress-network view, with
/// the node's name rules.
#[test]
fn worker_local_fallback_with_name_rules() {
    const PRIV: u16 = 8080;
    const PUB: u16 = 8081;
    const LATE: u16 = 8082;
    let t_test = Instant::now();
    let cluster = Cluster::start("k3");
    let (m, w) = (&cluster.manager, &cluster.worker);

    // Generated names: ixtkpub<pid><n> and ixtkpriv<pid><n>.
    let public = ServiceSpec::new("kpub").publish(Publish::ingress(PUB, Proto::Tcp));
    // A label the fallback cannot see: it would open the port with a manager.
    let private = ServiceSpec::new("kpriv")
        .label(LABEL_BLOCK, "false")
        .publish(Publish::ingress(PRIV, Proto::Tcp));
    let pattern = "ixtkpub*";
    let parsed: ingress_xdp::policy::NamePattern = pattern.parse().unwrap();
    assert!(parsed.matches(&public.name) && !parsed.matches(&private.name));
    let worker_id = w.node_id();
    for s in [&public, &private] {
        let tasks = m.create_service_running(s);
        let on_worker = tasks.iter().any(|t| t.node_id == worker_id);
        report(format!(
            "worker fallback: {} runs on the {}",
            s.name,
            if on_worker { "worker" } else { "manager" }
        ));
    }
    let t_view = wait_worker_view(w, &[&public.name, &private.name]);
    report(format!(
        "worker fallback: both services in the worker's ingress view {} after running",
        ms(t_view)
    ));

    let pins = TestPins::new("k3");
    let agent = AgentProc::start(
        w,
        &pins.pins,
        &["--default", "deny", "--allow-service", pattern],
    );
    let both = |port: u16| [(TCP, port), (UDP, port)];
    let t_first = wait_rules(&pins.pins, &agent, CONVERGE, docker_blocks(&both(PRIV)));
    report(format!(
        "worker fallback: first rules {} after the agent started",
        ms(t_first)
    ));
    wait_attached(w, &pins.pins, &agent);

    let log = agent.log();
    let mode_line = log
        .lines()
        .find(|l| l.contains("this node is a worker"))
        .unwrap_or_else(|| panic!("no fallback-mode line in the agent log:\n{log}"));
    for phrase in [
        "no manager is configured (--docker-host)",
        "no protocols",
        "blocked for both tcp and udp",
        "no labels",
    ] {
        assert!(mode_line.contains(phrase), "{phrase:?} in {mode_line:?}");
    }
    assert!(
        mode_line.contains("WARN"),
        "logged as a warning: {mode_line}"
    );
    assert!(!log.contains("reading services and node labels"), "{log}");
    report(format!("worker fallback: agent log says: {mode_line}"));

    let deny = "node default deny".to_string();
    assert_eq!(
        cli_list(&pins.pins),
        vec![
            (
                "tcp".into(),
                u64::from(PRIV),
                private.name.clone(),
                deny.clone()
            ),
            (
                "udp".into(),
                u64::from(PRIV),
                private.name.clone(),
                deny.clone()
            ),
        ]
    );

    // A service created later on the manager: the worker's view changes
    // ~0.7 s later, the agent polls it every second.
    let late = ServiceSpec::new("klate").publish(Publish::ingress(LATE, Proto::Tcp));
    let want_late: Vec<_> = both(PRIV).into_iter().chain(both(LATE)).collect();
    let t_late = measure(
        &pins.pins,
        &agent,
        Duration::from_secs(10),
        || {
            m.create_service(&late);
        },
        docker_blocks(&want_late),
    );
    report(format!(
        "worker fallback: service created on the manager blocked on the worker (tcp+udp) {} after `docker service create` started",
        ms(t_late)
    ));
    assert!(
        t_late < Duration::from_secs(5),
        "a few seconds at most: {t_late:?}"
    );
    // Everything the agent wrote was read after the public service was in
    // the view (checked above): it is seen and allowed.
    assert!(!agent.log().contains(&public.name), "{}", agent.log());
    assert_eq!(
        cli_list(&pins.pins),
        vec![
            (
                "tcp".into(),
                u64::from(PRIV),
                private.name.clone(),
                deny.clone()
            ),
            (
                "tcp".into(),
                u64::from(LATE),
                late.name.clone(),
                deny.clone()
            ),
            (
                "udp".into(),
                u64::from(PRIV),
                private.name.clone(),
                deny.clone()
            ),
            (
                "udp".into(),
                u64::from(LATE),
                late.name.clone(),
                deny.clone()
            ),
        ]
    );
    report(format!(
        "worker fallback: list on the worker:\n{}",
        cli(&pins.pins, None, &["list"])
    ));

    // And it goes when the service goes.
    let t_gone = measure(
        &pins.pins,
        &agent,
        CONVERGE,
        || {
            m.docker(["service", "rm", &late.name]);
        },
        docker_blocks(&both(PRIV)),
    );
    report(format!(
        "worker fallback: service removed on the manager unblocked on the worker {}",
        ms(t_gone)
    ));
    report(format!(
        "worker fallback: whole test {}",
        ms(t_test.elapsed())
    ));
}
