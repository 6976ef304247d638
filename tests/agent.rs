//! The agent against a real Docker Engine (a private dockerd with a one-node
//! swarm): the map follows services, labels and node labels; traffic through
//! the real ingress_sbox; dockerd restarts and swarm re-inits; bad labels and
//! an unreachable engine.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use ingress_xdp::spec::Protocol::{self, Tcp, Udp};
use support::{
    TestPins,
    agent::{AgentProc, docker_blocks, measure, rules, sample, scrape, wait_rules},
    docker::{Dockerd, Proto, Publish, ServiceSpec, http_get, reply_of},
    traffic::{PATIENCE, Reach, SILENCE},
};

/// The agents' metrics endpoint, inside each test's own dockerd namespace.
const METRICS: &str = "127.0.0.1:9464";

/// The issue's bound for a change to reach the map.
const CONVERGE: Duration = Duration::from_secs(2);

fn swarm(tag: &str) -> Dockerd {
    let d = Dockerd::start(tag);
    d.swarm_init();
    d.load_test_image();
    d
}

fn cli(pins: &TestPins, args: &str) -> String {
    support::sh(&format!(
        "{} --pin-dir {} {args}",
        support::bin(),
        pins.dir().display()
    ))
}

#[test]
fn map_follows_services_labels_and_node_labels() {
    let d = swarm("g");
    let pins = TestPins::new("g");
    // A manual rule made before the agent starts: never touched by sync.
    cli(&pins, "block 9000");

    let edge_only = ServiceSpec::new("ge")
        .publish(Publish::ingress(8101, Proto::Tcp))
        .publish(Publish::ingress(8102, Proto::Udp))
        .label("ingress-xdp.nodes", "node.labels.edge==true");
    let plain = ServiceSpec::new("gp").publish(Publish::ingress(8103, Proto::Tcp));
    let host_blocked = ServiceSpec::new("gh")
        .publish(Publish::host(8104, Proto::Tcp))
        .label("ingress-xdp.block", "true");
    let host_constrained = ServiceSpec::new("gc")
        .publish(Publish::host(8105, Proto::Tcp))
        .label("ingress-xdp.nodes", "node.labels.edge==true");
    for s in [&edge_only, &plain, &host_blocked, &host_constrained] {
        d.create_service(s);
    }

    let agent = AgentProc::start(&d, &pins.pins, &[]);
    let first = wait_rules(
        &pins.pins,
        &agent,
        Duration::from_secs(20),
        docker_blocks(&[(Tcp, 8101), (Udp, 8102), (Tcp, 8104)]),
    );
    eprintln!("initial sync: {first:?}");
    agent.wait_log(
        "reading services and node labels from the local engine",
        SILENCE,
    );

    // Origins: the service and the deciding rule; the manual rule stays manual.
    let list = cli(&pins, "list");
    assert!(
        list.contains(&format!(
            "service {}: ingress-xdp.nodes=node.labels.edge==true does not match this node",
            edge_only.name
        )),
        "{list}"
    );
    assert!(
        list.contains(&format!(
            "service {}: ingress-xdp.block=true",
            host_blocked.name
        )),
        "{list}"
    );
    let manual = rules(&pins.pins)
        .into_iter()
        .find(|r| r.port == 9000)
        .unwrap();
    assert!(manual.origin.manual && manual.origin.service.is_none());
    let json: serde_json::Value = serde_json::from_str(&cli(&pins, "list --json")).unwrap();
    assert!(
        json["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["origin"]["service"] == edge_only.name.as_str())
    );

    let mut latencies: Vec<(&str, Duration)> = Vec::new();
    let mut step = |what: &'static str, change: &dyn Fn(), want: &[(Protocol, u16)]| {
        let with_manual = |rules: &[ingress_xdp::rules::RuleEntry]| {
            docker_blocks(want)(rules) && rules.iter().any(|r| r.port == 9000 && r.origin.manual)
        };
        let took = measure(
            &pins.pins,
            &agent,
            Duration::from_secs(10),
            change,
            with_manual,
        );
        eprintln!("{what}: converged in {took:?}");
        latencies.push((what, took));
    };

    step(
        "service update --publish-add",
        &|| {
            d.docker([
                "service",
                "update",
                "--detach",
                "--publish-add",
                "published=8106,target=80",
                &edge_only.name,
            ]);
        },
        &[(Tcp, 8101), (Udp, 8102), (Tcp, 8104), (Tcp, 8106)],
    );
    step(
        "service update --publish-rm",
        &|| {
            // Through the API: the CLI's --publish-rm removes every port
            // with the same target port (8106 too).
            d.publish_rm(&edge_only.name, Publish::ingress(8101, Proto::Tcp));
        },
        &[(Udp, 8102), (Tcp, 8104), (Tcp, 8106)],
    );
    step(
        "service label change",
        &|| {
            d.docker([
                "service",
                "update",
                "--detach",
                "--label-add",
                "ingress-xdp.block=true",
                &plain.name,
            ]);
        },
        &[(Udp, 8102), (Tcp, 8103), (Tcp, 8104), (Tcp, 8106)],
    );
    let node = d.node_id();
    step(
        "node label change",
        &|| {
            d.docker(["node", "update", "--label-add", "edge=true", &node]);
        },
        &[(Tcp, 8103), (Tcp, 8104)],
    );
    step(
        "service rm",
        &|| {
            d.docker(["service", "rm", &host_blocked.name]);
        },
        &[(Tcp, 8103)],
    );
    for (what, took) in &latencies {
        assert!(*took <= CONVERGE, "{what} took {took:?}");
    }
    // Each change is logged once, with its reason.
    let log = agent.log();
    assert!(
        log.contains(&format!("blocked 8106/tcp: service {}", edge_only.name)),
        "{log}"
    );
    assert!(log.contains("unblocked 8102/udp"), "{log}");
}

#[test]
fn blocks_traffic_through_the_real_ingress_sbox() {
    let d = swarm("t");
    let pins = TestPins::new("t");
    let blocked = ServiceSpec::new("tb")
        .publish(Publish::ingress(8201, Proto::Tcp))
        .label("ingress-xdp.block", "true");
    let open = ServiceSpec::new("to").publish(Publish::ingress(8202, Proto::Tcp));
    d.create_service_running(&blocked);
    d.create_service_running(&open);
    d.install_service_standins(&blocked.name);
    d.install_service_standins(&open.name);
    let client = d.client("tc");
    let local = |port| {
        http_get(
            &d.netns_path(),
            std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), port),
            PATIENCE,
        )
    };
    let blocked_reply = Reach::Served(reply_of(&blocked.name, d.hostname()));
    let open_reply = Reach::Served(reply_of(&open.name, d.hostname()));
    assert_eq!(
        client.http(d.at(8201)),
        blocked_reply,
        "served before the agent"
    );
    assert_eq!(
        local(8201),
        blocked_reply,
        "served locally before the agent"
    );

    let agent = AgentProc::start(&d, &pins.pins, &[]);
    wait_rules(
        &pins.pins,
        &agent,
        Duration::from_secs(20),
        docker_blocks(&[(Tcp, 8201)]),
    );
    agent.wait_log("attached eth1 in", Duration::from_secs(5));

    assert_eq!(
        client.http(d.at(8201)),
        Reach::Silent,
        "remote, blocked at the NIC"
    );
    // Local traffic is DNATed to the sandbox: only its eth1 hook can drop it.
    assert_eq!(
        http_get(
            &d.netns_path(),
            std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), 8201),
            SILENCE
        ),
        Reach::Silent,
        "local, blocked at the sandbox's eth1"
    );
    assert_eq!(client.http(d.at(8202)), open_reply);
    assert_eq!(local(8202), open_reply);

    // The label goes: the port opens again.
    d.docker([
        "service",
        "update",
        "--detach",
        "--label-rm",
        "ingress-xdp.block",
        &blocked.name,
    ]);
    wait_rules(&pins.pins, &agent, CONVERGE, docker_blocks(&[]));
    assert_eq!(client.http(d.at(8201)), blocked_reply);
}

#[test]
fn reattaches_after_dockerd_restart_and_swarm_reinit() {
    let mut d = swarm("r");
    let pins = TestPins::new("r");
    let spec = ServiceSpec::new("rb")
        .publish(Publish::ingress(8301, Proto::Tcp))
        .label("ingress-xdp.block", "true");
    d.create_service_running(&spec);
    let agent = AgentProc::start(&d, &pins.pins, &["--metrics-addr", METRICS]);
    wait_rules(
        &pins.pins,
        &agent,
        Duration::from_secs(20),
        docker_blocks(&[(Tcp, 8301)]),
    );
    agent.wait_log("attached eth1 in", Duration::from_secs(5));
    let metrics = scrape(&d.netns_path(), METRICS);
    assert_eq!(
        sample(&metrics, "ingress_xdp_sandbox_reattaches_total"),
        Some(0.0)
    );
    let sbox_attached = |log: &str| log.matches("attached eth1 in").count();

    // dockerd restart: a new ingress_sbox (the old links die with it).
    d.restart();
    // From the moment the new sandbox is usable (both interfaces addressed)
    // the agent must be attached within 1 s.
    d.wait_sbox();
    let ready = std::time::Instant::now();
    while sbox_attached(&agent.log()) < 2 && ready.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = ready.elapsed();
    eprintln!("re-attached to the new ingress_sbox {took:?} after it was ready");
    assert_eq!(sbox_attached(&agent.log()), 2, "{}", agent.log());
    assert!(took <= Duration::from_secs(1), "re-attach took {took:?}");
    d.wait_running(&spec.name);
    assert!(
        agent.log().contains("Docker reachable again"),
        "{}",
        agent.log()
    );
    let status = cli(&pins, "status");
    assert!(
        status.contains("attached") && !status.contains("interface gone"),
        "{status}"
    );
    // Traffic proves the new sandbox hook drops (stand-ins are re-made: the
    // restart gave the task a new address).
    d.install_service_standins(&spec.name);
    let local = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), 8301);
    assert_eq!(http_get(&d.netns_path(), local, SILENCE), Reach::Silent);
    assert_eq!(support::agent::docker_ports(&pins.pins), vec![(Tcp, 8301)]);

    // swarm leave: the node has no swarm to read a policy from, so the
    // drops stay (fail closed). Init again with the service re-created on
    // another port: the new sandbox is attached and the map follows the new
    // swarm, with no manual step.
    d.swarm_leave();
    agent.wait_log("not part of a swarm", Duration::from_secs(10));
    assert_eq!(support::agent::docker_ports(&pins.pins), vec![(Tcp, 8301)]);
    d.swarm_init();
    let spec = ServiceSpec {
        publish: vec![Publish::ingress(8302, Proto::Tcp)],
        ..spec
    };
    d.create_service_running(&spec);
    wait_rules(
        &pins.pins,
        &agent,
        Duration::from_secs(10),
        docker_blocks(&[(Tcp, 8302)]),
    );
    let local = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), 8302);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sbox_attached(&agent.log()) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sbox_attached(&agent.log()), 3, "{}", agent.log());
    // Two new sandboxes, each a re-attach; the outages were sync errors.
    let metrics = scrape(&d.netns_path(), METRICS);
    assert_eq!(
        sample(&metrics, "ingress_xdp_sandbox_reattaches_total"),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "ingress_xdp_sync_errors_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ingress_xdp_docker_up"),
        Some(1.0),
        "{metrics}"
    );
    d.install_service_standins(&spec.name);
    assert_eq!(http_get(&d.netns_path(), local, SILENCE), Reach::Silent);
    let status: serde_json::Value = serde_json::from_str(&cli(&pins, "status --json")).unwrap();
    let present: Vec<_> = status["attach_points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["point"]["iface"] == "eth1")
        .collect();
    assert_eq!(
        present.len(),
        1,
        "stale sandbox points are forgotten: {status}"
    );
    assert_eq!(present[0]["presence"], "attached");
}

#[test]
fn bad_labels_and_an_unreachable_engine_keep_the_drops() {
    let mut d = swarm("b");
    let pins = TestPins::new("b");
    let typo = ServiceSpec::new("bt")
        .publish(Publish::ingress(8401, Proto::Tcp))
        .label("ingress-xdp.nodes", "node.label.edge==true");
    let fine = ServiceSpec::new("bf")
        .publish(Publish::ingress(8402, Proto::Tcp))
        .label("ingress-xdp.block", "true");
    d.create_service(&typo);
    d.create_service(&fine);
    let agent = AgentProc::start(
        &d,
        &pins.pins,
        &["--default", "deny", "--resync-interval", "1"],
    );
    // The bad label falls back to the node default (deny): blocked; the
    // other service is unaffected; the sync goes on.
    wait_rules(
        &pins.pins,
        &agent,
        Duration::from_secs(20),
        docker_blocks(&[(Tcp, 8401), (Tcp, 8402)]),
    );
    std::thread::sleep(Duration::from_millis(2500)); // a few resyncs
    let warning = format!("service {} (", typo.name);
    let log = agent.log();
    assert_eq!(
        log.matches(&warning).count(),
        1,
        "one warning per service revision: {log}"
    );
    assert!(log.contains("did you mean node.labels.edge"), "{log}");
    let list = cli(&pins, "list");
    assert!(list.contains("node default deny"), "{list}");

    // A new revision of the service warns again, once.
    d.docker([
        "service",
        "update",
        "--detach",
        "--label-add",
        "x=y",
        &typo.name,
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(agent.log().matches(&warning).count(), 2, "{}", agent.log());

    // The engine goes away: the drops stay, the agent says so once and keeps running.
    let before = rules(&pins.pins);
    d.stop();
    agent.wait_log("Docker unavailable", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rules(&pins.pins), before);
    assert_eq!(
        agent.log().matches("Docker unavailable").count(),
        1,
        "{}",
        agent.log()
    );
    d.start_again();
    agent.wait_log("Docker reachable again", Duration::from_secs(40));
    wait_rules(
        &pins.pins,
        &agent,
        CONVERGE,
        docker_blocks(&[(Tcp, 8401), (Tcp, 8402)]),
    );

    // An agent restarted against a socket that does not exist: a clear
    // message, the Docker-derived drops (and the attach points) kept, and it
    // keeps running.
    drop(agent);
    let before = rules(&pins.pins);
    let mut lost = AgentProc::start(
        &d,
        &pins.pins,
        &["--local-docker", "unix:///nonexistent/docker.sock"],
    );
    lost.wait_log(
        "Docker unavailable (connecting to the Docker engine at unix:///nonexistent/docker.sock",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(lost.is_running());
    assert_eq!(rules(&pins.pins), before);
    assert_eq!(
        support::agent::docker_ports(&pins.pins),
        vec![(Tcp, 8401), (Tcp, 8402)]
    );
}
