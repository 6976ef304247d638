//! `docker stack deploy -c deploy/stack.yml` on a real swarm of private
//! dockerds (a manager and a worker), with the image `cargo xtask image`
//! built (target/image/, loaded into each engine).
//!
//! * `the_stack_puts_an_agent_on_every_node`: the stack file as shipped,
//!   its paths pointed at each test node through its variables and Swarm's
//!   `{{.Node.Hostname}}` template. An agent task runs on every node and
//!   turns healthy (the image's `health` healthcheck), the host's `status`
//!   finds every point the containers attached, and each node blocks
//!   by the label policy: a service that only managers may serve is blocked
//!   on the worker (its agent follows the managers' policy feed) and open on
//!   the manager; deploy/prometheus.yml discovers and scrapes every node's
//!   agent. Then a rolling update to a new image tag: while it runs, a
//!   client probes the blocked port on the worker through the mesh stand-ins
//!   every few milliseconds and not one connection gets through, and the
//!   rule never leaves the worker's map. `docker stack rm` ends the agents
//!   and the drops stay; detached, the same probe is served (the control).
//!
//! Needs root, docker.io, busybox-static, socat and the image archive
//! (`cargo xtask test` builds it first; by hand: `cargo xtask image`).

#[path = "support/mod.rs"]
mod support;

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ingress_xdp::{attach, pins::Pins, policy::LABEL_NODES, spec::Protocol};
use support::{
    agent::rules,
    docker::{self, Dockerd, Proto, Publish, ServiceSpec, Swarm},
    pki::TempDir,
    prometheus::Prometheus,
    traffic::{self, Reach},
};

const MGR: u16 = 8081;
const CONVERGE: Duration = Duration::from_secs(60);
const STACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/stack.yml");
const ARCHIVE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/image/ingress-xdp-",
    env!("CARGO_PKG_VERSION"),
    ".tar"
);
const IMAGE: &str = concat!("ingress-xdp:", env!("CARGO_PKG_VERSION"));
const PROMETHEUS_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus.yml");

fn report(msg: impl AsRef<str>) {
    eprintln!("REPORT {}", msg.as_ref());
}

/// The pin directories the stack's agents make (one per node, by hostname);
/// detached and removed on drop, whatever happened.
struct StackPins(Vec<PathBuf>);

impl Drop for StackPins {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = attach::detach_all(&Pins::new(dir));
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// `docker stack deploy` (or any CLI call) on `d` with `envs` for the stack
/// file's variables.
#[track_caller]
fn docker_env(d: &Dockerd, envs: &[(&str, String)], args: &[&str]) -> String {
    let out = d
        .cli()
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .expect("spawn docker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "docker {args:?}: {text}");
    text
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> Option<String>) -> String {
    let start = Instant::now();
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent container's status line on `d` (e.g. "Up 12 seconds (healthy)").
fn agent_status(d: &Dockerd, stack: &str) -> String {
    d.docker([
        "ps",
        "--filter",
        &format!("label=com.docker.stack.namespace={stack}"),
        "--format",
        "{{.Image}} {{.Status}}",
    ])
}

#[test]
fn the_stack_puts_an_agent_on_every_node() {
    support::require_root();
    assert!(
        Path::new(ARCHIVE).exists(),
        "{ARCHIVE} is missing: run `cargo xtask image` (cargo xtask test does)"
    );
    let swarm = Swarm::start("sk", 1, 1);
    let (m, w) = (&swarm.managers[0], &swarm.workers[0]);
    report(format!(
        "stack: engine {}",
        m.docker([
            "version",
            "--format",
            "{{.Server.Version}} (API {{.Server.APIVersion}})"
        ])
        .trim()
    ));
    let nodes = [m, w];
    let tmp = TempDir::new("skst");
    let prefix = support::unique("sk");
    let mut pin_dirs = Vec::new();
    for d in nodes {
        d.docker(["load", "-i", ARCHIVE]);
        // Per-node paths under one name pattern, for the stack's templates.
        let at = tmp.path.join("nodes").join(d.hostname());
        fs::create_dir_all(&at).unwrap();
        symlink(d.socket(), at.join("docker.sock")).unwrap();
        symlink(d.exec_root(), at.join("exec")).unwrap();
        symlink(d.data_root(), at.join("data")).unwrap();
        // The prerequisite on the host: Docker's netns directory shared.
        let netns = d.exec_root().join("netns");
        support::sh(&format!(
            "mount --rbind {n} {n} && mount --make-rshared {n}",
            n = netns.display()
        ));
        pin_dirs.push(PathBuf::from(format!(
            "/sys/fs/bpf/{prefix}-{}",
            d.hostname()
        )));
    }
    let _pins = StackPins(pin_dirs.clone());
    let policy = tmp.path.join("policy.toml");
    fs::write(&policy, format!("ifaces = [\"{}\"]\n", docker::NIC)).unwrap();
    let nodes_dir = tmp.path.join("nodes").display().to_string();
    let envs = [
        (
            "INGRESS_XDP_PIN_DIR",
            format!("/sys/fs/bpf/{prefix}-{{{{.Node.Hostname}}}}"),
        ),
        (
            "DOCKER_SOCKET",
            format!("{nodes_dir}/{{{{.Node.Hostname}}}}/docker.sock"),
        ),
        (
            "DOCKER_EXEC_ROOT",
            format!("{nodes_dir}/{{{{.Node.Hostname}}}}/exec"),
        ),
        (
            "DOCKER_DATA_ROOT",
            format!("{nodes_dir}/{{{{.Node.Hostname}}}}/data"),
        ),
        ("INGRESS_XDP_POLICY", policy.display().to_string()),
        ("INGRESS_XDP_IMAGE", IMAGE.to_string()),
    ];
    let stack = prefix.replace('-', "");
    let t_deploy = Instant::now();
    docker_env(
        m,
        &envs,
        &[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            STACK,
            &stack,
        ],
    );

    let mgr_only = ServiceSpec::new("skmgr")
        .global()
        .label(LABEL_NODES, "node.role==manager")
        .publish(Publish::ingress(MGR, Proto::Tcp));
    m.create_service(&mgr_only);
    let (mpins, wpins) = (Pins::new(&pin_dirs[0]), Pins::new(&pin_dirs[1]));
    let blocked = |p: &Pins| {
        rules(p)
            .iter()
            .any(|r| r.proto == Protocol::Tcp && r.port == MGR && r.origin.service.is_some())
    };
    wait_for(
        "the worker's agent blocks the manager-only port",
        CONVERGE,
        || blocked(&wpins).then(String::new),
    );
    report(format!(
        "stack: deployed; the worker blocks {MGR}/tcp by the label policy {:.1} s after `docker stack deploy`",
        t_deploy.elapsed().as_secs_f64()
    ));
    for d in nodes {
        let status = wait_for("a healthy agent on every node", CONVERGE, || {
            let s = agent_status(d, &stack);
            s.contains("(healthy)").then_some(s)
        });
        report(format!("stack: {}: {}", d.hostname(), status.trim()));
    }
    // The host reads what the agents in containers recorded: every point is
    // attached, the sandbox's namespace found under the host's own path.
    for (d, dir) in nodes.iter().zip(&pin_dirs) {
        let status: serde_json::Value = serde_json::from_str(&support::sh(&format!(
            "{} --pin-dir {} status --json",
            support::bin(),
            dir.display()
        )))
        .unwrap();
        let points = status["attach_points"].as_array().unwrap();
        assert_eq!(points.len(), 2, "{}: {status}", d.hostname());
        for p in points {
            assert_eq!(p["presence"], "attached", "{}: {status}", d.hostname());
        }
        let sbox = points.iter().find(|p| !p["point"]["netns"].is_null());
        let here = sbox
            .and_then(|p| p["netns_here"].as_str())
            .unwrap_or_default();
        assert!(
            here.starts_with(
                &fs::canonicalize(d.exec_root())
                    .unwrap()
                    .display()
                    .to_string()
            ),
            "{}: the sandbox under the host's exec root: {status}",
            d.hostname()
        );
    }
    assert!(
        !blocked(&mpins),
        "the manager serves it: {:?}",
        rules(&mpins)
    );
    let worker_log = w.docker([
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.stack.namespace={stack}"),
    ]);
    // The agent logs to stderr.
    let out = w.docker_out(["logs", worker_log.trim()]);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("from the policy feed of the manager"),
        "{logs}"
    );

    // Each node serves its metrics on its own address (the stack's default);
    // the worker's say it follows the feed.
    for d in nodes {
        let metrics =
            wait_for(
                "the agent's metrics endpoint",
                CONVERGE,
                || match docker::http_get_path(
                    &d.netns_path(),
                    d.at(9464),
                    "/metrics",
                    traffic::PATIENCE,
                ) {
                    Reach::Served(body) => Some(body),
                    _ => None,
                },
            );
        assert!(metrics.contains("ingress_xdp_build_info"), "{metrics}");
        let mode = if d.hostname() == w.hostname() {
            "feed"
        } else {
            "manager"
        };
        assert!(
            metrics.contains(&format!("ingress_xdp_source_mode{{mode=\"{mode}\"}} 1")),
            "{}: {metrics}",
            d.hostname()
        );
    }

    // deploy/prometheus.yml, pointed at the manager: Swarm service discovery
    // finds the agent on every node, and each scrape succeeds.
    let scrape = fs::read_to_string(PROMETHEUS_CONFIG)
        .unwrap()
        .replace(
            "unix:///var/run/docker.sock",
            &format!("unix://{}", m.socket().display()),
        )
        .replace("refresh_interval: 30s", "refresh_interval: 1s");
    let prom = Prometheus::with_scrape_configs(&m.netns_path(), 19091, &scrape);
    let mut last = serde_json::Value::Null;
    let up = wait_for(
        "Prometheus to discover and scrape an agent on every node",
        CONVERGE,
        || {
            let now = prom.api("/api/v1/targets");
            if now["data"] != last["data"] {
                // What discovery found so far, for a failure's log.
                eprintln!("prometheus targets: {}", now["data"]);
                last = now;
            }
            let active = last["data"]["activeTargets"].as_array()?.clone();
            (active.len() == 2 && active.iter().all(|t| t["health"] == "up"))
                .then(|| serde_json::to_string(&active).unwrap())
        },
    );
    let up: Vec<serde_json::Value> = serde_json::from_str(&up).unwrap();
    let mut instances: Vec<String> = up
        .iter()
        .map(|t| {
            t["labels"]["instance"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    instances.sort();
    let mut hostnames = vec![m.hostname().to_string(), w.hostname().to_string()];
    hostnames.sort();
    assert_eq!(instances, hostnames, "{up:?}");
    report(format!(
        "stack: Prometheus found and scraped {} agents through dockerswarm_sd_configs",
        up.len()
    ));
    drop(prom);

    // Traffic to the blocked port on the worker, through the mesh stand-ins.
    m.wait_running(&mgr_only.name);
    let task = w.task_ingress_addr(&mgr_only.name);
    docker::install_mesh_standins(w, MGR, Proto::Tcp, task, 80);
    let client = swarm.lan.client("skc");
    assert_eq!(
        traffic::tcp(&client.path(), None, w.at(MGR), traffic::SILENCE),
        Reach::Silent,
        "blocked on the worker before the update"
    );

    // Rolling update to a new tag, probed the whole time.
    let next = format!("{IMAGE}-next");
    for d in nodes {
        d.docker(["tag", IMAGE, &next]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (through, probes, rule_gaps) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let prober = {
        let (stop, through, probes) = (stop.clone(), through.clone(), probes.clone());
        let (netns, dst) = (client.path(), w.at(MGR));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                probes.fetch_add(1, Ordering::Relaxed);
                if let Reach::Served(_) = traffic::tcp(&netns, None, dst, Duration::from_millis(50))
                {
                    through.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let watcher = {
        let (stop, gaps, dir) = (stop.clone(), rule_gaps.clone(), pin_dirs[1].clone());
        std::thread::spawn(move || {
            let p = Pins::new(&dir);
            while !stop.load(Ordering::Relaxed) {
                if !rules(&p).iter().any(|r| r.port == MGR) {
                    gaps.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let t_update = Instant::now();
    m.docker([
        "service",
        "update",
        "--no-resolve-image",
        "--image",
        &next,
        &format!("{stack}_agent"),
    ]);
    for d in nodes {
        wait_for("the new image healthy on every node", CONVERGE, || {
            let s = agent_status(d, &stack);
            (s.contains(&next) && s.contains("(healthy)")).then_some(s)
        });
    }
    let update_time = t_update.elapsed();
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    watcher.join().unwrap();
    report(format!(
        "stack: rolling update to {next} in {:.1} s: {} of {} probes to the blocked port got through; the rule left the worker's map {} times",
        update_time.as_secs_f64(),
        through.load(Ordering::Relaxed),
        probes.load(Ordering::Relaxed),
        rule_gaps.load(Ordering::Relaxed)
    ));
    assert_eq!(
        through.load(Ordering::Relaxed),
        0,
        "no connection during the update"
    );
    assert_eq!(rule_gaps.load(Ordering::Relaxed), 0, "the rule stayed");
    assert!(probes.load(Ordering::Relaxed) > 20, "the prober ran");

    // Removing the stack ends the agents; the drops stay.
    m.docker(["stack", "rm", &stack]);
    for d in nodes {
        wait_for("no agent container left", CONVERGE, || {
            agent_status(d, &stack).trim().is_empty().then(String::new)
        });
    }
    assert!(
        blocked(&wpins),
        "the drop stays after stack rm: {:?}",
        rules(&wpins)
    );
    assert_eq!(
        traffic::tcp(&client.path(), None, w.at(MGR), traffic::SILENCE),
        Reach::Silent,
        "still blocked with no agent"
    );
    // The control: without the filter the same probe is served, so the
    // silence above was the drop.
    attach::detach_all(&wpins).expect("detach the worker");
    assert_eq!(
        client.http(w.at(MGR)),
        Reach::Served(docker::reply_of(&mgr_only.name, w.hostname())),
        "served once detached\n{}",
        w.mesh_diagnostics()
    );
}
