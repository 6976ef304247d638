//! Command-line interface: argument definitions (clap derive) and the
//! commands, each a thin layer over the library.

use std::{collections::BTreeSet, io::Write, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::{
    agent::{Agent, AgentConfig, FeedSettings},
    attach::{self, AttachPoint, Hook, PointCounters, Presence, Registry, Target, XdpModeChoice},
    cidr::Cidr,
    config::FileConfig,
    docker::{DEFAULT_DOCKER_DATA_ROOT, DEFAULT_LOCAL_DOCKER},
    feed,
    pins::{self, DEFAULT_PIN_DIR, Pins},
    policy::{NamePattern, NodeDefault, PolicySettings},
    rules::{Mode, RuleRange, RuleSpec, RuleTable},
    spec::PortSpec,
    sys, upgrade,
};

/// Drop Docker Swarm routing-mesh traffic to chosen published ports on this
/// node, in XDP (or TC) before netfilter DNAT and IPVS.
///
/// `attach` loads the programs onto the host NIC and the veth inside Docker's
/// ingress_sbox namespace; `block`/`unblock` change the pinned port map live.
/// Everything is pinned in bpffs, so drops stay after this command exits;
/// only `detach` stops them.
#[derive(Parser, Debug)]
#[command(name = "ingress-xdp", version, about, long_about)]
pub struct Cli {
    /// bpffs directory holding the pinned maps and links.
    #[arg(long, global = true, env = "INGRESS_XDP_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the filter to the host NIC(s) and to ingress_sbox (idempotent).
    ///
    /// Attaching a point that this build already attached changes nothing;
    /// the rules in the pinned map apply at once. A point that an older
    /// build attached gets this build's program swapped into its link in
    /// place (never a moment without a program), and an older state layout
    /// is migrated first, every rule, allowlist and owner carried over.
    /// Examples:
    ///   ingress-xdp attach                       # default-route NIC + ingress_sbox/eth1
    ///   ingress-xdp attach --iface eth0 --iface eth1 --hook tc
    ///   ingress-xdp attach --iface ens3 --no-sbox --xdp-mode generic
    #[command(verbatim_doc_comment)]
    Attach(AttachArgs),
    /// Detach every attach point. Rules are kept unless --purge.
    Detach {
        /// Also remove the rule map, counters and the pin directory.
        #[arg(long)]
        purge: bool,
    },
    /// Block ports (or audit them with --audit).
    ///
    /// SPEC is PORT[/tcp|udp|sctp] or LOW-HIGH[/proto]; tcp when omitted, as
    /// in Docker's --publish. Blocking a port again replaces its rule.
    ///
    /// Examples:
    ///   ingress-xdp block 8080 53/udp 30000-32767/tcp
    ///   ingress-xdp block 443 --allow-from 203.0.113.0/24 --allow-from 2001:db8::/32
    ///   ingress-xdp block 9000 --audit       # count would-be drops, drop nothing
    #[command(verbatim_doc_comment)]
    Block(BlockArgs),
    /// Remove the rules for ports (the traffic flows again).
    Unblock {
        /// PORT[/proto] or LOW-HIGH[/proto].
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<PortSpec>,
    },
    /// List rules: port, protocol, mode, allowlist, packets and bytes matched.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Counters per attach point (seen, dropped, passed, not parsed) and per rule.
    Stats {
        /// Machine-readable output (one JSON document per line with --watch).
        #[arg(long)]
        json: bool,
        /// Print again every SECONDS (default 1) with per-second rates, until interrupted.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<u64>,
    },
    /// Where the filter is attached: namespace, interface, hook, mode, program id.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the agent: attach, then keep the rules equal to this node's policy,
    /// computed from Docker Swarm services, until stopped.
    ///
    /// Policy, per published port of each service (first that applies):
    ///   1. label ingress-xdp.block=true|false on the service;
    ///   2. --block-service / --allow-service patterns on this node;
    ///   3. label ingress-xdp.nodes=CONSTRAINTS (Swarm placement syntax, e.g.
    ///      node.labels.edge==true,node.role!=manager): matching nodes accept
    ///      the service's ports, the others block them;
    ///   4. --default allow|deny.
    ///
    /// Host-mode ports are blocked only by 1 and 2. Manual rules (`block`) are
    /// never touched. Stopping or killing the agent keeps every drop in place.
    ///
    /// Examples:
    ///   ingress-xdp run --default deny --allow-service 'public-*'
    ///   ingress-xdp run --docker-host tcp://manager:2376    # on a worker
    ///   ingress-xdp run --config /etc/ingress-xdp.toml
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Policy file (TOML) holding any of the settings below; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What this node does with a published port no rule decides: allow
    /// (Docker's behaviour) or deny. [default: allow]
    #[arg(long, value_enum)]
    pub default: Option<NodeDefault>,
    /// Accept the ports of services whose name matches (glob: * and ?; repeatable).
    #[arg(long = "allow-service", value_name = "PATTERN")]
    pub allow_services: Vec<NamePattern>,
    /// Block the ports of services whose name matches (repeatable; wins over --allow-service).
    #[arg(long = "block-service", value_name = "PATTERN")]
    pub block_services: Vec<NamePattern>,
    /// A manager's Docker API, to read services and node labels from on a
    /// worker (tcp://HOST:PORT; TLS from DOCKER_CERT_PATH when
    /// DOCKER_TLS_VERIFY is set). Without it a worker follows its own
    /// ingress network (names and ports only).
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
    /// This node's Docker engine. [default: unix:///var/run/docker.sock]
    #[arg(long, env = "INGRESS_XDP_LOCAL_DOCKER", value_name = "URL")]
    pub local_docker: Option<String>,
    /// Seconds between full resyncs (events trigger them too). [default: 30]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_interval: Option<u64>,
    /// Port of the policy feed. Agents on managers serve each node its own
    /// rule set there (computed with that node's labels, role and hostname);
    /// agents on workers follow it, so the label policy works on workers
    /// without any Docker API leaving a manager. Both ends authenticate with
    /// the certificates Swarm gave the node (mutual TLS). [default: 7949]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub feed_port: Option<u16>,
    /// Neither serve nor follow the policy feed: a worker then follows its
    /// ingress network's view only (or --docker-host).
    #[arg(long)]
    pub no_feed: bool,
    /// Docker's data root, which holds this node's Swarm certificates
    /// (swarm/certificates) for the policy feed. [default: /var/lib/docker]
    #[arg(long, env = "INGRESS_XDP_DOCKER_DATA_ROOT", value_name = "DIR")]
    pub docker_data_root: Option<PathBuf>,
    #[command(flatten)]
    pub target: AttachArgs,
}

/// Flags over the policy file over the defaults (pure).
pub fn agent_settings(args: &RunArgs, file: &FileConfig, pins: Pins) -> AgentSettings {
    let ifaces = if args.target.ifaces.is_empty() {
        file.ifaces.clone().unwrap_or_default()
    } else {
        args.target.ifaces.clone()
    };
    let no_sbox = args.target.no_sbox || file.no_sbox.unwrap_or(false);
    let sbox_netns = (!no_sbox).then(|| {
        args.target
            .sbox_netns
            .clone()
            .or_else(|| file.sbox_netns.clone())
            .unwrap_or_else(sys::default_sbox_netns)
    });
    let pick = |flag: &Vec<NamePattern>, file: &Option<Vec<String>>| {
        if flag.is_empty() {
            FileConfig::patterns(file)
        } else {
            flag.clone()
        }
    };
    AgentSettings {
        ifaces,
        config: AgentConfig {
            pins,
            ifaces: Vec::new(),
            sbox_netns,
            sbox_iface: args
                .target
                .sbox_iface
                .clone()
                .or_else(|| file.sbox_iface.clone()),
            hook: args.target.hook.or(file.hook).unwrap_or(Hook::Xdp),
            xdp_mode: args.target.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            policy: PolicySettings {
                default: args.default.or(file.default).unwrap_or(NodeDefault::Allow),
                allow_services: pick(&args.allow_services, &file.allow_services),
                block_services: pick(&args.block_services, &file.block_services),
            },
            local_docker: args
                .local_docker
                .clone()
                .or_else(|| file.local_docker.clone())
                .unwrap_or_else(|| DEFAULT_LOCAL_DOCKER.to_string()),
            manager: args
                .docker_host
                .clone()
                .or_else(|| file.docker_host.clone()),
            resync: Duration::from_secs(
                args.resync_interval.or(file.resync_interval).unwrap_or(30),
            ),
            feed: (!(args.no_feed || file.no_feed.unwrap_or(false))).then(|| FeedSettings {
                port: args
                    .feed_port
                    .or(file.feed_port)
                    .unwrap_or(feed::DEFAULT_PORT),
                certs_dir: args
                    .docker_data_root
                    .clone()
                    .or_else(|| file.docker_data_root.clone())
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_DATA_ROOT))
                    .join("swarm/certificates"),
            }),
        },
    }
}

/// The merged settings; `ifaces` empty means "the default-route interface",
/// resolved at start.
#[derive(Debug)]
pub struct AgentSettings {
    pub ifaces: Vec<String>,
    pub config: AgentConfig,
}

/// Where to attach: shared by `attach` and `run`.
#[derive(Args, Debug, Default)]
pub struct AttachArgs {
    /// Host interface to attach to (repeatable). [default: the interface that
    /// holds the default route]
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Network namespace file of Docker's ingress sandbox; `run` follows it
    /// as Docker recreates it. [default: /var/run/docker/netns/ingress_sbox]
    #[arg(long, value_name = "PATH", conflicts_with = "no_sbox")]
    pub sbox_netns: Option<PathBuf>,
    /// Interface inside the sandbox. [default: the one holding its default
    /// route (eth1, on docker_gwbridge)]
    #[arg(long, value_name = "NAME", conflicts_with = "no_sbox")]
    pub sbox_iface: Option<String>,
    /// Do not attach inside ingress_sbox.
    #[arg(long)]
    pub no_sbox: bool,
    /// Hook to use. [default: xdp]
    #[arg(long, value_enum)]
    pub hook: Option<Hook>,
    /// XDP attach mode (ignored with --hook tc). [default: auto]
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeChoice>,
}

#[derive(Args, Debug)]
pub struct BlockArgs {
    /// PORT[/proto] or LOW-HIGH[/proto].
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PortSpec>,
    /// Source prefix that may still reach the port (repeatable; IPv4 or IPv6),
    /// e.g. an external load balancer.
    #[arg(long = "allow-from", value_name = "CIDR")]
    pub allow_from: Vec<Cidr>,
    /// Count matching packets as would-drop but let them through.
    #[arg(long)]
    pub audit: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    let pins = Pins::new(&cli.pin_dir);
    match cli.command {
        Command::Attach(args) => cmd_attach(&pins, args),
        Command::Detach { purge } => cmd_detach(&pins, purge),
        Command::Block(args) => cmd_block(&pins, args),
        Command::Unblock { specs } => cmd_unblock(&pins, &specs),
        Command::List { json } => cmd_list(&pins, json),
        Command::Stats { json, watch } => cmd_stats(&pins, json, watch),
        Command::Status { json } => cmd_status(&pins, json),
        Command::Run(args) => cmd_run(pins, &args),
    }
}

fn cmd_run(pins: Pins, args: &RunArgs) -> Result<()> {
    sys::require_root()?;
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut settings = agent_settings(args, &file, pins);
    let ifaces = host_ifaces(&settings.ifaces)?;
    settings.config.ifaces = ifaces;
    let cfg = settings.config;
    tracing::info!(
        "agent starting: NICs {:?}, sandbox {}, hook {}, default {:?}, resync every {}s",
        cfg.ifaces,
        cfg.sbox_netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".into()),
        cfg.hook,
        cfg.policy.default,
        cfg.resync.as_secs()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(Agent::new(cfg).run(shutdown_signal()))
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The host NICs named with --iface (checked to exist), or the one holding
/// the default route.
fn host_ifaces(requested: &[String]) -> Result<Vec<String>> {
    if requested.is_empty() {
        return Ok(vec![
            sys::default_route_iface().context("picking the host NIC")?,
        ]);
    }
    for iface in requested {
        sys::ifindex(iface).with_context(|| {
            format!(
                "--iface {iface}: interface not found (have: {})",
                sys::interfaces().join(", ")
            )
        })?;
    }
    Ok(requested.to_vec())
}

/// Resolves the attach targets and checks that each exists, before anything
/// is changed.
fn resolve_targets(args: &AttachArgs) -> Result<Vec<Target>> {
    let mut targets: Vec<Target> = host_ifaces(&args.ifaces)?
        .into_iter()
        .map(|iface| Target { netns: None, iface })
        .collect();
    if args.no_sbox {
        return Ok(targets);
    }
    let netns = match &args.sbox_netns {
        Some(path) => {
            if !path.exists() {
                bail!("--sbox-netns {}: no such file", path.display());
            }
            path.clone()
        }
        None => {
            let default = sys::default_sbox_netns();
            if !default.exists() {
                if args.sbox_iface.is_some() {
                    bail!(
                        "--sbox-iface given but {} does not exist (is this node in a swarm?); pass --sbox-netns",
                        default.display()
                    );
                }
                eprintln!(
                    "note: {} does not exist (no swarm ingress on this node yet); attaching to the host NIC only",
                    default.display()
                );
                return Ok(targets);
            }
            default
        }
    };
    let iface = sys::in_netns(Some(&netns), || match &args.sbox_iface {
        Some(name) => {
            sys::ifindex(name).with_context(|| {
                format!(
                    "--sbox-iface {name}: interface not found in {} (have: {})",
                    netns.display(),
                    sys::interfaces().join(", ")
                )
            })?;
            Ok(name.clone())
        }
        None => sys::default_route_iface()
            .with_context(|| format!("picking the sandbox interface in {}", netns.display())),
    })?;
    targets.push(Target {
        netns: Some(netns),
        iface,
    });
    Ok(targets)
}

fn cmd_attach(pins: &Pins, args: AttachArgs) -> Result<()> {
    sys::require_root()?;
    let targets = resolve_targets(&args)?;
    let prepared = upgrade::prepare(pins)?;
    for line in prepared.describe(pins) {
        println!("{line}");
    }
    let _lock = pins.lock()?;
    for target in &targets {
        let report = attach::attach(
            pins,
            target,
            args.hook.unwrap_or(Hook::Xdp),
            args.xdp_mode.unwrap_or_default(),
        )
        .with_context(|| format!("attaching to {target}"))?;
        let p = &report.point;
        let mode = p.mode.map(|m| format!(" ({m})")).unwrap_or_default();
        let just_upgraded = prepared.upgraded.iter().any(|u| u.point.id == p.id);
        if let Some(from) = &report.upgraded_from {
            println!(
                "upgraded {target}: {}{mode}, program {} (build {from} -> {}), in place",
                p.hook, p.program_id, p.build
            );
        } else if just_upgraded {
            // Said above, with the migration.
        } else if report.already {
            println!(
                "already attached: {target}: {}{mode}, program {}",
                p.hook, p.program_id
            );
        } else {
            println!(
                "attached {target}: {}{mode}, program {}",
                p.hook, p.program_id
            );
        }
    }
    let rules = RuleTable::open(pins)?.ranges()?;
    println!(
        "{} rule(s) active; pinned in {}",
        rules.len(),
        pins.dir().display()
    );
    Ok(())
}

fn cmd_detach(pins: &Pins, purge: bool) -> Result<()> {
    sys::require_root()?;
    if let pins::Found::Newer(v) = pins.found() {
        return Err(pins::newer_layout(pins.dir(), v));
    }
    pins.require()?;
    let lock = pins.lock()?;
    let points = attach::detach_all(pins)?;
    for p in &points {
        println!("detached {}", p.target());
    }
    if points.is_empty() {
        println!("nothing was attached");
    }
    if purge {
        drop(lock);
        attach::purge(pins)?;
        println!("removed rules and {}", pins.dir().display());
    } else {
        let n = RuleTable::open(pins)?.ranges()?.len();
        println!("{n} rule(s) kept (they apply again on attach; `detach --purge` removes them)");
    }
    Ok(())
}

fn warn_ephemeral_overlap(specs: &[PortSpec]) {
    let Some((low, high)) = sys::ephemeral_port_range() else {
        return;
    };
    for spec in specs.iter().filter(|s| s.overlaps(low, high)) {
        eprintln!(
            "warning: {spec} overlaps net.ipv4.ip_local_port_range {low}-{high}: replies to this node's own outgoing connections from those ports would be dropped"
        );
    }
}

fn cmd_block(pins: &Pins, args: BlockArgs) -> Result<()> {
    sys::require_root()?;
    let spec = RuleSpec {
        mode: if args.audit { Mode::Audit } else { Mode::Block },
        allow_from: args.allow_from.iter().copied().collect::<BTreeSet<_>>(),
    };
    let _lock = {
        pins.require()?;
        pins.lock()?
    };
    let mut table = RuleTable::open(pins)?;
    table.apply(&args.specs, &spec)?;
    warn_ephemeral_overlap(&args.specs);
    let verb = match spec.mode {
        Mode::Block => "blocked",
        Mode::Audit => "auditing",
    };
    for s in &args.specs {
        if spec.allow_from.is_empty() {
            println!("{verb} {s}");
        } else {
            let allow: Vec<String> = spec.allow_from.iter().map(|c| c.to_string()).collect();
            println!("{verb} {s} (allowed from {})", allow.join(", "));
        }
    }
    Ok(())
}

fn cmd_unblock(pins: &Pins, specs: &[PortSpec]) -> Result<()> {
    sys::require_root()?;
    pins.require()?;
    let _lock = pins.lock()?;
    let mut table = RuleTable::open(pins)?;
    let removal = table.remove(specs)?;
    for s in specs {
        println!("unblocked {s}");
    }
    for (port, rule) in &removal.kept_by_docker {
        println!(
            "note: {port} stays blocked by the agent's policy: service {}: {}",
            rule.service, rule.why
        );
    }
    if removal.manual_rules == 0 {
        eprintln!("note: none of these ports had a manual rule");
    }
    Ok(())
}

/// One JSON document on a line, written through a buffer: stdout is
/// unbuffered, and a table of 10,000 rules is many small writes.
fn write_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

#[derive(Serialize)]
struct RulesDoc<'a> {
    rules: &'a [RuleRange],
}

fn cmd_list(pins: &Pins, json: bool) -> Result<()> {
    sys::require_root()?;
    let ranges = RuleTable::open(pins)?.ranges()?;
    if json {
        return write_json(&RulesDoc { rules: &ranges });
    }
    let mut out = std::io::stdout().lock();
    out.write_all(render_rules(&ranges).as_bytes())?;
    Ok(())
}

pub fn render_rules(ranges: &[RuleRange]) -> String {
    if ranges.is_empty() {
        return "no rules\n".to_string();
    }
    let mut out = format!(
        "{:<18} {:<6} {:>12} {:>14}  {:<20} ORIGIN\n",
        "PORT", "MODE", "PACKETS", "BYTES", "ALLOW-FROM"
    );
    let mut uncounted = 0;
    for r in ranges {
        let allow: Vec<String> = r.allow_from.iter().map(|c| c.to_string()).collect();
        let mode = match r.mode {
            Mode::Block => "block",
            Mode::Audit => "audit",
        };
        let allow = if allow.is_empty() {
            "-".to_string()
        } else {
            allow.join(",")
        };
        let (packets, bytes) = if r.counted {
            (r.packets.to_string(), r.bytes.to_string())
        } else {
            uncounted += 1;
            ("-".to_string(), "-".to_string())
        };
        out += &format!(
            "{:<18} {:<6} {:>12} {:>14}  {:<20} {}\n",
            r.spec().to_string(),
            mode,
            packets,
            bytes,
            allow,
            r.origin
        );
    }
    if uncounted > 0 {
        out += &format!(
            "{uncounted} rule(s) shown with '-' have no counter (all {} counters were in use when they were made); they block all the same\n",
            ingress_xdp_common::MAX_RULE_COUNTERS - 1
        );
    }
    out
}

#[derive(Serialize)]
struct PointStats {
    #[serde(flatten)]
    point: AttachPoint,
    presence: Presence,
    counters: PointCounters,
}

#[derive(Serialize)]
struct StatsDoc {
    attach_points: Vec<PointStats>,
    rules: Vec<RuleRange>,
}

/// One refresh: the maps are opened once by the caller, so `--watch` costs
/// a few batched reads per refresh however many rules there are.
fn collect_stats(registry: &Registry, table: &RuleTable) -> Result<StatsDoc> {
    let mut attach_points = Vec::new();
    for point in registry.points()? {
        attach_points.push(PointStats {
            counters: registry.counters(point.id)?,
            presence: point.presence(),
            point,
        });
    }
    Ok(StatsDoc {
        attach_points,
        rules: table.ranges()?,
    })
}

fn render_stats(doc: &StatsDoc, rates: Option<(&StatsDoc, f64)>) -> String {
    let mut out = format!(
        "{:<4} {:<28} {:<4} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}\n",
        "ID",
        "ATTACH POINT",
        "HOOK",
        "SEEN",
        "DROPPED",
        "PASSED",
        "NOT-PARSED",
        "AUDITED",
        "ALLOWED"
    );
    for p in &doc.attach_points {
        let c = &p.counters;
        out += &format!(
            "{:<4} {:<28} {:<4} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}\n",
            p.point.id,
            p.point.target().to_string(),
            p.point.hook.to_string(),
            c.seen,
            c.dropped,
            c.passed,
            c.not_parsed,
            c.audited,
            c.allowed
        );
        if let Some((prev, secs)) = rates
            && let Some(q) = prev.attach_points.iter().find(|q| q.point.id == p.point.id)
        {
            let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
            out += &format!(
                "{:<4} {:<28} {:<4} {:>10.0}/s {:>10.0}/s {:>10.0}/s\n",
                "",
                "",
                "",
                rate(c.seen, q.counters.seen),
                rate(c.dropped, q.counters.dropped),
                rate(c.passed, q.counters.passed)
            );
        }
    }
    if doc.attach_points.is_empty() {
        out += "(nothing attached)\n";
    }
    out += "\n";
    out += &render_rules(&doc.rules);
    out
}

fn cmd_stats(pins: &Pins, json: bool, watch: Option<u64>) -> Result<()> {
    sys::require_root()?;
    pins.require()?;
    let (registry, table) = (Registry::open(pins)?, RuleTable::open(pins)?);
    let Some(interval) = watch else {
        let doc = collect_stats(&registry, &table)?;
        if json {
            return write_json(&doc);
        }
        print!("{}", render_stats(&doc, None));
        return Ok(());
    };
    let interval = Duration::from_secs(interval.max(1));
    let mut prev: Option<(StatsDoc, std::time::Instant)> = None;
    loop {
        // A migration or purge replaces the maps: follow it.
        if !pins.exists() {
            pins.require()?;
        }
        let doc = collect_stats(&registry, &table)?;
        let now = std::time::Instant::now();
        if json {
            write_json(&doc)?;
        } else {
            let rates = prev
                .as_ref()
                .map(|(d, t)| (d, now.duration_since(*t).as_secs_f64().max(0.001)));
            print!("\x1b[2J\x1b[H{}", render_stats(&doc, rates));
            std::io::stdout().flush()?;
        }
        prev = Some((doc, now));
        std::thread::sleep(interval);
    }
}

fn cmd_status(pins: &Pins, json: bool) -> Result<()> {
    sys::require_root()?;
    let registry = Registry::open(pins)?;
    let points = registry.points()?;
    if json {
        let docs: Vec<_> = points
            .iter()
            .map(|p| serde_json::json!({ "point": p, "presence": p.presence() }))
            .collect();
        return write_json(&serde_json::json!({
            "pin_dir": pins.dir(),
            "layout": ingress_xdp_common::LAYOUT_VERSION,
            "build": pins::build(),
            "attach_points": docs,
        }));
    }
    println!(
        "state layout {} in {}; this build {}",
        ingress_xdp_common::LAYOUT_VERSION,
        pins.dir().display(),
        pins::build()
    );
    if points.is_empty() {
        println!(
            "nothing attached (rules are kept in {})",
            pins.dir().display()
        );
        return Ok(());
    }
    println!(
        "{:<4} {:<40} {:<12} {:<5} {:<8} {:>8} {:>8}  {:<20} STATE",
        "ID", "NETNS", "IFACE", "HOOK", "MODE", "PROG", "LINK", "BUILD"
    );
    for p in points {
        let build = if p.build == pins::build() {
            p.build.clone()
        } else {
            format!("{} (older: run attach)", p.build)
        };
        println!(
            "{:<4} {:<40} {:<12} {:<5} {:<8} {:>8} {:>8}  {:<20} {}",
            p.id,
            p.netns.as_deref().unwrap_or("(host)"),
            p.iface,
            p.hook.to_string(),
            p.mode.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            p.program_id,
            p.link_id,
            build,
            p.presence()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ingress-xdp").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn block_parses_specs_and_cidrs() {
        let cli = parse(&[
            "block",
            "80",
            "53/udp",
            "--allow-from",
            "10.0.0.0/8",
            "--audit",
        ])
        .unwrap();
        let Command::Block(args) = cli.command else {
            panic!("not block");
        };
        assert_eq!(args.specs.len(), 2);
        assert!(args.audit);
        assert_eq!(args.allow_from[0].to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_input_names_the_problem() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["block", "0"]).contains("port 0 is out of range"));
        assert!(err(&["block", "65536"]).contains("port 65536 is out of range"));
        assert!(err(&["block", "80/icmp"]).contains("unknown protocol \"icmp\""));
        assert!(err(&["block", "90-80"]).contains("range 90-80 is inverted"));
        assert!(
            err(&["block", "80", "--allow-from", "10.0.0.1/8"]).contains("did you mean 10.0.0.0/8")
        );
        assert!(err(&["block", "80", "--allow-from", "nope"]).contains("is not an IP address"));
        assert!(err(&["block"]).contains("SPEC"));
        assert!(err(&["unblock", "x"]).contains("is not a port number"));
        assert!(err(&["attach", "--hook", "ebpf"]).contains("invalid value 'ebpf'"));
        assert!(
            err(&["attach", "--no-sbox", "--sbox-netns", "/x"]).contains("cannot be used with")
        );
        assert!(err(&["attach", "--xdp-mode", "hw"]).contains("invalid value 'hw'"));
    }

    #[test]
    fn pin_dir_default_and_override() {
        let cli = parse(&["status"]).unwrap();
        assert_eq!(cli.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        let cli = parse(&["--pin-dir", "/sys/fs/bpf/x", "list"]).unwrap();
        assert_eq!(cli.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
        let cli = parse(&["list", "--pin-dir", "/sys/fs/bpf/y"]).unwrap();
        assert_eq!(cli.pin_dir, PathBuf::from("/sys/fs/bpf/y"));
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        match parse(&argv).unwrap().command {
            Command::Run(args) => *args,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn run_defaults() {
        let s = agent_settings(&run_args(&[]), &FileConfig::default(), Pins::new("/x"));
        assert!(s.ifaces.is_empty());
        let c = s.config;
        assert_eq!(c.sbox_netns, Some(sys::default_sbox_netns()));
        assert_eq!(c.hook, Hook::Xdp);
        assert_eq!(c.policy.default, NodeDefault::Allow);
        assert_eq!(c.resync, Duration::from_secs(30));
        assert_eq!(c.local_docker, DEFAULT_LOCAL_DOCKER);
    }

    #[test]
    fn flags_override_the_policy_file() {
        let file = FileConfig::parse(
            r#"
            default = "deny"
            allow-services = ["web*"]
            block-services = ["dbg"]
            hook = "tc"
            ifaces = ["eth9"]
            resync-interval = 5
            docker-host = "tcp://file:2375"
            sbox-netns = "/run/file-sbox"
            "#,
        )
        .unwrap();
        let s = agent_settings(&run_args(&[]), &file, Pins::new("/x"));
        assert_eq!(s.ifaces, vec!["eth9".to_string()]);
        assert_eq!(s.config.policy.default, NodeDefault::Deny);
        assert_eq!(s.config.policy.allow_services[0].to_string(), "web*");
        assert_eq!(s.config.manager.as_deref(), Some("tcp://file:2375"));
        assert_eq!(s.config.sbox_netns, Some(PathBuf::from("/run/file-sbox")));
        assert_eq!(s.config.resync, Duration::from_secs(5));

        let args = run_args(&[
            "--default",
            "allow",
            "--allow-service",
            "api",
            "--hook",
            "xdp",
            "--iface",
            "eth0",
            "--resync-interval",
            "7",
            "--docker-host",
            "tcp://flag:2375",
            "--no-sbox",
        ]);
        let s = agent_settings(&args, &file, Pins::new("/x"));
        assert_eq!(s.ifaces, vec!["eth0".to_string()]);
        assert_eq!(s.config.policy.default, NodeDefault::Allow);
        assert_eq!(s.config.policy.allow_services[0].to_string(), "api");
        assert_eq!(s.config.policy.block_services[0].to_string(), "dbg");
        assert_eq!(s.config.hook, Hook::Xdp);
        assert_eq!(s.config.manager.as_deref(), Some("tcp://flag:2375"));
        assert_eq!(s.config.sbox_netns, None);
        assert_eq!(s.config.resync, Duration::from_secs(7));
    }

    #[test]
    fn run_rejects_bad_flags() {
        let err = |args: &[&str]| {
            let mut argv = vec!["run"];
            argv.extend_from_slice(args);
            parse(&argv).unwrap_err().to_string()
        };
        assert!(err(&["--default", "block"]).contains("invalid value 'block'"));
        assert!(err(&["--resync-interval", "0"]).contains("0"));
        assert!(err(&["--allow-service", ""]).contains("--allow-service"));
        assert!(err(&["--no-sbox", "--sbox-iface", "eth1"]).contains("cannot be used with"));
    }

    #[test]
    fn stats_watch_interval() {
        let Command::Stats { watch, .. } = parse(&["stats", "--watch"]).unwrap().command else {
            panic!()
        };
        assert_eq!(watch, Some(1));
        let Command::Stats { watch, .. } = parse(&["stats", "--watch", "5"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(watch, Some(5));
    }
}
