//! Self-test of the Docker fixtures in support/docker.rs, against real
//! Docker Engines (private dockerd processes in their own namespaces):
//!
//! * one daemon: swarm init, test image, a service with TCP and UDP ingress
//!   ports and a host-mode port, served to a client on the lan through the
//!   real ingress_sbox eth1 (with the mesh stand-ins), service updates, and a
//!   daemon that comes back with its swarm after a stop and after a crash;
//! * a manager + worker swarm: two Ready nodes, the worker's view of the
//!   ingress network, the manager's TCP API seen from the worker;
//! * teardown: nothing left (namespaces, processes, mounts, cgroups,
//!   directories), also when the test panics.
//!
//! Needs root, docker.io, busybox-static and socat (`cargo xtask setup
//! --test-packages`). The tests run in parallel with each other on purpose.

#[path = "support/mod.rs"]
mod support;

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use support::{
    docker::{self, Client, Cluster, Dockerd, Footprint, Proto, Publish, ServiceSpec},
    traffic::{self, Reach},
};

const WEB: u16 = 8080;
const DNS: u16 = 8053;
const HOSTPORT: u16 = 8090;
const ADDED: u16 = 8082;

fn timing(what: &str, t0: Instant) {
    eprintln!(
        "TIMING {what}: {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
}

/// Packets received on the sbox's eth1.
fn sbox_eth1_rx(d: &Dockerd) -> u64 {
    let out = docker::exec_in(&d.sbox_netns(), "ip -s -j link show dev eth1");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

#[track_caller]
fn served(d: &Dockerd, what: &str, reach: Reach, reply: &str) {
    assert_eq!(
        reach,
        Reach::Served(reply.into()),
        "{what}\n{}",
        d.mesh_diagnostics()
    );
}

/// TCP and UDP through the mesh stand-ins and the real sbox, and the
/// host-mode port directly.
fn check_served(d: &Dockerd, client: &Client, service: &str) {
    let reply = docker::reply_of(service, d.hostname());
    let (rx0, tcp0, udp0) = (
        sbox_eth1_rx(d),
        docker::sbox_standin_packets(d, WEB, Proto::Tcp),
        docker::sbox_standin_packets(d, DNS, Proto::Udp),
    );
    served(
        d,
        "tcp ingress port from the lan",
        client.http(d.at(WEB)),
        &reply,
    );
    served(
        d,
        "udp ingress port from the lan",
        client.udp(d.at(DNS)),
        &reply,
    );
    assert!(docker::sbox_standin_packets(d, WEB, Proto::Tcp) > tcp0);
    assert!(docker::sbox_standin_packets(d, DNS, Proto::Udp) > udp0);
    assert!(
        sbox_eth1_rx(d) > rx0,
        "traffic went through the sbox's eth1"
    );
    // The node itself, via localhost (OUTPUT DNAT, MASQUERADE, route_localnet).
    let local: SocketAddr = format!("127.0.0.1:{WEB}").parse().unwrap();
    served(
        d,
        "tcp ingress port from the node's localhost",
        docker::http_get(&d.netns_path(), local, traffic::PATIENCE),
        &reply,
    );
    // Host mode: Docker's own DNAT to the task on docker_gwbridge.
    let tcp_before = docker::sbox_standin_packets(d, WEB, Proto::Tcp);
    served(
        d,
        "host-mode port from the lan",
        client.http(d.at(HOSTPORT)),
        &reply,
    );
    assert_eq!(
        docker::sbox_standin_packets(d, WEB, Proto::Tcp),
        tcp_before,
        "host mode bypasses the sbox"
    );
}

/// Leaves a mark in the current ingress_sbox (nsfs inode numbers are reused
/// at once, so they cannot tell a new namespace from the old one).
fn mark_sbox(d: &Dockerd) {
    docker::exec_in(&d.sbox_netns(), "iptables -w -t raw -N IXT-MARK");
}

fn sbox_marked(d: &Dockerd) -> bool {
    docker::exec_in_out(&d.sbox_netns(), "iptables -w -t raw -n -L IXT-MARK")
        .status
        .success()
}

#[test]
fn daemon_serves_through_the_real_sbox_and_survives_restarts() {
    let t0 = Instant::now();
    let mut d = Dockerd::start("d");
    timing("daemon start (netns, lan, dockerd up)", t0);
    let footprint = d.footprint().merge(d.lan().footprint());

    let t = Instant::now();
    let node = d.swarm_init();
    timing("swarm init (until ingress_sbox is up)", t);
    assert!(!node.is_empty());
    assert_eq!(d.swarm_state(), "active");
    assert!(d.sbox_netns().exists());

    let t = Instant::now();
    d.load_test_image();
    timing("test image build", t);

    let spec = ServiceSpec::new("web")
        .publish(Publish::ingress(WEB, Proto::Tcp))
        .publish(Publish::ingress(DNS, Proto::Udp))
        .publish(Publish::host(HOSTPORT, Proto::Tcp))
        .label("ixt.test", "fixture");
    let t = Instant::now();
    let tasks = d.create_service_running(&spec);
    timing("service create until Running", t);
    timing("single daemon from nothing to a running service", t0);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].node_id, node);
    let svc = &spec.name;
    let ports = d.service_ports(svc);
    let mut sorted = ports.clone();
    sorted.sort_by_key(|p| p.published);
    assert_eq!(
        sorted,
        vec![
            Publish::ingress(DNS, Proto::Udp),
            Publish::ingress(WEB, Proto::Tcp),
            Publish::host(HOSTPORT, Proto::Tcp),
        ]
    );
    assert_eq!(d.service_labels(svc)["ixt.test"], "fixture");

    let client = d.client("c");
    // No IPVS here: without the stand-ins the mesh port is not served.
    assert_ne!(
        client.http(d.at(WEB)),
        Reach::Served(docker::reply_of(svc, d.hostname()))
    );
    let t = Instant::now();
    let task_addr = d.install_service_standins(svc);
    timing("mesh stand-ins", t);
    assert_eq!(task_addr, d.task_ingress_addr(svc));
    let sbox = d.wait_sbox();
    assert_ne!(sbox.ingress, task_addr);
    check_served(&d, &client, svc);
    // Idempotent.
    d.install_service_standins(svc);
    check_served(&d, &client, svc);

    // Updates: a port added (tasks replaced), labels.
    let t = Instant::now();
    let new_tasks = d.publish_add(svc, Publish::ingress(ADDED, Proto::Tcp));
    timing("service update (publish-add) until the new task runs", t);
    assert_ne!(
        new_tasks[0].id, tasks[0].id,
        "a port change replaces the task"
    );
    assert!(
        d.service_ports(svc)
            .contains(&Publish::ingress(ADDED, Proto::Tcp))
    );
    d.install_service_standins(svc);
    served(
        &d,
        "added port",
        client.http(d.at(ADDED)),
        &docker::reply_of(svc, d.hostname()),
    );
    check_served(&d, &client, svc);
    d.publish_rm(svc, Publish::ingress(ADDED, Proto::Tcp));
    let mut now = d.service_ports(svc);
    now.sort_by_key(|p| p.published);
    assert_eq!(now, sorted, "exactly the added port is gone");
    d.install_service_standins(svc);
    check_served(&d, &client, svc);
    d.label_add(svc, "ixt.extra", "yes");
    assert_eq!(d.service_labels(svc)["ixt.extra"], "yes");
    d.label_rm(svc, "ixt.test");
    assert!(d.service_labels(svc).get("ixt.test").is_none());

    // A graceful restart: same node, same swarm, a new ingress_sbox.
    mark_sbox(&d);
    assert!(sbox_marked(&d));
    let t = Instant::now();
    d.restart();
    timing("daemon stop + start", t);
    assert_eq!(d.swarm_state(), "active");
    assert_eq!(d.node_id(), node);
    let t = Instant::now();
    d.wait_sbox();
    d.wait_running(svc);
    timing("after restart: sbox up and the task Running again", t);
    assert!(!sbox_marked(&d), "a new ingress_sbox namespace");
    d.install_service_standins(svc);
    check_served(&d, &client, svc);

    // A crash (SIGKILL) and a start.
    mark_sbox(&d);
    d.kill();
    assert!(!d.is_running());
    let t = Instant::now();
    d.start_again();
    assert_eq!(d.swarm_state(), "active");
    d.wait_sbox();
    d.wait_running(svc);
    timing("after SIGKILL: start until the task is Running", t);
    assert!(
        !sbox_marked(&d),
        "a new ingress_sbox namespace after a crash"
    );
    d.install_service_standins(svc);
    check_served(&d, &client, svc);

    let t = Instant::now();
    d.rm_service(svc);
    timing("service rm", t);
    d.swarm_leave();
    assert_eq!(d.swarm_state(), "inactive");

    let t = Instant::now();
    drop(client);
    drop(d);
    timing("teardown of one daemon, its lan and client", t);
    footprint.assert_gone();
}

#[test]
fn manager_and_worker() {
    let t0 = Instant::now();
    let cluster = Cluster::start("k");
    timing("cluster from nothing (2 daemons, images, init, join)", t0);
    let footprint = cluster.footprint();
    let (m, w) = (&cluster.manager, &cluster.worker);

    let ls = m.docker(["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]);
    let mut lines: Vec<&str> = ls.lines().collect();
    lines.sort();
    let mut expected = vec![
        format!("{} Ready", m.hostname()),
        format!("{} Ready", w.hostname()),
    ];
    expected.sort();
    assert_eq!(lines, expected, "node ls on the manager");
    assert_ne!(m.node_id(), w.node_id());
    assert_ne!(m.sbox_netns(), w.sbox_netns());

    // A global service: one task per node, the image loaded on both.
    let spec = ServiceSpec::new("g")
        .global()
        .publish(Publish::ingress(WEB, Proto::Tcp));
    let t = Instant::now();
    let tasks = m.create_service_running(&spec);
    timing("global service Running on both nodes", t);
    assert_eq!(tasks.len(), 2);
    assert_eq!(w.local_containers(&spec.name).len(), 1);

    // The worker's view of the ingress network lists the service.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let net = w.api("/networks/ingress?verbose=true");
        if let Some(s) = net["Services"].get(&spec.name) {
            let ports = s["Ports"].to_string();
            assert!(ports.contains(&format!("Publish: {WEB}")), "{net:#}");
            break;
        }
        assert!(Instant::now() < deadline, "worker's ingress view: {net:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The worker is no manager.
    let (status, body) = w.api_raw("GET", "/services", "");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not a swarm manager"), "{body}");

    // The manager's plain-TCP API from the worker's namespace.
    let api = m.tcp_api().expect("manager has a TCP API");
    assert_eq!(
        docker::http_get_path(&w.netns_path(), api, "/_ping", traffic::PATIENCE),
        Reach::Served("OK".into())
    );

    // The worker serves its own task through its own sbox (a worker cannot
    // read /services: the port is given).
    let task = w.task_ingress_addr(&spec.name);
    docker::install_mesh_standins(w, WEB, Proto::Tcp, task, 80);
    let client = cluster.lan.client("c");
    assert_eq!(
        client.http(w.at(WEB)),
        Reach::Served(docker::reply_of(&spec.name, w.hostname()))
    );
    drop(client);

    let t = Instant::now();
    drop(cluster);
    timing("cluster teardown", t);
    footprint.assert_gone();
}

#[test]
fn teardown_after_a_panic_leaves_nothing() {
    let seen: Mutex<Footprint> = Mutex::new(Footprint::default());
    let result = std::panic::catch_unwind(|| {
        let d = Dockerd::start("p");
        *seen.lock().unwrap() = d.footprint().merge(d.lan().footprint());
        d.swarm_init();
        assert!(d.sbox_netns().exists());
        panic!("deliberate panic with a swarm node up");
    });
    assert!(result.is_err());
    let footprint = seen.into_inner().unwrap();
    assert!(!footprint.dirs.is_empty());
    footprint.assert_gone();
}
