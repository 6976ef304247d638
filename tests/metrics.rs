//! Prometheus metrics against a real Prometheus server: the agent runs with
//! `--metrics-addr` in a private dockerd's namespace (a one-node swarm),
//! Debian's `prometheus` scrapes it there every second, and PromQL answers
//! what `stats --json` says. `promtool check metrics` finds nothing in the
//! endpoint's or the one-shot `metrics` command's output, and every query of
//! deploy/grafana-dashboard.json names metrics the agent exports and is
//! accepted by Prometheus.

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::BTreeSet,
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use ingress_xdp::spec::Protocol::Tcp;
use support::{
    TestPins,
    agent::{AgentProc, docker_blocks, wait_rules},
    docker::{Dockerd, Proto, Publish, ServiceSpec, http_get_path},
    prometheus::Prometheus,
    traffic::{PATIENCE, Reach},
};

const BLOCKED: u16 = 8701;
const AUDITED: u16 = 8702;
const METRICS: &str = "127.0.0.1:9464";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana-dashboard.json"
);

fn cli(pins: &TestPins, args: &str) -> String {
    support::sh(&format!(
        "{} --pin-dir {} {args}",
        support::bin(),
        pins.dir().display()
    ))
}

/// `promtool check metrics` on `text`: its complaints, empty when clean.
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus; cargo xtask test does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said
    } else {
        format!("exit {}: {said}", out.status)
    }
}

/// Metric names a PromQL expression uses (ours only).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ingress_xdp_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.insert(name);
    }
    out
}

#[test]
fn prometheus_scrapes_what_stats_shows() {
    let d = Dockerd::start("me");
    d.swarm_init();
    d.load_test_image();
    let pins = TestPins::new("me");
    cli(&pins, &format!("block {AUDITED} --audit"));
    let agent = AgentProc::start(&d, &pins.pins, &["--metrics-addr", METRICS, "--no-feed"]);
    agent.wait_log("metrics: http://", Duration::from_secs(20));
    // The first sync is done before the service exists, so that its
    // creation reaches the map through an event.
    agent.wait_log("reading services and node labels", Duration::from_secs(20));
    let target: SocketAddr = METRICS.parse().unwrap();
    let prom = Prometheus::start(&d.netns_path(), 19090, &[target]);

    // A service created while the agent runs: an event, then the map.
    let blocked = ServiceSpec::new("mb")
        .publish(Publish::ingress(BLOCKED, Proto::Tcp))
        .label("ingress-xdp.block", "true");
    d.create_service(&blocked);
    wait_rules(
        &pins.pins,
        &agent,
        Duration::from_secs(20),
        docker_blocks(&[(Tcp, BLOCKED)]),
    );
    let client = d.client("mc");
    for _ in 0..3 {
        assert_eq!(client.http(d.at(BLOCKED)), Reach::Silent);
    }
    let _ = client.http(d.at(AUDITED));

    let stats: serde_json::Value =
        serde_json::from_str(&cli(&pins, "stats --json")).expect("stats --json");
    let rule = |port: u16| {
        stats["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["low"] == port)
            .unwrap_or_else(|| panic!("no rule {port} in {stats}"))["packets"]
            .as_u64()
            .unwrap()
    };
    let (dropped, audited) = (rule(BLOCKED), rule(AUDITED));
    assert!(dropped >= 3, "SYNs dropped: {stats}");
    let point_drops: u64 = stats["attach_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["counters"]["dropped"].as_u64().unwrap())
        .sum();

    let q_dropped = format!(
        r#"ingress_xdp_rule_packets_total{{protocol="tcp",port="{BLOCKED}",mode="block",origin="agent"}}"#
    );
    let q_audited = format!(
        r#"ingress_xdp_rule_packets_total{{port="{AUDITED}",mode="audit",origin="manual"}}"#
    );
    let q_points = "sum(ingress_xdp_attach_dropped_packets_total)";
    // A scrape between the probes has the drops but not yet the audit.
    prom.wait_for(
        "PromQL to return the counts stats shows",
        Duration::from_secs(20),
        || {
            let got = (
                prom.value(&q_dropped),
                prom.value(&q_audited),
                prom.value(q_points),
            );
            (got == (
                Some(dropped as f64),
                Some(audited as f64),
                Some(point_drops as f64),
            ))
                .then_some(())
        },
    );
    eprintln!("REPORT metrics: PromQL {dropped} dropped packets on {BLOCKED}/tcp, as stats --json");

    // The scrape itself: healthy, no error.
    let targets = prom.api("/api/v1/targets");
    let active = &targets["data"]["activeTargets"];
    assert_eq!(active.as_array().map(Vec::len), Some(1), "{targets}");
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(active[0]["lastError"], "", "{targets}");

    // The agent's own series.
    assert_eq!(prom.value("ingress_xdp_docker_up"), Some(1.0));
    assert_eq!(
        prom.value(r#"ingress_xdp_source_mode{mode="manager"}"#),
        Some(1.0)
    );
    assert!(prom.value("ingress_xdp_syncs_total").unwrap_or(0.0) >= 1.0);
    assert!(
        prom.value("ingress_xdp_event_to_map_seconds_count")
            .unwrap_or(0.0)
            >= 1.0,
        "the service's creation timed: {}",
        agent.log()
    );
    let build = prom.query("ingress_xdp_build_info");
    assert_eq!(
        build[0]["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{build:?}"
    );
    assert_eq!(
        prom.value(r#"ingress_xdp_map_entries{map="attach_points"}"#),
        Some(2.0)
    );

    // promtool on the endpoint and on the one-shot command.
    let scraped = match http_get_path(&d.netns_path(), target, "/metrics", PATIENCE) {
        Reach::Served(body) => body,
        other => panic!("GET /metrics: {other:?}"),
    };
    assert_eq!(promtool(&scraped), "", "promtool on the endpoint");
    let once = cli(&pins, "metrics");
    assert_eq!(promtool(&once), "", "promtool on `ingress-xdp metrics`");
    assert!(once.contains(&q_dropped), "{once}");
    let file = support::pki::TempDir::new("mf");
    let prom_file = file.path.join("ingress-xdp.prom");
    cli(&pins, &format!("metrics --output {}", prom_file.display()));
    assert!(
        std::fs::read_to_string(&prom_file)
            .unwrap()
            .contains("ingress_xdp_rule_packets_total")
    );

    // The dashboard: every query names exported metrics and is valid PromQL.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} names no metric of ours");
            for name in names {
                assert!(
                    scraped.contains(&format!("\n{name}"))
                        || scraped.contains(&format!("\n{name}{{")),
                    "{expr}: {name} is not exported:\n{scraped}"
                );
            }
            let concrete = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            prom.query(&concrete);
            queries += 1;
        }
    }
    eprintln!("REPORT metrics: {queries} dashboard queries checked");
}
