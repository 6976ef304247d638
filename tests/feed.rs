//! The policy feed on real swarms of private dockerds: agents on managers
//! serve each node its own rule set over mutual TLS with the certificates
//! Swarm gave the nodes; agents on workers follow it, without DOCKER_HOST.
//!
//! * `workers_follow_the_feed_and_fail_over`: 2 managers and a worker, an
//!   agent on each. A service whose `ingress-xdp.nodes` constraint names the
//!   manager role, and one that needs a node label, are blocked on the worker
//!   (the label policy, which the worker's own engine cannot see). The worker
//!   follows label changes on its node (latency reported). The agent on the
//!   manager the worker reads from is killed: the worker fails over to the
//!   other one and keeps following. With no manager agent left, the worker
//!   keeps every rule (fail closed) and says so once.
//! * `the_feed_refuses_strangers_and_follows_a_ca_rotation`: 1 manager and a
//!   worker. Clients made with the `openssl` CLI from a client namespace try
//!   the feed: plaintext, no certificate, a self-signed certificate with the
//!   worker's subject, a certificate of another CA ("another swarm") with the
//!   worker's subject, a "manager" certificate with a forged CN signed by the
//!   manager's own (non-CA) node certificate, and the worker's real
//!   certificate asking for the manager's policy. None gets a rule set, and
//!   each refusal is logged once; the worker's real certificate asking for
//!   its own policy does get one (the control that the client method works).
//!   Then `docker swarm ca --rotate` replaces the root and every node
//!   certificate: both agents reload, and a policy change still reaches the
//!   worker.
//!
//! Needs root, docker.io, busybox-static, socat and openssl (`cargo xtask
//! setup --test-packages`). Measured numbers are printed as `REPORT` lines.

#[path = "support/mod.rs"]
mod support;

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use ingress_xdp::{feed::DEFAULT_PORT, policy::LABEL_NODES, spec::Protocol};
use support::{
    TestPins,
    agent::{AgentProc, docker_blocks, measure, rules, sample, scrape, wait_rules},
    docker::{Dockerd, Proto, Publish, ServiceSpec, Swarm, exec_in_out},
    pki::{TempDir, openssl},
};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const MGR: u16 = 8081;
const EDGE: u16 = 8053;
/// Generous bound for tests; the latency goal (250 ms p99) is the bench's.
const CONVERGE: Duration = Duration::from_secs(20);
const FEED_LINE: &str = "from the policy feed of the manager at";

fn report(msg: impl AsRef<str>) {
    eprintln!("REPORT {}", msg.as_ref());
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// An agent on `d` with its Swarm certificates from `d`'s data root.
fn agent_on(d: &Dockerd, pins: &TestPins) -> AgentProc {
    let root = d.data_root().display().to_string();
    AgentProc::start(
        d,
        &pins.pins,
        &["--docker-data-root", &root, "--metrics-addr", METRICS],
    )
}

/// Every agent's metrics endpoint, inside its own node's namespace.
const METRICS: &str = "127.0.0.1:9464";

/// The manager address in the newest "following ... feed" line of `log`.
fn feed_manager(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains(FEED_LINE))?;
    let rest = &line[line.find(FEED_LINE)? + FEED_LINE.len()..];
    rest.split_whitespace().next().map(str::to_string)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

#[test]
fn workers_follow_the_feed_and_fail_over() {
    support::require_root();
    let swarm = Swarm::start("fa", 2, 1);
    let (m0, m1, w) = (&swarm.managers[0], &swarm.managers[1], &swarm.workers[0]);
    let (p0, p1, pw) = (
        TestPins::new("fa0"),
        TestPins::new("fa1"),
        TestPins::new("faw"),
    );
    let mut a0 = agent_on(m0, &p0);
    let mut a1 = agent_on(m1, &p1);
    for a in [&a0, &a1] {
        a.wait_log("serving the policy feed on", CONVERGE);
    }
    let aw = agent_on(w, &pw);

    let mgr_only = ServiceSpec::new("fmgr")
        .global()
        .label(LABEL_NODES, "node.role==manager")
        .publish(Publish::ingress(MGR, Proto::Tcp));
    let edge = ServiceSpec::new("fedge")
        .global()
        .label(LABEL_NODES, "node.labels.edge==true")
        .publish(Publish::ingress(EDGE, Proto::Udp));
    let t_create = measure(
        &pw.pins,
        &aw,
        CONVERGE,
        || {
            m0.create_service(&mgr_only);
        },
        docker_blocks(&[(TCP, MGR)]),
    );
    report(format!(
        "feed: {LABEL_NODES}=node.role==manager blocked on the worker {} after `docker service create` started",
        ms(t_create)
    ));
    m0.create_service(&edge);
    wait_rules(
        &pw.pins,
        &aw,
        CONVERGE,
        docker_blocks(&[(TCP, MGR), (UDP, EDGE)]),
    );
    // The managers themselves block the edge service (no label) and not the
    // manager-only one.
    for (p, a) in [(&p0, &a0), (&p1, &a1)] {
        wait_rules(&p.pins, a, CONVERGE, docker_blocks(&[(UDP, EDGE)]));
    }
    let log = aw.log();
    assert!(
        feed_manager(&log).is_some(),
        "worker follows the feed:\n{log}"
    );
    assert!(!log.contains("DOCKER_HOST"), "{log}");
    let why = rules(&pw.pins)
        .into_iter()
        .find(|r| r.port == MGR)
        .and_then(|r| r.origin.why)
        .unwrap_or_default();
    assert!(
        why.contains("node.role==manager"),
        "reason carried: {why:?}"
    );

    // Label changes on the worker's node, each measured from the command's
    // start to the worker's map.
    let worker_id = w.node_id();
    let mut samples = Vec::new();
    for round in 0..6 {
        let (arg, want): (&str, &[(Protocol, u16)]) = if round % 2 == 0 {
            ("--label-add", &[(TCP, MGR)])
        } else {
            ("--label-rm", &[(TCP, MGR), (UDP, EDGE)])
        };
        let label = if round % 2 == 0 { "edge=true" } else { "edge" };
        let mut command = Duration::ZERO;
        let total = measure(
            &pw.pins,
            &aw,
            CONVERGE,
            || {
                let t = Instant::now();
                m0.docker(["node", "update", arg, label, &worker_id]);
                command = t.elapsed();
            },
            docker_blocks(want),
        );
        samples.push(total.saturating_sub(command));
    }
    let all = samples.clone();
    report(format!(
        "feed: worker follows a label change on its node, from `docker node update` returning to the worker's map: p50 {}, max {} ({} changes, ms: {:?})",
        ms(percentile(&mut samples, 0.5)),
        ms(percentile(&mut samples, 1.0)),
        all.len(),
        all.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    ));

    // Failover: stop the agent the worker reads from.
    let used = feed_manager(&aw.log()).expect("a feed manager");
    let (stopped, other) = if used.starts_with(&format!("{}:", m0.addr())) {
        a0.kill();
        ("m0", m1.addr())
    } else {
        a1.kill();
        ("m1", m0.addr())
    };
    let t_fail = measure(
        &pw.pins,
        &aw,
        CONVERGE,
        || {
            m0.docker(["node", "update", "--label-add", "edge=true", &worker_id]);
        },
        docker_blocks(&[(TCP, MGR)]),
    );
    let now = feed_manager(&aw.log()).expect("a feed manager");
    assert!(
        now.starts_with(&format!("{other}:")),
        "worker moved to the other manager ({other}), log:\n{}",
        aw.log()
    );
    report(format!(
        "feed: agent on the manager in use ({stopped}) killed; the worker followed a label change through {now} {}",
        ms(t_fail)
    ));

    // No feed at all: the worker keeps its rules, even through a change
    // that would open a port, and says why once.
    let outages = aw.log().matches("policy feed unavailable").count();
    a0.kill();
    a1.kill();
    let start = Instant::now();
    while aw.log().matches("policy feed unavailable").count() == outages {
        assert!(
            start.elapsed() < CONVERGE,
            "no outage logged:\n{}",
            aw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m0.docker(["node", "update", "--label-rm", "edge", &worker_id]);
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(3) {
        assert!(
            docker_blocks(&[(TCP, MGR)])(&rules(&pw.pins)),
            "worker kept its rules without a feed: {:#?}\n{}",
            rules(&pw.pins),
            aw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = aw.log();
    assert_eq!(
        log.matches("policy feed unavailable").count(),
        outages + 1,
        "the outage logged once:\n{log}"
    );
    assert!(
        log.contains("keeping the rules the agent already had"),
        "{log}"
    );
}

/// What an `openssl s_client` (or plaintext socat) session to the feed got
/// back within a few seconds.
fn try_feed(client_ns: &Path, target: &str, tls_args: Option<&str>, request: &str) -> String {
    let cmd = match tls_args {
        Some(args) => format!(
            "printf '%s\\n' '{request}' | timeout 4 openssl s_client -connect {target} \
             -servername swarm-manager -quiet -ign_eof {args} 2>&1"
        ),
        None => format!("printf '%s\\n' '{request}' | timeout 4 socat -t 3 - TCP:{target} 2>&1"),
    };
    let out = exec_in_out(client_ns, &cmd);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// swarmkit's PEM keys carry a `kek-version` header; openssl wants plain PEM.
fn plain_key(from: &Path, to: &Path) {
    let text = fs::read_to_string(from).expect("node key");
    let plain: String = text
        .lines()
        .filter(|l| !l.contains(": ") && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(to, plain).expect("write key");
}

/// Signs `csr` with `<ca>.crt`/`<ca>.key` into an X.509 v3 leaf with Swarm's
/// key usages (leaf.ext), so that only its chain can be refused.
fn sign(dir: &Path, csr: &str, ca: &str, out: &str) {
    let (cert, key) = (format!("{ca}.crt"), format!("{ca}.key"));
    fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("write leaf.ext");
    let args = [
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        &cert,
        "-CAkey",
        &key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        out,
    ];
    openssl(dir, &args);
}

fn refusals(agent: &AgentProc) -> usize {
    agent.log().matches("policy feed: refused").count()
}

#[track_caller]
fn wait_refusals(agent: &AgentProc, n: usize) {
    let start = Instant::now();
    while refusals(agent) < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "expected {n} refusals:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_feed_refuses_strangers_and_follows_a_ca_rotation() {
    support::require_root();
    let swarm = Swarm::start("fb", 1, 1);
    let (m, w) = (&swarm.managers[0], &swarm.workers[0]);
    report(format!(
        "feed: engine {}",
        m.docker([
            "version",
            "--format",
            "{{.Server.Version}} (API {{.Server.APIVersion}})"
        ])
        .trim()
    ));
    let (pm, pw) = (TestPins::new("fbm"), TestPins::new("fbw"));
    let am = agent_on(m, &pm);
    let aw = agent_on(w, &pw);
    am.wait_log("serving the policy feed on", CONVERGE);
    let mgr_only = ServiceSpec::new("fbmgr")
        .global()
        .label(LABEL_NODES, "node.role==manager")
        .publish(Publish::ingress(MGR, Proto::Tcp));
    m.create_service(&mgr_only);
    wait_rules(&pw.pins, &aw, CONVERGE, docker_blocks(&[(TCP, MGR)]));
    aw.wait_log(FEED_LINE, CONVERGE);

    let tmp = TempDir::new("fbpki");
    let dir = &tmp.path;
    let (wcerts, mcerts) = (
        w.data_root().join("swarm/certificates"),
        m.data_root().join("swarm/certificates"),
    );
    plain_key(&wcerts.join("swarm-node.key"), &dir.join("worker.key"));
    plain_key(&mcerts.join("swarm-node.key"), &dir.join("manager.key"));
    fs::copy(wcerts.join("swarm-node.crt"), dir.join("worker.crt")).unwrap();
    fs::copy(mcerts.join("swarm-node.crt"), dir.join("manager.crt")).unwrap();
    fs::copy(mcerts.join("swarm-root-ca.crt"), dir.join("root.crt")).unwrap();
    let worker_id = w.node_id();
    let manager_id = m.node_id();
    let cluster = m.info()["Swarm"]["Cluster"]["ID"]
        .as_str()
        .expect("cluster id")
        .to_string();
    let subject = |ou: &str| format!("/O={cluster}/OU={ou}/CN={worker_id}");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    // Self-signed, with the worker's exact subject.
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "self.key",
                "-out",
                "self.crt",
                "-days",
                "2",
                "-subj",
                &subject("swarm-worker"),
            ],
        ]
        .concat(),
    );
    // Another CA named like Swarm's, and a leaf of it with the worker's subject.
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "otherca.key",
                "-out",
                "otherca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=swarm-ca",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "other.key",
                "-out",
                "other.csr",
                "-subj",
                &subject("swarm-worker"),
            ],
        ]
        .concat(),
    );
    sign(dir, "other.csr", "otherca", "other.crt");
    // A manager certificate with the worker's CN, signed by the manager's own
    // node certificate (which is no CA).
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "forged.key",
                "-out",
                "forged.csr",
                "-subj",
                &subject("swarm-manager"),
            ],
        ]
        .concat(),
    );
    sign(dir, "forged.csr", "manager", "forged.crt");

    let client = swarm.lan.client("fbc");
    let target = format!("{}:{DEFAULT_PORT}", m.addr());
    let ask = |node: &str| format!(r#"{{"node":"{node}"}}"#);
    let with = |cert: &str, key: &str| {
        format!(
            "-CAfile {root} -cert {c} -key {k}",
            root = dir.join("root.crt").display(),
            c = dir.join(cert).display(),
            k = dir.join(key).display()
        )
    };
    let cases: Vec<(&str, Option<String>, String)> = vec![
        ("plaintext", None, ask(&worker_id)),
        (
            "no client certificate",
            Some(format!("-CAfile {}", dir.join("root.crt").display())),
            ask(&worker_id),
        ),
        (
            "a self-signed certificate",
            Some(with("self.crt", "self.key")),
            ask(&worker_id),
        ),
        (
            "another swarm's CA",
            Some(with("other.crt", "other.key")),
            ask(&worker_id),
        ),
        (
            "a manager certificate with a forged CN",
            Some(with("forged.crt", "forged.key")),
            ask(&worker_id),
        ),
        (
            "the worker asking for the manager's policy",
            Some(with("worker.crt", "worker.key")),
            ask(&manager_id),
        ),
    ];
    for (what, tls, request) in &cases {
        let before = refusals(&am);
        let got = try_feed(&client.path(), &target, tls.as_deref(), request);
        assert!(
            !got.contains(r#""type":"rules""#),
            "{what}: got rules: {got}"
        );
        wait_refusals(&am, before + 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            refusals(&am),
            before + 1,
            "{what}: one refusal logged\n{}",
            am.log()
        );
        if *what == "the worker asking for the manager's policy" {
            assert!(
                got.contains(r#""type":"refused""#) && got.contains("only its own"),
                "{what}: {got}"
            );
        }
        let line = am
            .log()
            .lines()
            .rev()
            .find(|l| l.contains("policy feed: refused"))
            .unwrap_or_default()
            .to_string();
        report(format!("feed refuses {what}: {line}"));
    }
    let control = try_feed(
        &client.path(),
        &target,
        Some(&with("worker.crt", "worker.key")),
        &ask(&worker_id),
    );
    assert!(
        control.contains(r#""type":"rules""#) && control.contains(&MGR.to_string()),
        "the worker's own certificate gets its rule set: {control}"
    );
    // The counts in the manager's metrics: every refusal, and the worker's
    // agent plus the control served; the worker follows the feed.
    let metrics = scrape(&m.netns_path(), METRICS);
    assert_eq!(
        sample(&metrics, "ingress_xdp_feed_clients_refused_total"),
        Some(refusals(&am) as f64),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "ingress_xdp_feed_clients_served_total").unwrap_or(0.0) >= 2.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "ingress_xdp_feed_clients_connected").unwrap_or(0.0) >= 1.0,
        "the worker's agent stays connected: {metrics}"
    );
    let worker_metrics = scrape(&w.netns_path(), METRICS);
    assert_eq!(
        sample(&worker_metrics, r#"ingress_xdp_source_mode{mode="feed"}"#),
        Some(1.0),
        "{worker_metrics}"
    );

    // Root rotation: every certificate changes; both agents move to the new
    // ones and the feed keeps working.
    let t_rotate = Instant::now();
    m.docker(["swarm", "ca", "--rotate"]);
    report(format!(
        "feed: docker swarm ca --rotate took {}",
        ms(t_rotate.elapsed())
    ));
    aw.wait_log("certificates changed; reconnecting", CONVERGE);
    let t_after = measure(
        &pw.pins,
        &aw,
        CONVERGE,
        || {
            m.label_rm(&mgr_only.name, LABEL_NODES);
        },
        docker_blocks(&[]),
    );
    am.wait_log("reloaded this node's certificates", CONVERGE);
    report(format!(
        "feed: after the CA rotation a label change reached the worker {}",
        ms(t_after)
    ));
}
