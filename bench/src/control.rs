//! Part 3: the control plane against a real dockerd (a private one, in a
//! namespace of its own, from tests/support/docker.rs).
//!
//! - Latency: with `ingress-xdp run --default deny` running (the real
//!   binary, as an operator runs it), the time from `docker service
//!   create/update/rm` returning to the port being in (or out of) the rule
//!   map, polled every millisecond.
//! - Full sync: one pass of the agent's sync (list services, evaluate the
//!   policy, apply the difference) with N services, in-process with the
//!   library's `Agent`: first against an empty table (N blocks), then again
//!   with nothing to change. And the agent's cold start: from spawning
//!   `ingress-xdp run` to all N ports in the map (attach included).
//!
//! Services have 0 replicas: the agent reads the service spec and its
//! allocated ports, never the tasks, and 200 running tasks would only load
//! the 2 CPUs.

use std::{
    process::Output,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ingress_xdp::{
    agent::{Agent, AgentConfig},
    attach::{Hook, XdpModeChoice},
    policy::{NodeDefault, PolicySettings},
    rules::RuleTable,
    spec::Protocol,
};

use crate::support::{
    TestPins,
    agent::AgentProc,
    docker::{Dockerd, IMAGE},
};

/// How long a change may take before the trial counts as failed.
const TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(1);
const LATENCY_PORTS: u16 = 20000;
const SYNC_PORTS: u16 = 30000;

#[derive(Clone, Copy, Debug)]
pub struct ControlSettings {
    /// Trials of each change (create, update, remove).
    pub latency_trials: usize,
    /// Services of the full-sync measurement.
    pub services: usize,
    pub sync_trials: usize,
    pub cold_start_trials: usize,
}

#[derive(Clone, Debug, Default)]
pub struct ControlResults {
    /// ms from the command returning to the map matching, per trial.
    pub create_ms: Vec<f64>,
    pub update_ms: Vec<f64>,
    pub remove_ms: Vec<f64>,
    /// ms the commands themselves took (for context).
    pub command_ms: Vec<f64>,
    pub services: usize,
    /// One in-process sync against an empty table (all ports to block).
    pub first_sync_ms: Vec<f64>,
    /// One in-process sync with nothing to change.
    pub resync_ms: Vec<f64>,
    /// Spawning `ingress-xdp run` to all ports in the map.
    pub cold_start_ms: Vec<f64>,
    pub docker_version: String,
}

pub fn measure(settings: ControlSettings) -> Result<ControlResults> {
    let bin = std::path::Path::new(crate::support::bin());
    if !bin.is_file() {
        bail!(
            "the agent binary {} is missing: build it with `cargo build --release -p ingress-xdp` \
             (cargo xtask bench does)",
            bin.display()
        );
    }
    let d = Dockerd::start("b");
    d.swarm_init();
    d.load_test_image();
    let mut results = ControlResults {
        services: settings.services,
        docker_version: d
            .api("/version")
            .get("Version")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string(),
        ..Default::default()
    };
    {
        let pins = TestPins::new("ba");
        let agent = AgentProc::start(&d, &pins.pins, &["--default", "deny"]);
        latencies(&d, &pins, settings, &mut results)
            .with_context(|| format!("agent log (end):\n{}", tail(&agent.log(), 20)))?;
    }
    create_services(&d, settings.services)?;
    full_syncs(&d, settings, &mut results)?;
    cold_starts(&d, settings, &mut results)?;
    Ok(results)
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn docker(d: &Dockerd, args: &[&str]) -> Result<()> {
    let out: Output = d.docker_out(args);
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn blocked(table: &RuleTable, port: u16) -> Result<bool> {
    Ok(table.get(Protocol::Tcp, port)?.is_some())
}

/// Runs `change`, polling the rule map from before it starts until `done`;
/// returns (time from `change` returning to `done`, time `change` took).
/// A map that matched before the command returned counts as 0.
fn time_change(
    table: &RuleTable,
    change: impl FnOnce() -> Result<()>,
    done: impl Fn(&RuleTable) -> Result<bool> + Sync,
) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    let stop = AtomicBool::new(false);
    let (seen, returned) = std::thread::scope(|s| {
        let watcher = s.spawn(|| -> Result<Option<Instant>> {
            while start.elapsed() < TIMEOUT && !stop.load(Ordering::Relaxed) {
                if done(table)? {
                    return Ok(Some(Instant::now()));
                }
                std::thread::sleep(POLL);
            }
            Ok(None)
        });
        let changed = change();
        let returned = Instant::now();
        if changed.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let seen = watcher
            .join()
            .unwrap_or_else(|_| bail!("the map watcher panicked"));
        changed.map(|()| (seen, returned))
    })?;
    let seen = seen?.with_context(|| format!("the rule map did not follow within {TIMEOUT:?}"))?;
    Ok((seen.saturating_duration_since(returned), returned - start))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latencies(
    d: &Dockerd,
    pins: &TestPins,
    settings: ControlSettings,
    results: &mut ControlResults,
) -> Result<()> {
    let table = RuleTable::open(&pins.pins).context("opening the agent's rule table")?;
    // Warm-up, untimed: the agent is up and follows events.
    let warm = LATENCY_PORTS - 1;
    create(d, "ixtb-warm", warm)?;
    time_change(&table, || Ok(()), |t| blocked(t, warm))
        .context("waiting for the agent to block its first port")?;
    for i in 0..settings.latency_trials {
        crate::interrupt::check()?;
        let name = format!("ixtb-lat{i}");
        let created = LATENCY_PORTS + 2 * i as u16;
        let added = created + 1;
        let (c, cmd) = time_change(
            &table,
            || create(d, &name, created),
            |t| blocked(t, created),
        )
        .with_context(|| format!("create trial {i}"))?;
        let publish = format!("published={added},target=80");
        let (u, cmd_u) = time_change(
            &table,
            || {
                docker(
                    d,
                    &[
                        "service",
                        "update",
                        "--detach",
                        "--publish-add",
                        &publish,
                        &name,
                    ],
                )
            },
            |t| blocked(t, added),
        )
        .with_context(|| format!("update trial {i}"))?;
        let (r, cmd_r) = time_change(
            &table,
            || docker(d, &["service", "rm", &name]),
            |t| Ok(!blocked(t, created)? && !blocked(t, added)?),
        )
        .with_context(|| format!("remove trial {i}"))?;
        results.create_ms.push(ms(c));
        results.update_ms.push(ms(u));
        results.remove_ms.push(ms(r));
        results.command_ms.extend([ms(cmd), ms(cmd_u), ms(cmd_r)]);
    }
    Ok(())
}

/// `docker service create --replicas 0` publishing `port` (tcp, mesh).
fn create(d: &Dockerd, name: &str, port: u16) -> Result<()> {
    let publish = format!("published={port},target=80");
    docker(
        d,
        &[
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--replicas",
            "0",
            "--name",
            name,
            "--publish",
            &publish,
            IMAGE,
        ],
    )
}

/// `n` services through the Engine API (the CLI would take ~0.1 s each).
fn create_services(d: &Dockerd, n: usize) -> Result<()> {
    for i in 0..n {
        crate::interrupt::check()?;
        let spec = serde_json::json!({
            "Name": format!("ixtb-sync{i}"),
            "TaskTemplate": { "ContainerSpec": { "Image": IMAGE } },
            "Mode": { "Replicated": { "Replicas": 0 } },
            "EndpointSpec": { "Ports": [{
                "Protocol": "tcp",
                "TargetPort": 80,
                "PublishedPort": SYNC_PORTS + i as u16,
                "PublishMode": "ingress",
            }]},
        });
        let (status, body) = d.api_raw("POST", "/services/create", &spec.to_string());
        if !(200..300).contains(&status) {
            bail!("creating service {i} of {n}: HTTP {status}: {body}");
        }
    }
    Ok(())
}

fn all_sync_ports_blocked(table: &RuleTable, n: usize) -> Result<bool> {
    for i in 0..n {
        if !blocked(table, SYNC_PORTS + i as u16)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn full_syncs(d: &Dockerd, settings: ControlSettings, results: &mut ControlResults) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    for _ in 0..settings.sync_trials {
        crate::interrupt::check()?;
        let pins = TestPins::new("bs");
        let mut agent = Agent::new(AgentConfig {
            pins: pins.pins.clone(),
            ifaces: Vec::new(),
            sbox_netns: None,
            sbox_iface: None,
            hook: Hook::Xdp,
            xdp_mode: XdpModeChoice::Auto,
            policy: PolicySettings {
                default: NodeDefault::Deny,
                allow_services: Vec::new(),
                block_services: Vec::new(),
            },
            local_docker: d.host(),
            manager: None,
            resync: Duration::from_secs(30),
            // The bench measures one manager; the policy feed has its own test.
            feed: None,
            run_dir: None,
            metrics: None,
        });
        let t = Instant::now();
        runtime
            .block_on(agent.sync())
            .context("the agent's first sync")?;
        results.first_sync_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        runtime
            .block_on(agent.sync())
            .context("the agent's resync")?;
        results.resync_ms.push(ms(t.elapsed()));
        let table = RuleTable::open(&pins.pins)?;
        if !all_sync_ports_blocked(&table, settings.services)? {
            bail!(
                "after a full sync, not all {} ports are blocked",
                settings.services
            );
        }
    }
    Ok(())
}

fn cold_starts(d: &Dockerd, settings: ControlSettings, results: &mut ControlResults) -> Result<()> {
    for _ in 0..settings.cold_start_trials {
        crate::interrupt::check()?;
        let pins = TestPins::new("bk");
        let table = RuleTable::open(&pins.pins)?;
        let start = Instant::now();
        let agent = AgentProc::start(d, &pins.pins, &["--default", "deny"]);
        while !all_sync_ports_blocked(&table, settings.services)? {
            if start.elapsed() > TIMEOUT {
                bail!(
                    "the agent did not block all {} ports within {TIMEOUT:?}; agent log (end):\n{}",
                    settings.services,
                    tail(&agent.log(), 20)
                );
            }
            std::thread::sleep(POLL);
        }
        results.cold_start_ms.push(ms(start.elapsed()));
    }
    Ok(())
}
