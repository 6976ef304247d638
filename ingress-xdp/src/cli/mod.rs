//! Command-line interface: argument definitions (clap derive) and the
//! commands, each a thin layer over the library, one file per command:
//! [`targets`] (attach, detach), [`rules`] (block, unblock, list), [`stats`],
//! [`status`], [`run`] (the agent), [`health`], [`doctor`] and [`docs`]
//! (completions, man page); [`output`] is how they all write to stdout.

use std::{collections::BTreeSet, io::Write, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

/// A line of a command's report on stdout; a closed pipe ends the output,
/// never the command (see [`output`]).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::output::line(format_args!($($arg)*)) };
}

/// Text on stdout without a newline, as [`outln!`] writes it.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::text(format_args!($($arg)*)) };
}

mod docs;
mod doctor;
mod events;
mod health;
mod metrics;
pub mod output;
mod rules;
mod run;
mod stats;
mod status;
mod targets;

pub use rules::render_rules;
use rules::{cmd_block, cmd_list, cmd_unblock};
use run::cmd_run;
pub use run::{AgentSettings, RunArgs, agent_settings};
use stats::cmd_stats;
use status::cmd_status;
use targets::{cmd_attach, cmd_detach};

use crate::{
    agent::{Agent, AgentConfig, FeedSettings, MetricsSettings},
    attach::{self, AttachPoint, Hook, PointCounters, Presence, Registry, Target, XdpModeChoice},
    cidr::Cidr,
    config::FileConfig,
    docker::{DEFAULT_DOCKER_DATA_ROOT, DEFAULT_LOCAL_DOCKER},
    feed,
    health::DEFAULT_RUN_DIR,
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
    /// Exit 0 when the filter and the agent are healthy, 1 otherwise: a
    /// container healthcheck (the stack file uses it).
    ///
    /// Fails when a recorded attach point is missing, when nothing is
    /// attached, when the agent's heartbeat (written by `run` into --run-dir
    /// every 2 s) is older than --max-age or its process is gone, or when
    /// the agent found a deployment problem (not on the host network, Docker's
    /// netns directory not bound, or bound without rslave propagation). A
    /// Docker outage is only a warning: the drops stay. One line per check.
    Health {
        /// Where `run` writes its heartbeat.
        #[arg(long, env = "INGRESS_XDP_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Seconds without a heartbeat after which the agent counts as stuck.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        max_age: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the Prometheus metrics of the pinned state once: per rule, per
    /// attach point and map pressure (the series `run --metrics-addr`
    /// serves, without the agent's own).
    ///
    /// For node_exporter's textfile collector on hosts that run only the CLI:
    ///   ingress-xdp metrics --output /var/lib/node_exporter/ingress-xdp.prom
    /// (written to a temporary file and renamed, so a scrape never reads half).
    #[command(verbatim_doc_comment)]
    Metrics {
        /// Write to FILE (atomically) instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// At most this many per-rule series; the remaining rules are summed
        /// under port="other".
        #[arg(long, value_name = "N", default_value_t = crate::metrics::pinned::DEFAULT_MAX_RULE_SERIES)]
        max_rules: usize,
    },
    /// Stream drop and audit events live: who sends to blocked ports.
    ///
    /// The programs send an event per dropped or audited packet while
    /// events are on, rate-limited per CPU (the packet and rule counters stay
    /// exact; events are a sample). Streaming turns them on for as long as it
    /// runs if they were off. One reader at a time.
    ///
    /// Examples:
    ///   ingress-xdp events                         # until interrupted
    ///   ingress-xdp events --json --port 8080 --port 30000-32767/udp
    ///   ingress-xdp events on --rate 200 --burst 50
    ///   ingress-xdp events status
    ///   ingress-xdp events off
    #[command(verbatim_doc_comment)]
    Events(events::EventsArgs),
    /// The busiest sources per blocked port over a window, as a live table
    /// (redrawn in place on a terminal, plain dated tables when piped).
    ///
    /// Examples:
    ///   ingress-xdp top
    ///   ingress-xdp top --interval 10 --port 443 --sources 20
    #[command(verbatim_doc_comment)]
    Top(events::TopArgs),
    /// Check this node: kernel, bpffs, privileges, pin directory, Docker,
    /// the sandbox, the attach points, ports and the agent. One line per
    /// check, each with what to do; exits 0 when all is well, 1 on
    /// warnings, 2 on failures. Changes nothing.
    ///
    /// Examples:
    ///   ingress-xdp doctor
    ///   ingress-xdp doctor --json | jq '.checks[] | select(.level != "ok")'
    ///   ingress-xdp doctor --local-docker unix:///run/docker-b.sock --sbox-netns /run/docker-b/netns/ingress_sbox
    #[command(verbatim_doc_comment)]
    Doctor(doctor::DoctorArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    ///
    /// Examples:
    ///   ingress-xdp completions bash > /usr/share/bash-completion/completions/ingress-xdp
    ///   ingress-xdp completions zsh > /usr/local/share/zsh/site-functions/_ingress-xdp
    ///   ingress-xdp completions fish > ~/.config/fish/completions/ingress-xdp.fish
    #[command(verbatim_doc_comment)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, ingress-xdp(1), in roff.
    ///
    /// Examples:
    ///   ingress-xdp man | man -l -
    ///   ingress-xdp man > /usr/local/share/man/man1/ingress-xdp.1
    #[command(verbatim_doc_comment)]
    Man,
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
        Command::Health {
            run_dir,
            max_age,
            json,
        } => health::cmd_health(&pins, &run_dir, max_age, json),
        Command::Metrics { output, max_rules } => {
            metrics::cmd_metrics(&pins, output.as_deref(), max_rules)
        }
        Command::Doctor(args) => doctor::cmd_doctor(&pins, &args),
        Command::Events(args) => events::cmd_events(&pins, &args),
        Command::Top(args) => events::cmd_top(&pins, &args),
        Command::Completions { shell } => docs::cmd_completions(shell),
        Command::Man => docs::cmd_man(),
    }
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

/// One JSON document on a line, written through a buffer: stdout is
/// unbuffered, and a table of 10,000 rules is many small writes.
fn write_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    serde_json::to_writer(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush())
        .context("writing to standard output")
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
